"""`deploy-adapters`: set the registry's alias (the one desired state), then run the one reconciler on each host.

1. On the operator's machine, with the operator's Azure login: resolve the version (explicit, the stack's pin, the
   registry's current, or the registry's previous for a rollback), check it against the stack's pin (version and
   manifest sha256: what promotion carries), and set the domain's alias in the registry.
2. On each host, as root: `service.cli reconcile` with the host's own identity (managed identity on Azure) downloads
   every version the registry wants (sha256 of every file against the manifest), validates it against the host's
   model, loads it into every vLLM replica, warms it up, switches the gateway's alias, drains and unloads what
   nothing points to. It acts only on what it observes, so a run killed half-way is finished by the next one.
3. Merged replicas of a switched alias are folded again and restarted (`ensure_merged`).
If a host cannot converge, the task sets the aliases back to what was serving; the previous version never stopped.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, replace

from fabric import Connection

from exaone_lora.spec import DeploymentSpec, MergedReplicaSpec
from provisioning.outputs import StackOutputs
from provisioning.remote import RemoteError, http_status, ok, out, put_bytes, sh, wait_for
from provisioning.results import Change
from provisioning.units import gateway_src
from service.gateway.server import ADMIN_KEY_ENV
from service.layout import DEFAULT_LAYOUT, HostLayout
from service.merge import MERGED_RECORD
from service.merged_replicas import VERSION_VAR, merged_env_file, merged_root, merged_unit_name
from service.registry import AdapterRegistry, RegistryError
from service.registry_location import (
    REGISTRY_ENV,
    ConnectionString,
    RegistryLocationError,
    RegistrySettings,
    parse_location,
    redact,
    render_env_file,
    resolve_settings,
)
from service.replicas import replica_endpoints
from service.validation import check_name

Reporter = Callable[[str], None]
# Fault-injection point for tests and drills: hold the deploy this many seconds at the named phase ("desired":
# the registry's alias is set, no host has been told yet).
HOLD_ENV = "EXAONE_LORA_DEPLOY_HOLD"
class DeployError(RuntimeError):
    """A deploy was refused or failed; the previous version is still the one served."""


def hold(phase: str, report: Reporter = print) -> None:
    import os
    import time

    wanted, _, seconds = os.environ.get(HOLD_ENV, "").partition(":")
    if wanted == phase:
        report(f"holding at {phase} ({HOLD_ENV})")
        time.sleep(float(seconds or 60))


def registry_settings(spec: DeploymentSpec, outputs: StackOutputs | None) -> RegistrySettings:
    """The stack's registry: the outputs file's `storageBlobUrl` (+ container, the host's `identityClientId`), else
    $EXAONE_LORA_REGISTRY. Azure stacks reach it with Entra ID tokens only: a connection string (an account key)
    is for the local stack's Azurite."""
    try:
        settings = resolve_settings(outputs=outputs.source if outputs and spec.target != "local" else None)
    except RegistryLocationError as exc:
        raise DeployError(str(exc)) from None
    if isinstance(parse_location(settings.location), ConnectionString) and spec.target != "local":
        raise DeployError(f"stack {spec.stack}: a connection string carries an account key; Azure stacks have shared-key "
                          f"access off and reach the registry with Entra ID tokens: set ${REGISTRY_ENV} to the account URL")
    return settings


def host_env(settings: RegistrySettings) -> bytes:
    """The host's registry.env: where to read and which identity reads (a CA file is the operator's, not the host's)."""
    return render_env_file(replace(settings, ca_file=None)).encode()


@dataclass(frozen=True)
class DesiredChange:
    """One alias moved in the registry: what to restore if the hosts cannot serve it."""

    domain: str
    before: int | None
    after: int

    @property
    def step(self) -> str:
        return f"alias {self.domain}"

    @property
    def detail(self) -> str:
        return f"{self.before if self.before is not None else 'nothing'} -> {self.after}"


def _pinned(spec: DeploymentSpec, domain: str) -> tuple[int, str] | None:
    pin = next((p for p in spec.adapters if p.alias == domain), None)
    return (pin.version, pin.sha256) if pin else None


def desired_version(registry: AdapterRegistry, spec: DeploymentSpec, domain: str, version: int | None) -> int:
    pin = _pinned(spec, domain)
    if version is None:
        version = pin[0] if pin else registry.alias(domain).current
    if version is None:
        versions = registry.versions(domain)
        if not versions:
            raise DeployError(f"the registry has no version of {domain}")
        version = max(versions)
    if pin is not None:
        if version != pin[0]:
            raise DeployError(f"stack {spec.stack} pins {domain} v{pin[0]}; deploying v{version} would serve what "
                              "promotion does not carry: change the pin (or promote) first")
        digest = registry.manifest_digest(domain, version)
        if digest != pin[1]:
            raise DeployError(f"{domain} v{version}: the registry's manifest sha256 {digest[:12]}... differs from the "
                              f"stack's pin {pin[1][:12]}...: the version was altered or the pin is wrong")
    return version


def set_desired(registry: AdapterRegistry, spec: DeploymentSpec, domains: list[str], *, version: int | None = None,
                rollback: bool = False, dry_run: bool = False) -> list[DesiredChange]:
    """Point each domain's alias at the version to serve (the registry is the desired state)."""
    if version is not None and len(domains) != 1:
        raise DeployError("--version needs exactly one --domain")
    if version is not None and rollback:
        raise DeployError("--rollback goes to the registry's previous version; it takes no --version")
    domains = domains or [p.alias for p in spec.adapters]
    if not domains:
        raise DeployError(f"no --domain given and stack {spec.stack} pins no adapters")
    changes = []
    try:
        for domain in domains:
            check_name(domain, "domain")
            state = registry.alias(domain)
            if rollback:
                previous = next((v for v in reversed(state.history) if v != state.current), None)
                if previous is None:
                    raise DeployError(f"{domain} has no previous version in the registry (history {state.history})")
                target = previous if dry_run else registry.rollback(domain)
            else:
                target = desired_version(registry, spec, domain, version)
                if not dry_run and target != state.current:
                    registry.set_alias(domain, target, expected_current=state.current)
            changes.append(DesiredChange(domain, state.current, target))
    except RegistryError as exc:
        undo_desired(registry, changes)
        raise DeployError(str(exc)) from None
    return changes


def undo_desired(registry: AdapterRegistry, changes: list[DesiredChange]) -> None:
    """Put aliases back where they were, unless someone moved them since (compare-and-swap)."""
    for change in reversed(changes):
        if change.before is not None and change.before != change.after:
            try:
                registry.set_alias(change.domain, change.before, expected_current=change.after)
            except RegistryError:
                continue


def reconcile_command(spec: DeploymentSpec, layout: HostLayout = DEFAULT_LAYOUT, *, dry_run: bool = False) -> str:
    """The one reconciler, as run on a host by root: secrets and the registry's location (EXAONE_LORA_REGISTRY and
    friends, read by the CLI from its environment) from the host's files."""
    config = layout.config
    engines = " ".join(f"--engine {shlex.quote(e.url)}" for e in replica_endpoints(spec, layout))
    src = gateway_src(layout)
    argv = (f"{layout.vllm_python} -m service.cli reconcile {engines} "
            f"--gateway-admin http://127.0.0.1:{spec.gateway.admin_port} "
            f"--cache-dir {layout.adapters} --base-config {shlex.quote(spec.model.path)} "
            f"--max-cpu-loras {spec.max_cpu_loras} --max-rank {spec.max_lora_rank}" + (" --dry-run" if dry_run else ""))
    # identity.env exists only where no Azure instance metadata service is (the rehearsal's token endpoint).
    return (f"set -a; . {config}/secrets.env; . {config}/registry.env; "
            f"if [ -r {config}/identity.env ]; then . {config}/identity.env; fi; set +a; "
            f"cd {src} && PYTHONPATH={src} {argv}")


def reconcile_host(c: Connection, spec: DeploymentSpec, ref: RegistrySettings, *, dry_run: bool = False,
                   layout: HostLayout = DEFAULT_LAYOUT, report: Reporter = print) -> list[Change]:
    if spec.lora_mode == "static" or not spec.gateway.enabled:
        raise DeployError(f"stack {spec.stack}: deploy-adapters switches aliases in the gateway at run time; with "
                          "static LoRA or no gateway, change the stack's pins and run install-service instead")
    changes = [Change("registry.env", put_bytes(c, host_env(ref), str(layout.config / "registry.env"), mode="0600"),
                      redact(ref.location))]
    report("reconciling with the registry")
    result = sh(c, reconcile_command(spec, layout, dry_run=dry_run), check=False, timeout=1800)
    try:
        outcome = json.loads(str(result.stdout))
    except json.JSONDecodeError:
        raise DeployError(f"the reconciler on {c.host} failed (exit {result.exited}): "
                          f"{(str(result.stderr) or str(result.stdout))[-1500:]}") from None
    if not outcome.get("ok"):
        failed = outcome.get("failed") or outcome.get("error")
        raise DeployError(f"{c.host} did not converge; the previous versions keep serving: {json.dumps(failed)[:1500]}")
    done = outcome.get("done", [])
    switched = [f"{a['alias']} -> {a['name']}" for a in done if a.get("kind") == "switch"]
    loaded = sorted({a["name"] for a in done if a.get("kind") == "load" and a.get("changed")})
    detail = ("planned: " + ", ".join(f"{a['kind']} {a['name']}" for a in outcome.get("planned", []))) if dry_run else \
        ("; ".join(filter(None, [", ".join(switched), f"loaded {', '.join(loaded)}" if loaded else ""])) or "no changes")
    changes.append(Change("adapters", bool(switched or loaded), detail))
    if not dry_run:
        for merged in spec.merged_replicas:
            current = _gateway_alias(c, spec, merged.alias, layout)
            if current:
                changes.append(ensure_merged(c, spec, merged, current, layout=layout, report=report))
    return changes


def deploy_adapters(c: Connection, spec: DeploymentSpec, ref: RegistrySettings, domains: list[str], *,
                    version: int | None = None, rollback: bool = False, dry_run: bool = False,
                    layout: HostLayout = DEFAULT_LAYOUT, report: Reporter = print) -> list[Change]:
    """`fab deploy-adapters` for one host: set the desired state, converge the host, undo the former if the
    latter fails (the previous versions never stopped serving)."""
    registry = ref.open("operator")
    desired = set_desired(registry, spec, domains, version=version, rollback=rollback, dry_run=dry_run)
    try:
        hold("desired", report)
        changes = reconcile_host(c, spec, ref, dry_run=dry_run, layout=layout, report=report)
    except BaseException:
        if not dry_run:
            undo_desired(registry, desired)
        raise
    return [Change(d.step, d.before != d.after and not dry_run, d.detail) for d in desired] + changes


def _gateway_alias(c: Connection, spec: DeploymentSpec, alias: str, layout: HostLayout) -> str | None:
    status, text = host_request(c, "GET", f"http://127.0.0.1:{spec.gateway.admin_port}/admin/state", layout=layout,
                                key_var=ADMIN_KEY_ENV)
    if status != 200:
        raise DeployError(f"gateway admin answered {status}: {text[:300]}")
    target = json.loads(text).get("aliases", {}).get(alias)
    return str(target["name"]) if target else None


def host_request(c: Connection, method: str, url: str, body: dict[str, object] | None = None,
                 layout: HostLayout = DEFAULT_LAYOUT, key_var: str = "VLLM_API_KEY", timeout: float = 120) -> tuple[int, str]:
    """An HTTP call made from the host itself (the engine and admin ports only listen on its loopback). The key
    goes to curl through a header file, never on its command line (visible in `ps`)."""
    data = f"-H 'Content-Type: application/json' --data-binary {shlex.quote(json.dumps(body))}" if body is not None else ""
    script = (f"set -a; [ -r {layout.env_file} ] && . {layout.env_file}; set +a; "
              f"curl -s -o /dev/stdout -w '\\n%{{http_code}}' --max-time {timeout:g} -X {method} "
              f"-H @<(if [ -n \"${{{key_var}:-}}\" ]; then printf 'Authorization: Bearer %s\\n' \"${key_var}\"; fi) "
              f"{data} {shlex.quote(url)}")
    text = out(c, script, check=False)
    body_text, _, code = text.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body_text


def merged_version(c: Connection, alias: str, layout: HostLayout = DEFAULT_LAYOUT) -> str | None:
    """The version the merged replica of `alias` is configured to serve (its env file), if any."""
    text = out(c, f"cat {merged_env_file(layout, alias)} 2>/dev/null || true")
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == VERSION_VAR:
            return value.strip() or None
    return None


def ensure_merged(c: Connection, spec: DeploymentSpec, merged: MergedReplicaSpec, name: str, *,
                  layout: HostLayout = DEFAULT_LAYOUT, report: Reporter = print, health_timeout: float = 900) -> Change:
    """Make the merged replica of `merged.alias` serve `name` (already live on the LoRA path).

    Runs after the alias switch, so clients are on `name` already (through LoRA) while this folds the
    weights and restarts the replica; the gateway moves `name`'s traffic to it once it answers. Idempotent.
    """
    unit = merged_unit_name(merged.alias)
    target = merged_root(layout) / name
    health = f"http://127.0.0.1:{merged.port}/health"
    previous = merged_version(c, merged.alias, layout)
    if previous == name and ok(c, f"test -f {shlex.quote(f'{target}/{MERGED_RECORD}')}") and http_status(c, health) == 200:
        return Change(f"merged replica {merged.alias}", False, f"no changes: serving {name}")
    report(f"folding {name} into the base weights for {unit}")
    src = gateway_src(layout)
    q = shlex.quote
    result = sh(c, f"cd {src} && PYTHONPATH={src} {layout.vllm_python} -m service.cli merge --base {q(spec.model.path)} "
                   f"--adapter {q(str(layout.adapters / name))} --out {q(str(target))} --version-name {q(name)} "
                   f"--max-rank {spec.max_lora_rank}", check=False)
    if result.exited != 0:
        raise DeployError(f"{name} is live through the LoRA replicas, but its merged replica still serves "
                          f"{previous or 'nothing'}: the merge failed: {(result.stderr or result.stdout)[-500:]}")
    put_bytes(c, f"{VERSION_VAR}={name}\n".encode(), str(merged_env_file(layout, merged.alias)))
    sh(c, f"systemctl restart {unit}")
    report(f"waiting for {unit} to serve {name}")
    try:
        wait_for(lambda: http_status(c, health) == 200, health_timeout, interval=2, what=f"{unit} healthy")
    except TimeoutError as exc:
        journal = out(c, f"journalctl --no-pager -n 25 -u {unit}", check=False)
        raise DeployError(f"{name} is live through the LoRA replicas; {unit} did not come back: {exc}; "
                          f"its last log lines:\n{journal}") from exc
    # Keep the folded weights of the current and the previous version (a rollback restarts at once).
    keep = {name, previous or name}
    listing = out(c, f"ls {merged_root(layout)} 2>/dev/null || true").split()
    stale = [d for d in listing if d.startswith(f"{merged.alias}-v") and d not in keep]
    if stale:
        sh(c, "rm -rf " + " ".join(shlex.quote(str(merged_root(layout) / d)) for d in stale))
    return Change(f"merged replica {merged.alias}", True, f"{previous or 'nothing'} -> {name}")


__all__ = ["DeployError", "RemoteError", "deploy_adapters", "reconcile_host", "registry_settings", "set_desired",
           "undo_desired"]
