"""Fabric tasks: how operators touch the serving hosts.  `fab --list` shows them; `fab --help <task>` their options.

Every task needs the stack: `--stack poc`, or `export EXAONE_LORA_STACK=poc` once (Fabric gives a task's flags
to that task only, so `fab bootstrap install-service --stack poc` would leave `bootstrap` without one). There is
no default stack: a task never applies one stack's spec to another stack's hosts.

Pick hosts either way:
  fab -H azureuser@20.1.2.3 -i ~/.ssh/id_ed25519 bootstrap --stack poc      # explicit host(s)
  fab bootstrap --stack poc --outputs out.json                                # hosts from `pulumi stack output --json`
Without -H the task reads `hostIps` and `sshUser` from --outputs (or $EXAONE_LORA_OUTPUTS) and works on all hosts
in parallel. Fabric's own settings apply either way: `-i`, `-S ssh_config`, `~/.ssh/config`, `--prompt-for-sudo-password`.
The logic lives in `provisioning/`; these tasks only parse options.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from fabric import Connection, task
from invoke.context import Context
from invoke.exceptions import Exit

from exaone_lora.spec import DeploymentSpec, SpecError, load_spec
from provisioning import adapters, kernel_tuning, monitoring, patches, rollout, units
from provisioning import bootstrap as boot
from provisioning.outputs import OutputsError, StackOutputs
from provisioning.remote import remember_host_keys
from provisioning.report import Action, run_on_hosts
from provisioning.results import Change

ROOT = Path(__file__).resolve().parent
STACK_ENV = "EXAONE_LORA_STACK"
OUTPUTS_ENV = "EXAONE_LORA_OUTPUTS"
API_KEY_ENV = "EXAONE_API_KEY"


def _spec(stack: str | None, root: str | None) -> DeploymentSpec:
    name = stack or os.environ.get(STACK_ENV)
    if not name:
        raise Exit(f"which stack? pass --stack NAME (poc, pilot, prod, dev) or `export {STACK_ENV}=NAME`")
    try:
        return load_spec(name, Path(root or os.environ.get("EXAONE_LORA_ROOT") or ROOT))
    except SpecError as exc:
        raise Exit(str(exc)) from None


def _outputs(outputs: str | None) -> StackOutputs | None:
    path = outputs or os.environ.get(OUTPUTS_ENV)
    if not path:
        return None
    try:
        return StackOutputs.load(path)
    except OutputsError as exc:
        raise Exit(str(exc)) from None


def _connections(c: Context, spec: DeploymentSpec, outputs: StackOutputs | None) -> list[Connection]:
    if isinstance(c, Connection):
        return [remember_host_keys(c)]
    if outputs is None:
        raise Exit(f"no host: give -H USER@HOST, or --outputs FILE from `pulumi stack output --json -s {spec.stack}`")
    try:
        hosts = outputs.hosts()
    except OutputsError as exc:
        raise Exit(f"{exc} (stack {spec.stack} has target {spec.target})") from None
    user = str(outputs.values.get("sshUser") or spec.admin_username)
    # c.config is Fabric's: -i, -S ssh_config, connect timeouts and sudo settings reach these connections too.
    return [remember_host_keys(Connection(h, user=user, config=c.config)) for h in hosts]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run(c: Context, spec: DeploymentSpec, title: str, action: Action, outputs: StackOutputs | None) -> None:
    # SIGTERM behaves like Ctrl-C, so an interrupted deploy still removes its staging directory.
    signal.signal(signal.SIGTERM, _interrupt)
    results = run_on_hosts(_connections(c, spec, outputs), action, f"{title} ({spec.stack})")
    if not all(r.ok for r in results):
        raise Exit(code=1)
    if not any(r.changed for r in results):
        print("no changes")


STACK_HELP = {"stack": f"stack name: reads Pulumi.<stack>.yaml (required; or ${STACK_ENV})",
              "root": "directory holding the Pulumi.<stack>.yaml files (default: the repository)",
              "outputs": f"JSON of `pulumi stack output --json` (hosts, SSH user, registry; or ${OUTPUTS_ENV})"}


@task(help={**STACK_HELP, "wheelhouse": "directory ON THE HOST with wheels for an offline vLLM install",
            "model_path": "local checkpoint directory to upload as the pinned model",
            "hub": "download the pinned model revision from the Hugging Face hub on the host (Azure only)",
            "tls_cert": "PEM certificate chain for a stack with public exposure (its API is served over TLS only)",
            "tls_key": "PEM private key of --tls-cert"})
def bootstrap(c, stack=None, wheelhouse=None, model_path=None, hub=False, tls_cert=None, tls_key=None, root=None,
              outputs=None):
    """Data disk, base packages, NVIDIA driver (skipped without a GPU), user + /data, API key, pinned vLLM venv, model.

    The API key comes from $EXAONE_API_KEY or the outputs file's `apiKey` (`pulumi stack output --json --show-secrets`);
    every Azure stack needs one."""
    spec = _spec(stack, root)
    if bool(tls_cert) != bool(tls_key):
        raise Exit("give both --tls-cert and --tls-key, or neither")
    out = _outputs(outputs)
    api_key = os.environ.get(API_KEY_ENV) or (out.secret("apiKey") if out else None)
    _run(c, spec, "bootstrap", lambda conn, report: boot.bootstrap(
        conn, spec, wheelhouse=wheelhouse, model_path=Path(model_path) if model_path else None, hub=hub,
        api_key=api_key, tls=(Path(tls_cert), Path(tls_key)) if tls_cert and tls_key else None, report=report), out)


@task(name="patch-model", help={**STACK_HELP, "model_dir": "model directory on the host (default: the stack's model path)",
                                "python": "python whose transformers must import the code (default: the vLLM venv)"})
def patch_model(c, stack=None, model_dir=None, python=None, root=None, outputs=None):
    """Apply EXAONE's remote-code compatibility patches where the import fails; backup + import check."""
    spec = _spec(stack, root)
    from service.layout import DEFAULT_LAYOUT

    _run(c, spec, "patch-model", lambda conn, report: patches.patch_model(
        conn, model_dir or spec.model.path, python or str(DEFAULT_LAYOUT.vllm_python)), _outputs(outputs))


