"""Fabric tasks: how operators touch the serving hosts.  `fab --list` shows them; `fab --help <task>` their options.

Pick hosts either way:
  fab -H azureuser@20.1.2.3 -i ~/.ssh/id_ed25519 bootstrap --stack poc     # explicit host(s)
  fab bootstrap --stack poc --outputs outputs.json                           # hosts from `pulumi stack output --json`
Without -H the task reads `hostIps` and `sshUser` from --outputs (or runs `pulumi stack output --json -s STACK`)
and works on all hosts in parallel. The logic lives in `provisioning/`; these tasks only parse options.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from fabric import Connection, task
from invoke.context import Context
from invoke.exceptions import Exit

from exaone_lora.spec import DeploymentSpec, load_spec
from provisioning import adapters, kernel_tuning, monitoring, patches, service
from provisioning import bootstrap as boot
from provisioning.report import Action, run_on_hosts
from provisioning.results import Change

ROOT = Path(__file__).resolve().parent


def _spec(stack: str, root: str | None) -> DeploymentSpec:
    return load_spec(stack, Path(root or os.environ.get("EXAONE_LORA_ROOT") or ROOT))


def _stack_outputs(stack: str, outputs: str | None) -> dict[str, Any]:
    if outputs:
        return dict(json.loads(Path(outputs).read_text()))
    if shutil.which("pulumi") is None:
        raise Exit(f"no -H host given: pass --outputs FILE (from `pulumi stack output --json -s {stack}`) or -H HOST")
    text = subprocess.run(["pulumi", "stack", "output", "--json", "-s", stack], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    return dict(json.loads(text))


def _connections(c: Context, spec: DeploymentSpec, outputs: str | None, key: str | None) -> list[Connection]:
    if isinstance(c, Connection):
        return [c]
    data = _stack_outputs(spec.stack, outputs)
    hosts = [h for h in data.get("hostIps", []) if h]
    if not hosts:
        raise Exit(f"stack {spec.stack} has no hostIps output (is it target vm and deployed?)")
    kwargs = {"key_filename": key} if key else {}
    return [Connection(h, user=data.get("sshUser", spec.admin_username), connect_kwargs=kwargs) for h in hosts]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run(c: Context, spec: DeploymentSpec, title: str, action: Action, outputs: str | None, key: str | None) -> None:
    # SIGTERM behaves like Ctrl-C, so an interrupted deploy still removes its staging directory.
    signal.signal(signal.SIGTERM, _interrupt)
    results = run_on_hosts(_connections(c, spec, outputs, key), action, f"{title} ({spec.stack})")
    if not all(r.ok for r in results):
        raise Exit(code=1)
    if not any(r.changed for r in results):
        print("no changes")


STACK_HELP = {"stack": "stack name: reads Pulumi.<stack>.yaml (default dev)",
              "root": "directory holding the Pulumi.<stack>.yaml files (default: the repository)",
              "outputs": "JSON of `pulumi stack output --json` (hosts and SSH user when no -H is given)",
              "key": "SSH private key for hosts read from --outputs"}


@task(help={**STACK_HELP, "wheelhouse": "directory ON THE HOST with wheels for an offline vLLM install",
            "model_path": "local checkpoint directory to upload as the pinned model",
            "hub": "download the pinned model revision from the Hugging Face hub on the host (Azure only)"})
def bootstrap(c, stack="dev", wheelhouse=None, model_path=None, hub=False, root=None, outputs=None, key=None):
    """Base packages, NVIDIA driver (H100/Ubuntu 24.04; skipped without a GPU), user + /data, pinned vLLM venv, model."""
    spec = _spec(stack, root)
    _run(c, spec, "bootstrap", lambda conn, report: boot.bootstrap(
        conn, spec, wheelhouse=wheelhouse, model_path=Path(model_path) if model_path else None, hub=hub, report=report),
        outputs, key)


@task(name="patch-model", help={**STACK_HELP, "model_dir": "model directory on the host (default: the stack's model path)",
                                "python": "python whose transformers must import the code (default: the vLLM venv)"})
def patch_model(c, stack="dev", model_dir=None, python=None, root=None, outputs=None, key=None):
    """Apply EXAONE's remote-code compatibility patches where the import fails; backup + import check."""
    spec = _spec(stack, root)
    from service.layout import DEFAULT_LAYOUT

    _run(c, spec, "patch-model", lambda conn, report: patches.patch_model(
        conn, model_dir or spec.model.path, python or str(DEFAULT_LAYOUT.vllm_python)), outputs, key)


