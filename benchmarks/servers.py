"""The benchmark runners' server processes: start a vLLM (or any server) in its own session, wait until it answers,
stop it by its recorded pid; shared by `benchmarks.device`, `benchmarks.hot` and `benchmarks.dual`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from service.vllm_config import VllmLaunch


def start_launch(launch: VllmLaunch, label: str, root: Path, log: Path, name: str = "server",
                 served: str = "exaone") -> dict[str, Any]:
    """Start one vLLM from its rendered launch; its state goes to `<root>/<name>.json` for `stop_server`."""
    for key in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "HF_HOME", "XDG_CACHE_HOME"):
        if key in launch.env:
            Path(launch.env[key]).mkdir(parents=True, exist_ok=True)
    return start_process(launch.command(sys.executable), launch.env, label, root, log, name,
                         f"http://127.0.0.1:{launch.port}", served)


def start_process(argv: list[str], env_extra: dict[str, str], label: str, root: Path, log: Path, name: str,
                  url: str, served: str = "exaone") -> dict[str, Any]:
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with log.open("w") as fh:
        proc = subprocess.Popen(argv, env=os.environ | env_extra, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    state = {"pid": proc.pid, "variant": label, "argv": argv, "env": env_extra, "t0": t0, "log": str(log),
             "url": url, "served": served}
    (root / f"{name}.json").write_text(json.dumps(state))
    print(f"started {label} pid {proc.pid}: {' '.join(argv)}", flush=True)
    return state


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child still answers kill(0); ask its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def wait_ready(state: dict[str, Any], timeout_s: float) -> float:
    """Seconds from process start to /health 200 plus one generated token."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if not alive(state["pid"]):
            tail = Path(state["log"]).read_text(errors="replace")[-4000:]
            raise RuntimeError(f"server {state['variant']} exited during start:\n{tail}")
        try:
            if httpx.get(state["url"] + "/health", timeout=5).status_code == 200:
                r = httpx.post(state["url"] + "/v1/completions", timeout=60,
                               json={"model": state.get("served", "exaone"), "prompt": "hi", "max_tokens": 1})
                if r.status_code == 200:
                    ready = time.time() - state["t0"]
                    print(f"{state['variant']} ready after {ready:.1f}s", flush=True)
                    return ready
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"server {state['variant']} not ready after {timeout_s}s")


def stop_server(root: Path, name: str = "server") -> None:
    path = root / f"{name}.json"
    if not path.exists():
        return
    pid = json.loads(path.read_text())["pid"]
    if alive(pid):
        os.killpg(pid, signal.SIGTERM)
        for _ in range(60):
            if not alive(pid):
                break
            time.sleep(0.5)
        else:
            os.killpg(pid, signal.SIGKILL)
            time.sleep(2)
    with contextlib.suppress(ChildProcessError):  # reap it when this process started it
        os.waitpid(pid, os.WNOHANG)
    path.unlink()
    # The GPU memory of the engine core goes with its process; give the driver a moment.
    time.sleep(3)


def wait_gateway(url: str, aliases: list[str], timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            listed = {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=5).json()["data"]}
            if set(aliases) <= listed:
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(1)
    raise TimeoutError(f"gateway at {url} did not list {aliases} within {timeout_s}s")


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))
    print(f"wrote {path}", flush=True)