@task(name="install-service", help=STACK_HELP)
def install_service(c, stack=None, root=None, outputs=None):
    """Render the systemd units from the spec, install, enable, restart only if changed, wait for /health."""
    spec = _spec(stack, root)
    _run(c, spec, "install-service", lambda conn, report: units.install_service(conn, spec, report=report),
         _outputs(outputs))


@task(name="tune-lora-kernels",
      help={**STACK_HELP, "budget": "seconds of tuning; shapes not reached keep vLLM's default tiles (default 300)"})
def tune_lora_kernels(c, stack=None, budget=300, root=None, outputs=None):
    """Tune vLLM's LoRA kernel tiles on each host's GPU (one-off, ~5 min, best while idle); apply with `fab restart`."""
    spec = _spec(stack, root)
    _run(c, spec, "tune-lora-kernels",
         lambda conn, report: kernel_tuning.tune_lora_kernels(conn, spec, budget_s=float(budget)), _outputs(outputs))


@task(name="install-monitoring", help=STACK_HELP)
def install_monitoring(c, stack=None, root=None, outputs=None):
    """Prometheus from the distribution on loopback, scraping every vLLM replica and the gateway, with the alert rules."""
    spec = _spec(stack, root)
    _run(c, spec, "install-monitoring", lambda conn, report: monitoring.install_monitoring(conn, spec), _outputs(outputs))


@task(name="deploy-adapters", iterable=["domain"],
      help={**STACK_HELP, "domain": "adapter domain (repeatable; default: the stack's pinned adapters)",
            "version": "version to deploy (default: the stack's pin, else the registry's current version)",
            "rollback": "go back to the registry's previous version of each domain",
            "dry_run": "show what would change, change nothing"})
def deploy_adapters(c, stack=None, domain=None, version=None, rollback=False, dry_run=False, root=None, outputs=None):
    """Set the registry's alias (the desired state), then run the reconciler on every host: it downloads with the
    host's own identity, checks sha256, validates, loads, warms up and switches the gateway's alias.

    Registry: $EXAONE_LORA_REGISTRY, else the outputs file's `storageBlobUrl` (your Azure login writes the alias;
    each host reads with its managed identity)."""
    signal.signal(signal.SIGTERM, _interrupt)
    spec = _spec(stack, root)
    out = _outputs(outputs)
    try:
        ref = adapters.registry_settings(spec, out)
        changes = adapters.set_desired(ref.open("operator"), spec, list(domain or []), version=int(version) if version
                                       else None, rollback=rollback, dry_run=dry_run)
    except (adapters.DeployError, OutputsError) as exc:
        raise Exit(str(exc)) from None
    for change in changes:
        print(f"registry: {change.step}: {change.detail}")

    touched: list[str] = []

    def action(conn: Connection, report: Any) -> list[Change]:
        touched.append(conn.host)
        return adapters.reconcile_host(conn, spec, ref, dry_run=dry_run, report=report)

    try:
        adapters.hold("desired")
        _run(c, spec, "deploy-adapters", action, out)
    except (Exit, KeyboardInterrupt):
        # A host that could not converge, or Ctrl-C/SIGTERM: the desired state goes back to what is serving.
        # (A SIGKILL leaves it set: the previous version keeps serving until the next run converges the hosts.)
        if not dry_run:
            adapters.undo_desired(ref.open("operator"), changes)
            print("registry: aliases set back to the versions that were serving", file=sys.stderr)
            if touched and changes:
                _converge_back(c, spec, action, out)
        raise