@task(name="install-service", help=STACK_HELP)
def install_service(c, stack="dev", root=None, outputs=None, key=None):
    """Render the systemd units from the spec, install, enable, restart only if changed, wait for /health."""
    spec = _spec(stack, root)
    _run(c, spec, "install-service", lambda conn, report: service.install_service(conn, spec), outputs, key)


@task(name="tune-lora-kernels",
      help={**STACK_HELP, "budget": "seconds of tuning; shapes not reached keep vLLM's default tiles (default 300)"})
def tune_lora_kernels(c, stack="dev", budget=300, root=None, outputs=None, key=None):
    """Tune vLLM's LoRA kernel tiles on each host's GPU (one-off, ~5 min, best while idle); apply with `fab restart`."""
    spec = _spec(stack, root)
    _run(c, spec, "tune-lora-kernels",
         lambda conn, report: kernel_tuning.tune_lora_kernels(conn, spec, budget_s=float(budget)), outputs, key)


@task(name="install-monitoring", help=STACK_HELP)
def install_monitoring(c, stack="dev", root=None, outputs=None, key=None):
    """Prometheus from the distribution on loopback, scraping every vLLM replica and the gateway, with the alert rules."""
    spec = _spec(stack, root)
    _run(c, spec, "install-monitoring", lambda conn, report: monitoring.install_monitoring(conn, spec), outputs, key)


@task(name="deploy-adapters", iterable=["domain"],
      help={**STACK_HELP, "domain": "adapter domain (repeatable; default: the stack's pinned adapters)",
            "version": "version to deploy (default: the stack's pin, else the registry alias)",
            "rollback": "go back to the version served before the current one",
            "dry_run": "show what would change, change nothing",
            "connection_string": "registry connection string (default: $AZURE_STORAGE_CONNECTION_STRING, "
                                 "else the stack's account with DefaultAzureCredential)"})
def deploy_adapters(c, stack="dev", domain=None, version=None, rollback=False, dry_run=False, connection_string=None,
                    root=None, outputs=None, key=None):
    """Deploy adapter versions from the Blob registry: verify, validate, warm up, switch the alias atomically."""
    from service.registry import AdapterRegistry

    spec = _spec(stack, root)
    conn_str = connection_string or os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if conn_str:
        registry = AdapterRegistry.from_connection_string(conn_str, spec.storage.container)
    elif spec.storage.account_name:
        registry = AdapterRegistry.from_account_url(f"https://{spec.storage.account_name}.blob.core.windows.net",
                                                    spec.storage.container)
    else:
        raise Exit("no registry: pass --connection-string or set storage.accountName in the stack")

    def action(conn: Connection, report: Any) -> list[Change]:
        return adapters.deploy_adapters(conn, spec, registry, list(domain or []), version=int(version) if version else None,
                                        rollback=rollback, dry_run=dry_run, report=report)

    _run(c, spec, "deploy-adapters", action, outputs, key)


@task(help=STACK_HELP)
def status(c, stack="dev", root=None, outputs=None, key=None):
    """Show each unit's state, main PID and restart count."""
    spec = _spec(stack, root)
    _run(c, spec, "status", lambda conn, report: [
        Change(s.unit, False, f"{s.active} pid={s.main_pid} restarts={s.restarts}") for s in service.status(conn, spec)],
        outputs, key)


@task(help={**STACK_HELP, "lines": "how many journal lines"})
def logs(c, stack="dev", lines=100, root=None, outputs=None, key=None):
    """Print the last journal lines of the serving units."""
    spec = _spec(stack, root)
    for conn in _connections(c, spec, outputs, key):
        sys.stdout.write(f"== {conn.host}\n{service.logs(conn, spec, int(lines))}\n")


@task(help=STACK_HELP)
def restart(c, stack="dev", root=None, outputs=None, key=None):
    """Restart the serving units and wait for /health."""
    spec = _spec(stack, root)
    _run(c, spec, "restart", lambda conn, report: service.restart(conn, spec), outputs, key)
