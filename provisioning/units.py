"""`install-service`, `status`, `logs`, `restart`: the systemd units of one serving host.

The vLLM unit text comes from `service.vllm_config.systemd_unit` (the only place vLLM's argv is built);
this module installs it, enables it, restarts only when the text changed, and waits for `/health`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shlex
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from fabric import Connection

from exaone_lora.spec import DeploymentSpec
from provisioning.remote import GiveUp, RemoteError, http_status, ok, out, put_bytes, replace_dir, sh, wait_for
from provisioning.results import Change
from service.layout import DEFAULT_LAYOUT, HostLayout
from service.merged_replicas import merged_units
from service.replicas import replica_count, replica_unit_name, replica_urls, upstream_urls
from service.vllm_config import cuda_only_options, systemd_unit

UNIT_DIR = "/etc/systemd/system"
GATEWAY_UNIT = "exaone-gateway.service"
# The gateway runs the project's own code (these packages), copied to the host by install-service.
GATEWAY_APP = "gateway"
APP_PACKAGES = ("exaone_lora", "service")
REPO = Path(__file__).resolve().parent.parent


def vllm_unit_name(replica: int) -> str:
    """One unit instance per GPU, named by the serving side (`exaone-vllm@N.service`)."""
    return replica_unit_name(replica)


def replicas(spec: DeploymentSpec) -> int:
    return replica_count(spec)


def gateway_unit(spec: DeploymentSpec, layout: HostLayout = DEFAULT_LAYOUT) -> str:
    """The gateway (`python -m service.cli gateway`) in front of the vLLM replicas: public API on spec.port,
    admin API on loopback; it runs the project's own code with the vLLM venv's Python (which carries
    fastapi, uvicorn, httpx, prometheus-client, typer), so the host needs no second venv."""
    # Merged replicas are upstreams too: the gateway tells them apart by what their /v1/models lists.
    upstreams = " ".join(f"--upstream {u}" for u in upstream_urls(spec, layout))
    # The stack's pins are the aliases at start; deploy-adapters switches them at run time.
    aliases = "".join(f" --alias {pin.alias}={pin.name}" for pin in spec.adapters)
    after = " ".join(vllm_unit_name(r) for r in range(replicas(spec)))
    public_host = "127.0.0.1" if spec.target == "local" else "0.0.0.0"
    # Azure stacks: the gateway refuses to start without EXAONE_API_KEY (bootstrap writes it to secrets.env).
    guards = "" if spec.target == "local" else " --require-api-key"
    # A public API is served over TLS only (bootstrap installs the operator's certificate).
    if spec.api.exposure == "public":
        guards += f" \\\n  --tls-cert {layout.tls_cert} --tls-key {layout.tls_key}"
    return f"""[Unit]
Description=EXAONE LoRA gateway (stack {spec.stack})
After=network-online.target {after}
Wants={after}

[Service]
Type=exec
User={layout.service_user}
Group={layout.service_user}
WorkingDirectory={gateway_src(layout)}
Environment=PYTHONPATH={gateway_src(layout)}
Environment=PYTHONDONTWRITEBYTECODE=1
EnvironmentFile={layout.env_file}
ExecStart={layout.vllm_python} -m service.cli gateway --host {public_host} --port {spec.port} \\
  --admin-port {spec.gateway.admin_port} --served-name {spec.model.served_name} --adapter-root {layout.adapters} \\
  --routing {spec.gateway.routing} {upstreams}{aliases}{guards}
Restart=always
RestartSec=3
NoNewPrivileges=yes
ProtectSystem=full
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
"""


def gateway_src(layout: HostLayout = DEFAULT_LAYOUT) -> PurePosixPath:
    return layout.app / GATEWAY_APP / "src"


def source_bundle() -> tuple[bytes, str]:
    """The gateway's code (packages exaone_lora and service) as a reproducible tar.gz and its sha256."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for package in APP_PACKAGES:
            for path in sorted((REPO / package).rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".json", ".yaml", ".txt"):
                    info = tarfile.TarInfo(path.relative_to(REPO).as_posix())
                    info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
                    tar.addfile(info, io.BytesIO(path.read_bytes()))
    # mtime=0 in the gzip header too: equal code gives equal bytes, so "unchanged" is detectable.
    data = gzip.compress(buf.getvalue(), mtime=0)
    return data, hashlib.sha256(data).hexdigest()


def ensure_gateway_app(c: Connection, layout: HostLayout = DEFAULT_LAYOUT) -> Change:
    data, digest = source_bundle()
    src = gateway_src(layout)
    marker = f"{src}/.bundle-sha256"
    if out(c, f"cat {marker} 2>/dev/null || true") == digest:
        return Change("gateway code", False, f"bundle {digest[:12]} present")
    tmp = f"/tmp/exaone-gateway-{digest[:12]}.tar.gz"
    c.put(io.BytesIO(data), tmp)
    sh(c, f"rm -rf {src}.new && install -d -m 755 {src}.new && tar -xzf {tmp} -C {src}.new && "
          f"echo {digest} > {src}.new/.bundle-sha256 && {replace_dir(f'{src}.new', str(src))} && rm -rf {tmp}")
    sh(c, f"cd {src} && PYTHONPATH={src} {layout.vllm_python} -c 'import service.cli'")
    return Change("gateway code", True, f"bundle {digest[:12]} installed in {src}")


def rendered_units(spec: DeploymentSpec, layout: HostLayout = DEFAULT_LAYOUT) -> dict[str, str]:
    units = {vllm_unit_name(r): systemd_unit(spec, layout, replica=r) for r in range(replicas(spec))}
    units |= merged_units(spec, layout)
    if spec.gateway.enabled:
        units[GATEWAY_UNIT] = gateway_unit(spec, layout)
    return units