def _converge_back(c: Context, spec: DeploymentSpec, action: Action, outputs: StackOutputs | None) -> None:
    """After a failed deploy, the hosts that did switch must follow the registry back, or a load balancer would
    spread one alias over two versions: the same reconciler, now towards the restored desired state."""
    print("hosts: converging every host back to the versions that were serving", file=sys.stderr)
    try:
        _run(c, spec, "deploy-adapters: back to the serving versions", action, outputs)
    except Exit:
        print("hosts: some did not converge back; run `fab deploy-adapters` again once they are reachable",
              file=sys.stderr)


@task(help=STACK_HELP)
def status(c, stack=None, root=None, outputs=None):
    """Show each unit's state, main PID and restart count."""
    spec = _spec(stack, root)
    _run(c, spec, "status", lambda conn, report: [
        Change(s.unit, False, f"{s.active} pid={s.main_pid} restarts={s.restarts}") for s in units.status(conn, spec)],
        _outputs(outputs))


@task(help={**STACK_HELP, "lines": "how many journal lines"})
def logs(c, stack=None, lines=100, root=None, outputs=None):
    """Print the last journal lines of the serving units."""
    spec = _spec(stack, root)
    for conn in _connections(c, spec, _outputs(outputs)):
        sys.stdout.write(f"== {conn.host}\n{units.logs(conn, spec, int(lines))}\n")


@task(help=STACK_HELP)
def restart(c, stack=None, root=None, outputs=None):
    """Restart the serving units and wait for /health."""
    spec = _spec(stack, root)
    _run(c, spec, "restart", lambda conn, report: units.restart(conn, spec), _outputs(outputs))


@task(name="rollout-adapters",
      help={**STACK_HELP, "domain": "the alias to roll out, e.g. medical", "version": "the candidate version",
            "canary": "the candidate's first share of the alias's requests, percent (default 10)",
            "step": "added after each window that holds; at 100 the candidate is promoted (default 25)",
            "interval": "seconds per analysis window (default 60)",
            "shadow": "percent of the stable side's requests mirrored to the candidate (default 0)",
            "sticky_user": "keep each OpenAI `user` on one version",
            "min_requests": "candidate requests per window before it is judged (default 20)"})
def rollout_adapters(c, domain, version, canary=10, step=25, interval=60, shadow=0, sticky_user=False,
                     min_requests=20, stack=None, root=None, outputs=None):
    """Canary rollout of one adapter version on every host: the registry's alias gets a canary (the desired
    state), each host's reconciler applies it, and each window is judged on the gateways' own per-version metrics
    (error rate, p95 TTFT and time per output token against the stable version). Promoted at 100 %, rolled back
    (the alias stays on its version) when a window does not hold; Ctrl-C/SIGTERM end the canary the same way.
    `exaone-lora adapters rollout-status DOMAIN` shows the record."""
    from service.rollout.analysis import Thresholds
    from service.rollout.controller import RolloutError, RolloutSettings

    signal.signal(signal.SIGTERM, _interrupt)
    spec = _spec(stack, root)
    out = _outputs(outputs)
    settings = RolloutSettings(canary=int(canary), step=int(step), interval_s=float(interval), shadow=int(shadow),
                               sticky="user" if sticky_user else None,
                               thresholds=Thresholds(min_requests=int(min_requests)))
    try:
        ref = adapters.registry_settings(spec, out)
        record = rollout.rollout_adapters(_connections(c, spec, out), spec, ref, domain, int(version), settings)
    except (adapters.DeployError, RolloutError, OutputsError) as exc:
        raise Exit(str(exc)) from None
    if record.state != "promoted":
        raise Exit(f"{domain}: {record.state}: {record.reason}", code=3)
