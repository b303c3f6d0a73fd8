"""Fold one validated LoRA version into the base weights: a servable model directory for a merged replica.

A merged replica serves one adapter version at the base model's speed (no LoRA kernels in the decode
step); the gateway sends that version's traffic to it when it is up and to the LoRA replicas otherwise
(see `service.gateway.core`). The merge works on safetensors directly: W' = W + (alpha / r) * B @ A,
computed in float32 and stored in the base's dtype, shard by shard, so peak memory is one shard. Every
other file of the base directory (config, tokenizer, remote code) is copied unchanged. The result is
written next to its destination and renamed into place, and carries `merged.json` recording exactly
which base files and adapter files (sha256) went in; a re-run with the same inputs does nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from service.manifest import file_digest
from service.validation import ValidatedAdapter, validate_adapter

MERGED_RECORD = "merged.json"
ADAPTER_PREFIX = "base_model.model."


class MergeError(ValueError):
    """The adapter cannot be folded into this base (validation failed or a target weight is missing)."""


@dataclass(frozen=True)
class MergedModel:
    path: Path
    version_name: str
    scale: float
    merged_weights: int
    reused: bool


def _scale(adapter_dir: Path, validated: ValidatedAdapter) -> float:
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("use_rslora"):
        return validated.alpha / math.sqrt(validated.rank)
    return validated.alpha / validated.rank


def _recipe(base_dir: Path, adapter_dir: Path, version_name: str, validated: ValidatedAdapter) -> dict[str, Any]:
    base_files = {p.name: p.stat().st_size for p in sorted(base_dir.glob("*.safetensors"))}
    base_config = hashlib.sha256((base_dir / "config.json").read_bytes()).hexdigest()
    return {
        "version_name": version_name,
        "base": {"path": str(base_dir), "config_sha256": base_config, "weight_files": base_files},
        "adapter": {"path": str(adapter_dir), "rank": validated.rank, "alpha": validated.alpha,
                    "target_modules": list(validated.target_modules),
                    "files": {name: d.sha256 for name, d in sorted(validated.files.items())}},
    }


def merge_adapter(base_dir: Path | str, adapter_dir: Path | str, out_dir: Path | str, *, version_name: str,
                  max_rank: int = 64, device: str = "cpu",
                  progress: Callable[[str, int, int], None] | None = None) -> MergedModel:
    """Write `out_dir`: the base model with adapter `version_name` folded in. Idempotent and atomic."""
    import torch
    from safetensors.torch import load_file, save_file

    base, adapter, out = Path(base_dir), Path(adapter_dir), Path(out_dir)
    if not (base / "config.json").is_file():
        raise MergeError(f"{base} is not a model directory (no config.json)")
    shards = sorted(base.glob("*.safetensors"))
    if not shards:
        raise MergeError(f"{base} has no *.safetensors weights")
    # The same validator that guards vLLM: a malformed adapter is never folded into served weights.
    try:
        validated = validate_adapter(adapter, base_config=base / "config.json", max_rank=max_rank)
    except ValueError as exc:
        raise MergeError(f"{adapter}: {exc}") from exc
    recipe = _recipe(base, adapter, version_name, validated)
    record = out / MERGED_RECORD
    scale = _scale(adapter, validated)
    existing = json.loads(record.read_text()) if record.is_file() else {}
    if existing.get("recipe") == recipe:
        return MergedModel(out, version_name, scale, existing["merged_weights"], reused=True)

    lora = load_file(str(adapter / "adapter_model.safetensors"))
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, a in lora.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removeprefix(ADAPTER_PREFIX).removesuffix(".lora_A.weight")
        deltas[f"{module}.weight"] = (a, lora[key.replace(".lora_A.", ".lora_B.")])

    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    new_parent = not out.parent.exists()
    staging.mkdir(parents=True)
    if new_parent:  # e.g. /data/models/merged on a first merge: the service user must be able to enter it
        out.parent.chmod(0o755)
    for item in base.iterdir():
        if item.suffix != ".safetensors" and item.is_file() and item.name != MERGED_RECORD:
            shutil.copy2(item, staging / item.name)
    merged: set[str] = set()
    for i, shard in enumerate(shards):
        tensors = load_file(str(shard), device=device)
        for name, weight in tensors.items():
            if name in deltas:
                a, b = (t.to(device=device, dtype=torch.float32) for t in deltas[name])
                tensors[name] = (weight.float() + scale * (b @ a)).to(weight.dtype).contiguous()
                merged.add(name)
        save_file({k: v.cpu() for k, v in tensors.items()}, str(staging / shard.name), metadata={"format": "pt"})
        del tensors
        if progress:
            progress(shard.name, i + 1, len(shards))
    missing = sorted(set(deltas) - merged)
    if missing:
        shutil.rmtree(staging, ignore_errors=True)
        raise MergeError(f"{len(missing)} adapter targets have no base weight, e.g. {missing[0]}")
    (staging / MERGED_RECORD).write_text(json.dumps(
        {"recipe": recipe, "scale": scale, "merged_weights": len(merged),
         "weights_sha256": {p.name: file_digest(p).sha256 for p in sorted(staging.glob("*.safetensors"))},
         "validated": {k: v for k, v in asdict(validated).items() if k != "files"}},
        indent=2, default=str))
    # The merge runs as root (sudo) and vLLM as its service user: whatever the umask or the writer's
    # temporary-file modes, the served model must be readable by others.
    for item in staging.iterdir():
        item.chmod(0o644)
    staging.chmod(0o755)
    # Swap in one rename where possible: a reader sees the old directory or the new one, never half of one.
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)
    return MergedModel(out, version_name, scale, len(merged), reused=False)
