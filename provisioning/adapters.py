"""`deploy-adapters`: one adapter version from the Blob registry onto a serving host, switched atomically.

Order of a deploy (each step must succeed before the next; any failure leaves the previous version serving):
1. download through `AdapterRegistry.download` on the operator's machine (every sha256 checked against the
   manifest, the manifest against the stack's pin) and `validate_adapter` against the host's model config;
2. upload into a hidden staging directory on the host, re-verify with `sha256sum`, rename to `{domain}-v{N}`;
3. load `{domain}-v{N}` into the server and send a warm-up request to it;
4. switch the production name `{domain}` (a symlink) by renaming a temporary link over it (atomic);
5. tell the server: the gateway's alias (gateway mode), or re-load `{domain}` in vLLM (direct dynamic mode),
   or restart (static mode), and check that `{domain}` answers.
Staging is removed on failure and on SIGINT/SIGTERM; leftovers of a SIGKILL are removed by the next run.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fabric import Connection

from exaone_lora.spec import DeploymentSpec, MergedReplicaSpec
from provisioning.remote import RemoteError, http_status, ok, out, put_bytes, sh, wait_for
from provisioning.results import Change
from provisioning.service import gateway_src, restart
from service.gateway.server import ADMIN_KEY_ENV
from service.layout import DEFAULT_LAYOUT, HostLayout
from service.manifest import AdapterManifest, version_name
from service.merge import MERGED_RECORD
from service.merged_replicas import VERSION_VAR, merged_env_file, merged_for, merged_root, merged_unit_name
from service.registry import AdapterRegistry
from service.replicas import replica_urls
from service.validation import check_name, validate_adapter

Reporter = Callable[[str], None]
STATE_DIR = ".deploy"
STAGING_PREFIX = ".staging-"
# Fault-injection point for tests and drills: hold the deploy this many seconds at the named phase.
HOLD_ENV = "EXAONE_LORA_DEPLOY_HOLD"


class DeployError(RuntimeError):
    """A deploy was refused or failed; the previous version is still the one served."""


@dataclass(frozen=True)
class HostAdapterState:
    domain: str
    current: str | None
    history: list[int]


def _hold(phase: str, report: Reporter) -> None:
    wanted, _, seconds = os.environ.get(HOLD_ENV, "").partition(":")
    if wanted == phase:
        report(f"holding at {phase} ({HOLD_ENV})")
        time.sleep(float(seconds or 60))


def host_state(c: Connection, domain: str, layout: HostLayout = DEFAULT_LAYOUT) -> HostAdapterState:
    link = layout.adapters / domain
    current = out(c, f"test -L {link} && readlink {link} || true") or None
    raw = out(c, f"cat {layout.adapters / STATE_DIR / (domain + '.json')} 2>/dev/null || true")
    history = list(json.loads(raw).get("history", [])) if raw else []
    return HostAdapterState(domain, current, history)


def _save_history(c: Connection, domain: str, history: list[int], layout: HostLayout) -> None:
    sh(c, f"install -d -m 755 {layout.adapters / STATE_DIR}")
    put_bytes(c, (json.dumps({"domain": domain, "history": history}) + "\n").encode(),
              str(layout.adapters / STATE_DIR / f"{domain}.json"))


def host_request(c: Connection, method: str, url: str, body: dict[str, object] | None = None,
                 layout: HostLayout = DEFAULT_LAYOUT, key_var: str = "VLLM_API_KEY", timeout: float = 120) -> tuple[int, str]:
    """An HTTP call made from the host itself (the engine and admin ports only listen on its loopback)."""
    data = f"-H 'Content-Type: application/json' --data-binary {shlex.quote(json.dumps(body))}" if body is not None else ""
    script = (f"set -a; [ -r {layout.env_file} ] && . {layout.env_file}; set +a; "
              f"curl -s -o /dev/stdout -w '\\n%{{http_code}}' --max-time {timeout:g} -X {method} "
              f"${{{key_var}:+-H \"Authorization: Bearer ${key_var}\"}} {data} {shlex.quote(url)}")
    text = out(c, script, check=False)
    body_text, _, code = text.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body_text


def _engine_urls(spec: DeploymentSpec, layout: HostLayout) -> list[str]:
    return replica_urls(spec, layout)


def _warmup(c: Connection, base_url: str, model: str, layout: HostLayout, key_var: str = "VLLM_API_KEY") -> None:
    status, text = host_request(c, "POST", f"{base_url}/v1/completions",
                                {"model": model, "prompt": "warm-up", "max_tokens": 1, "temperature": 0},
                                layout, key_var=key_var)
    if status != 200:
        raise DeployError(f"warm-up request to {model} at {base_url} answered {status}: {text[:300]}")


def _vllm_load(c: Connection, base_url: str, name: str, path: str, layout: HostLayout) -> None:
    status, text = host_request(c, "POST", f"{base_url}/v1/load_lora_adapter", {"lora_name": name, "lora_path": path}, layout)
    if status != 200 and "already been loaded" not in text:
        raise DeployError(f"vLLM at {base_url} refused to load {name} from {path}: {status} {text[:300]}")


def _vllm_unload(c: Connection, base_url: str, name: str, layout: HostLayout) -> None:
    host_request(c, "POST", f"{base_url}/v1/unload_lora_adapter", {"lora_name": name}, layout)


def served_names(c: Connection, spec: DeploymentSpec, layout: HostLayout = DEFAULT_LAYOUT) -> set[str]:
    status, text = host_request(c, "GET", f"{_engine_urls(spec, layout)[0]}/v1/models", layout=layout)
    return {m["id"] for m in json.loads(text)["data"]} if status == 200 else set()


def _host_model_config(c: Connection, spec: DeploymentSpec) -> dict[str, object]:
    buf = io.BytesIO()
    try:
        c.get(f"{spec.model.path}/config.json", buf)
    except OSError as err:
        raise DeployError(f"cannot read {spec.model.path}/config.json on {c.host}: run bootstrap first ({err})") from err
    return dict(json.loads(buf.getvalue()))


def _verify_on_host(c: Connection, directory: str, manifest: AdapterManifest) -> bool:
    lines = "".join(f"{d.sha256}  {name}\n" for name, d in manifest.files.items())
    return ok(c, f"cd {shlex.quote(directory)} && printf %s {shlex.quote(lines)} | sha256sum --quiet -c -")


def target_version(registry: AdapterRegistry, spec: DeploymentSpec, domain: str, version: int | None,
                   rollback: bool, state: HostAdapterState) -> int:
    if rollback:
        history = list(state.history)
        current = int(state.current.rsplit("-v", 1)[1]) if state.current else None
        while history and history[-1] == current:
            history.pop()
        if not history:
            raise DeployError(f"{domain} has no previous version on {state.domain!r}'s host history {state.history}")
        return history[-1]
    if version is not None:
        return version
    pin = next((p for p in spec.adapters if p.alias == domain), None)
    if pin is not None:
        return pin.version
    alias = registry.alias(domain)
    if alias.current is not None:
        return alias.current
    versions = registry.versions(domain)
    if not versions:
        raise DeployError(f"the registry has no version of {domain}")
    return max(versions)


def _upload(c: Connection, local: Path, staging: str, manifest: AdapterManifest, layout: HostLayout) -> None:
    sh(c, f"install -d -m 755 -o {c.user} {staging}")
    for name in [*manifest.files, "manifest.json"]:
        c.put(str(local / name), f"{staging}/{name}")
    if not _verify_on_host(c, staging, manifest):
        raise DeployError(f"sha256 mismatch after uploading {manifest.name} to {c.host}")
    sh(c, f"chmod 644 {staging}/* && chown -R {layout.service_user}: {staging}")


def deploy_adapter(c: Connection, spec: DeploymentSpec, registry: AdapterRegistry, domain: str, *,
                   version: int | None = None, rollback: bool = False, dry_run: bool = False,
                   layout: HostLayout = DEFAULT_LAYOUT, report: Reporter = print) -> Change:
    check_name(domain, "domain")
    root = layout.adapters
    # Leftovers of a deploy that was killed outright (SIGKILL, lost connection): never served, safe to drop.
    if not dry_run:
        sh(c, f"rm -rf {root}/{STAGING_PREFIX}* {root}/.{domain}.link-*")
    state = host_state(c, domain, layout)
    number = target_version(registry, spec, domain, version, rollback, state)
    name = version_name(domain, number)
    target_dir = str(root / name)
    manifest = registry.manifest(domain, number)
    engines = _engine_urls(spec, layout)
    static = spec.lora_mode == "static"
    if state.current == name and _verify_on_host(c, target_dir, manifest) and (static or domain in served_names(c, spec, layout)
                                                                              or spec.gateway.enabled):
        return Change(f"adapter {domain}", False, f"no changes: {name} already serving")
    if dry_run:
        return Change(f"adapter {domain}", False, f"dry run: would switch {domain} from {state.current or 'nothing'} to {name}")

    pin = next((p for p in spec.adapters if p.alias == domain and p.version == number), None)
    base_config = _host_model_config(c, spec)
    staging = f"{root}/{STAGING_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    new_dir = False
    loaded_version = False
    try:
        if not _verify_on_host(c, target_dir, manifest):
            report(f"downloading {name} from the registry")
            with tempfile.TemporaryDirectory(prefix="exaone-deploy-") as tmp:
                local = registry.download(domain, number, Path(tmp) / name,
                                          expected_manifest_sha256=pin.sha256 if pin else None)
                validate_adapter(local, base_config=base_config, max_rank=spec.max_lora_rank, manifest=manifest)
                report(f"uploading {name} to {c.host}")
                _upload(c, local, staging, manifest, layout)
            _hold("staged", report)
            sh(c, f"rm -rf {target_dir} && mv -T {staging} {target_dir}")
            new_dir = True
        if not static:
            for url in engines:
                _vllm_load(c, url, name, target_dir, layout)
                loaded_version = True
                _warmup(c, url, name, layout)
        _hold("warmed", report)
        previous = state.current
        _switch_link(c, root, domain, name)
        try:
            _announce(c, spec, domain, name, engines, layout)
        except Exception:
            report(f"{domain} did not answer on {name}: switching back to {previous}")
            if previous:
                _switch_link(c, root, domain, previous)
                _announce(c, spec, domain, previous, engines, layout)
            else:
                sh(c, f"rm -f {root / domain}")
            raise
    except BaseException:
        # Failed or interrupted before the switch completed: the previous version keeps serving.
        sh(c, f"rm -rf {staging}", check=False)
        if loaded_version and not spec.gateway.enabled:
            for url in engines:
                _vllm_unload(c, url, name, layout)
        if new_dir and host_state(c, domain, layout).current != name:
            sh(c, f"rm -rf {target_dir}", check=False)
        raise
    if rollback:
        history = list(state.history)
        while history and history[-1] != number:
            history.pop()
    else:
        history = [v for v in state.history if v != number] + [number]
    _save_history(c, domain, history, layout)
    return Change(f"adapter {domain}", True, f"{state.current or 'nothing'} -> {name}")


def _switch_link(c: Connection, root: object, domain: str, name: str) -> None:
    tmp = f"{root}/.{domain}.link-{uuid.uuid4().hex[:8]}"
    # rename(2) over the old link: readers see the old or the new target, never a missing name.
    sh(c, f"ln -s {shlex.quote(name)} {tmp} && mv -T {tmp} {root}/{domain}")


def _announce(c: Connection, spec: DeploymentSpec, domain: str, name: str, engines: list[str], layout: HostLayout) -> None:
    """Make `domain` resolve to `name` in the running server, then check it answers."""
    if spec.lora_mode == "static":
        restart(c, spec, layout)
        if spec.gateway.enabled:
            _gateway_switch(c, spec, domain, name, layout)
        else:
            for url in engines:
                _warmup(c, url, domain, layout)
        return
    if spec.gateway.enabled:
        _gateway_switch(c, spec, domain, name, layout)
        return
    # Direct mode: clients call vLLM with the alias, so the alias itself is re-loaded from the new target.
    for url in engines:
        _vllm_unload(c, url, domain, layout)
        # The resolved version directory, so /v1/models (`root`) shows which version the alias serves.
        _vllm_load(c, url, domain, str(layout.adapters / name), layout)
        _warmup(c, url, domain, layout)
        _vllm_unload(c, url, name, layout)


def _gateway_switch(c: Connection, spec: DeploymentSpec, domain: str, name: str, layout: HostLayout) -> None:
    admin = f"http://127.0.0.1:{spec.gateway.admin_port}"
    if spec.lora_mode != "static":
        status, text = host_request(c, "POST", f"{admin}/admin/versions",
                                    {"name": name, "path": str(layout.adapters / name)}, layout, key_var=ADMIN_KEY_ENV)
        if status != 200:
            raise DeployError(f"gateway admin refused to load {name}: {status} {text[:300]}")
    status, text = host_request(c, "PUT", f"{admin}/admin/aliases/{domain}", {"name": name, "warmup": True},
                                layout, key_var=ADMIN_KEY_ENV)
    if status != 200:
        raise DeployError(f"gateway admin refused to switch {domain} to {name}: {status} {text[:300]}")


def deploy_adapters(c: Connection, spec: DeploymentSpec, registry: AdapterRegistry, domains: list[str], *,
                    version: int | None = None, rollback: bool = False, dry_run: bool = False,
                    layout: HostLayout = DEFAULT_LAYOUT, report: Reporter = print) -> list[Change]:
    if version is not None and len(domains) != 1:
        raise DeployError("--version needs exactly one --domain")
    if not domains:
        domains = [p.alias for p in spec.adapters]
    if not domains:
        raise DeployError(f"no --domain given and stack {spec.stack} pins no adapters")
    changes = []
    for domain in domains:
        changes.append(deploy_adapter(c, spec, registry, domain, version=version, rollback=rollback, dry_run=dry_run,
                                      layout=layout, report=report))
        merged = merged_for(spec, domain)
        if merged is not None and not dry_run:
            current = host_state(c, domain, layout).current
            if current:
                changes.append(ensure_merged(c, spec, merged, current, layout=layout, report=report))
    return changes


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
    if previous == name and ok(c, f"test -f {target}/{MERGED_RECORD}") and http_status(c, health) == 200:
        return Change(f"merged replica {merged.alias}", False, f"no changes: serving {name}")
    report(f"folding {name} into the base weights for {unit}")
    src = gateway_src(layout)
    result = sh(c, f"cd {src} && PYTHONPATH={src} {layout.vllm_python} -m service.cli merge --base {spec.model.path} "
                   f"--adapter {layout.adapters / name} --out {target} --version-name {name} "
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


__all__ = ["DeployError", "RemoteError", "deploy_adapter", "deploy_adapters", "host_state"]
