"""Real local servers for tests and the demo: the CPU build of vLLM and Azurite, as child processes on 127.0.0.1.

A missing part fails the test with the command that installs it; nothing is skipped silently.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx

REPO = Path(__file__).resolve().parents[2]  # the checkout: venvs and caches live here
INSTALL_HINT = "run `bash scripts/test.sh` once (it installs the test bed) or see README 'Tests'"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_slot(index: int) -> int:
    """The `index`-th CPU this process may run on (wrapping around), for pinning one vLLM server's compute.

    vLLM's CPU build pins its worker to the same core in every server started with the default binding, and
    its workers busy-poll for a second after each message: two servers on one core ran about 10x slower
    than on two (182 against 1,388 completions in 45 s on a 2-core machine) and stalled long enough
    to time out clients. Servers that run side by side therefore each get a slot of their own.
    """
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[index % len(cpus)]


def vllm_python() -> Path:
    path = Path(os.environ.get("EXAONE_LORA_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
    if not path.exists():
        raise RuntimeError(f"the CPU build of vLLM is not installed at {path}; {INSTALL_HINT}")
    return path


def azurite_bin() -> Path:
    path = Path(os.environ.get("AZURITE_BIN", REPO / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"))
    if not path.exists():
        raise RuntimeError(f"Azurite is not installed at {path}; {INSTALL_HINT}")
    return path


@dataclass
class RunningProcess:
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    detached: bool = False  # set to leave it running when its context ends

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float,
              verify: ssl.SSLContext | bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered:\n{tail}")
        try:
            if httpx.get(url, timeout=2, verify=verify).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s (log: {log})")


@contextmanager
def run_process(cmd: Sequence[str], log: Path, ready_url: str, timeout: float, env: dict[str, str] | None = None,
                cwd: Path | None = None, verify: ssl.SSLContext | bool = True) -> Iterator[RunningProcess]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        # A new session, so that stopping it also stops vLLM's engine core child.
        process = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                   cwd=cwd, start_new_session=True)
    running = RunningProcess(process, ready_url.rsplit("/", 1)[0] if ready_url.endswith("/health") else ready_url, log)
    try:
        wait_http(ready_url, process, log, timeout, verify)
        yield running
    finally:
        if not running.detached:
            stop_process_group(process)


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 20) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextmanager
def vllm_server(model_dir: Path, log: Path, *, max_loras: int = 2, max_cpu_loras: int = 4, max_lora_rank: int = 8,
                served_name: str = "exaone", timeout: float = 300, lora: bool = True,
                cpu: int | None = None, extra_env: dict[str, str] | None = None) -> Iterator[RunningProcess]:
    """A real OpenAI-compatible vLLM server (CPU build) on a free loopback port, runtime LoRA updates on
    (`lora=False`: a plain server, e.g. a merged replica serving one version as its base model).

    Its argv and environment are the `dev` stack's (target local), rendered by `service.vllm_config` like every
    other vLLM the project starts, with these LoRA limits; its caches live under the checkout's `.cache`.
    `cpu`: the core its worker computes on (see `cpu_slot`); None keeps vLLM's automatic binding.
    `extra_env`: added to the rendered environment (e.g. `VLLM_LOGGING_LEVEL=DEBUG`, whose LoRA slot activations
    the routing benchmark counts).
    """
    from exaone_lora.spec import MergedReplicaSpec, load_spec
    from service.layout import HostLayout
    from service.vllm_config import merged_launch, vllm_launch

    port = free_port()
    dev = load_spec("dev", REPO)
    spec = dev.model_copy(update={"max_loras": max_loras, "max_cpu_loras": max_cpu_loras, "max_lora_rank": max_lora_rank,
                                  "model": dev.model.model_copy(update={"served_name": served_name})})
    layout = HostLayout(cache=PurePosixPath(REPO / ".cache" / "vllm-local"))
    if lora:
        launch = vllm_launch(spec, layout, model_path=str(model_dir), host="127.0.0.1", port=port)
    else:
        merged = MergedReplicaSpec(alias="local", port=port, max_num_seqs=spec.max_num_seqs)
        launch = merged_launch(spec, merged, version_name=served_name, model_path=str(model_dir), layout=layout)
    env = dict(launch.env)
    for key in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "HF_HOME", "XDG_CACHE_HOME"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    if cpu is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(cpu)
    env.update(extra_env or {})
    with run_process(launch.command(str(vllm_python())), log, f"http://127.0.0.1:{port}/health", timeout, env=env) as proc:
        yield proc


# The emulator's documented development account (public, identical in every Azurite install).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class Azurite:
    blob_url: str
    process: RunningProcess | None = None
    ca_file: Path | None = None  # set when it serves HTTPS: its self-signed certificate, the clients' CA file

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def detach(self) -> None:
        """Leave Azurite running after its context ends (the demo's --keep)."""
        assert self.process is not None
        self.process.detached = True

    @property
    def account_url(self) -> str:
        """The registry location for bearer-token access (HTTPS + OAuth Azurite): `open_registry(account_url, ...)`."""
        if self.ca_file is None:
            raise RuntimeError("this Azurite serves plain HTTP with the shared key: bearer tokens need azurite(https_oauth=True)")
        return self.blob_url

    @property
    def connection_string(self) -> str:
        protocol = "https" if self.ca_file is not None else "http"
        return (f"DefaultEndpointsProtocol={protocol};AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint={self.blob_url};")


@contextmanager
def azurite(workdir: Path, log: Path, *, https_oauth: bool = False) -> Iterator[Azurite]:
    """Azurite's Blob service on a free loopback port; telemetry off (it would call out otherwise).

    Plain (the dev stack): HTTP with the emulator's shared key. `https_oauth=True` (the Azure path's stand-in):
    HTTPS with a self-signed certificate made in `workdir` and `--oauth basic`, so Entra ID bearer tokens
    (exaone_lora.local.identity's endpoint) are checked for issuer, audience and lifetime.
    """
    if shutil.which("node") is None:
        raise RuntimeError(f"node is not installed; {INSTALL_HINT}")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [str(azurite_bin()), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
           "--disableTelemetry", "--skipApiVersionCheck", "--silent"]
    ca_file: Path | None = None
    if https_oauth:
        from exaone_lora.local.tls import self_signed_cert

        ca_file, key_file = self_signed_cert(workdir / "tls")
        cmd += ["--oauth", "basic", "--cert", str(ca_file), "--key", str(key_file)]
    scheme = "https" if https_oauth else "http"
    url = f"{scheme}://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    verify = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
    with run_process(cmd, log, f"{url}?comp=list", 60, verify=verify) as process:
        yield Azurite(url, process, ca_file)
