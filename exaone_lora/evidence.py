"""Evidence that a stack's pins were tested: JSON records under `evidence/<stack>/`, keyed by a pins fingerprint.

The serving lifecycle test and the benchmark write one record each run (`record_evidence`); promotion
(`infra/promotion.py`) only copies pins for which every required kind has a passing record with exactly
the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exaone_lora.spec import DeploymentSpec

EVIDENCE_DIR = "evidence"
KINDS: tuple[str, ...] = ("lifecycle", "benchmark")


def pins(spec: DeploymentSpec) -> dict[str, Any]:
    """What a test run actually exercised: engine version, model, adapter versions and server tuning.

    Tier, SKU, region and network are deliberately absent: they belong to the target stack, not to the pins.
    """
    values: dict[str, Any] = {
        "vllm_version": spec.vllm_version,
        "model": {"name": spec.model.name, "revision": spec.model.revision},
        "adapters": [
            {"alias": a.alias, "version": a.version, "sha256": a.sha256}
            for a in sorted(spec.adapters, key=lambda a: a.alias)
        ],
        "server": {
            "max_lora_rank": spec.max_lora_rank,
            "max_loras": spec.max_loras,
            "max_cpu_loras": spec.max_cpu_loras,
            "max_model_len": spec.max_model_len,
            "max_num_seqs": spec.max_num_seqs,
            "gpu_memory_utilization": spec.gpu_memory_utilization,
            "server_args": dict(sorted(spec.server_args.items())),
        },
    }
    if spec.server_env:  # only when set, so evidence recorded before the field existed keeps its fingerprint
        values["server"]["server_env"] = dict(sorted(spec.server_env.items()))
    return values


def fingerprint(pin_values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(pin_values, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def pins_fingerprint(spec: DeploymentSpec) -> str:
    return fingerprint(pins(spec))


def evidence_dir(root: Path | str, stack: str) -> Path:
    return Path(root) / EVIDENCE_DIR / stack


def record_evidence(root: Path | str, spec: DeploymentSpec, kind: str, passed: bool, details: dict[str, Any]) -> Path:
    """Write `evidence/<stack>/<kind>-<UTC timestamp>.json` atomically; returns its path."""
    if kind not in KINDS:
        raise ValueError(f"evidence kind must be one of {', '.join(KINDS)} (got {kind!r})")
    now = datetime.now(UTC)
    directory = evidence_dir(root, spec.stack)
    directory.mkdir(parents=True, exist_ok=True)
    record = {
        "schema": 1,
        "stack": spec.stack,
        "kind": kind,
        "passed": bool(passed),
        "recorded_at": now.isoformat(),
        "pins": pins(spec),
        "fingerprint": pins_fingerprint(spec),
        "details": details,
    }
    path = directory / f"{kind}-{now.strftime('%Y%m%dT%H%M%S.%fZ')}.json"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{kind}-", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
    os.replace(tmp, path)
    return path


def read_evidence(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def evidence_records(root: Path | str, stack: str, kind: str) -> list[tuple[Path, dict[str, Any]]]:
    """Every readable record of `kind` for `stack`, oldest first (file names sort by time)."""
    found = []
    for path in sorted(evidence_dir(root, stack).glob(f"{kind}-*.json")):
        try:
            found.append((path, read_evidence(path)))
        except (OSError, json.JSONDecodeError):
            continue  # a foreign or damaged file is no evidence
    return found


def passing_evidence(root: Path | str, spec: DeploymentSpec, kinds: tuple[str, ...] = KINDS) -> dict[str, Path]:
    """The newest passing record per kind whose fingerprint equals the spec's pins; kinds without one are absent."""
    wanted = pins_fingerprint(spec)
    result: dict[str, Path] = {}
    for kind in kinds:
        for path, record in reversed(evidence_records(root, spec.stack, kind)):
            if record.get("passed") is True and record.get("fingerprint") == wanted:
                result[kind] = path
                break
    return result