def health_urls(spec: DeploymentSpec, layout: HostLayout = DEFAULT_LAYOUT) -> list[str]:
    urls = [f"{url}/health" for url in replica_urls(spec, layout)]
    if spec.gateway.enabled:
        urls.append(f"http://127.0.0.1:{spec.port}/health")
    return urls


# A unit systemd has restarted this often since the wait began is failing at start: waiting on cannot help.
CRASH_RESTARTS = 3


def _restarts(c: Connection, units: list[str]) -> dict[str, int]:
    text = out(c, "for u in " + " ".join(shlex.quote(u) for u in units) + "; do "
                  "echo \"$u $(systemctl show -p NRestarts --value \"$u\")\"; done", check=False)
    return {u: int(n) for u, n in (line.split() for line in text.splitlines() if len(line.split()) == 2 and
                                   line.split()[1].isdigit())}


def wait_healthy(c: Connection, spec: DeploymentSpec, timeout: float = 900, layout: HostLayout = DEFAULT_LAYOUT) -> None:
    units = list(rendered_units(spec, layout))
    before = _restarts(c, units)

    def healthy(url: str) -> bool:
        if http_status(c, url) == 200:
            return True
        crashing = [u for u, n in _restarts(c, units).items() if n - before.get(u, 0) >= CRASH_RESTARTS]
        if crashing:
            journal = " ".join(f"-u {shlex.quote(u)}" for u in crashing)
            raise GiveUp(f"{', '.join(crashing)} keeps failing at start; its last log lines:\n"
                         f"{out(c, f'journalctl --no-pager -n 15 {journal}', check=False)}")
        return False

    for url in health_urls(spec, layout):
        wait_for(lambda u=url: healthy(u), timeout, interval=2, what=f"{url} healthy")  # type: ignore[misc]


def for_host(c: Connection, layout: HostLayout = DEFAULT_LAYOUT) -> HostLayout:
    """The layout as this host can run it: without an NVIDIA GPU the CPU build of vLLM stands in."""
    from provisioning.bootstrap import gpu_present

    return layout if not layout.cuda or gpu_present(c) else replace(layout, cuda=False)


def install_service(c: Connection, spec: DeploymentSpec, *, layout: HostLayout = DEFAULT_LAYOUT,
                    health_timeout: float = 900, report: Callable[[str], None] = print) -> list[Change]:
    layout = for_host(c, layout)
    changes: list[Change] = []
    if not layout.cuda and spec.target != "local":
        left_out = cuda_only_options(spec, layout)
        skipped = (f"skipped: needs GPU: vLLM {spec.vllm_version} (CUDA build)" + (f" with {', '.join(left_out)}" if left_out
                   else "") + " (the CPU build stands in)")
        report(skipped)
        changes.append(Change("vllm build", False, skipped))
    units = rendered_units(spec, layout)
    if GATEWAY_UNIT in units:
        app = ensure_gateway_app(c, layout)
        changes.append(app)
    written = [name for name, text in units.items() if put_bytes(c, text.encode(), f"{UNIT_DIR}/{name}")]
    if GATEWAY_UNIT in units and changes[0].changed and GATEWAY_UNIT not in written:
        written.append(GATEWAY_UNIT)  # new code: restart the gateway even though its unit text is the same
    changes += [Change(f"unit {name}", name in written, "rendered from the spec") for name in units]
    if written:
        sh(c, "systemctl daemon-reload")
    for name in units:
        if not ok(c, f"systemctl is-enabled --quiet {name}"):
            sh(c, f"systemctl enable {name}")
            changes.append(Change(f"enable {name}", True))
        if name in written or not ok(c, f"systemctl is-active --quiet {name}"):
            sh(c, f"systemctl restart {name}")
            changes.append(Change(f"restart {name}", True, "unit changed" if name in written else "was not running"))
    try:
        wait_healthy(c, spec, health_timeout, layout)
    except GiveUp as err:
        raise RemoteError(str(err)) from err
    except TimeoutError as err:
        raise RemoteError(f"{err}; last log lines:\n{logs(c, spec, 30)}") from err
    return changes


@dataclass(frozen=True)
class UnitStatus:
    unit: str
    active: str
    main_pid: int
    restarts: int


def status(c: Connection, spec: DeploymentSpec, layout: HostLayout = DEFAULT_LAYOUT) -> list[UnitStatus]:
    result = []
    for name in rendered_units(spec, layout):
        props = dict(line.split("=", 1) for line in out(
            c, f"systemctl show {name} -p ActiveState -p MainPID -p NRestarts").splitlines() if "=" in line)
        result.append(UnitStatus(name, props.get("ActiveState", "unknown"), int(props.get("MainPID") or 0),
                                 int(props.get("NRestarts") or 0)))
    return result


def logs(c: Connection, spec: DeploymentSpec, lines: int = 100, layout: HostLayout = DEFAULT_LAYOUT) -> str:
    units = " ".join(f"-u {shlex.quote(n)}" for n in rendered_units(spec, layout))
    return out(c, f"journalctl --no-pager -n {int(lines)} {units}", check=False)


def restart(c: Connection, spec: DeploymentSpec, layout: HostLayout = DEFAULT_LAYOUT,
            health_timeout: float = 900) -> list[Change]:
    names = list(rendered_units(spec, layout))
    sh(c, "systemctl restart " + " ".join(names))
    wait_healthy(c, spec, health_timeout, layout)
    return [Change(f"restart {n}", True) for n in names]
