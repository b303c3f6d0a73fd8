"""Export a trained run as a servable adapter (two files + manifest.json), and publish it to the registry.

What leaves here is what the serving side accepts by construction: the exporter refuses `+embeddings`
adapters (vLLM rejects `modules_to_save`), then runs the serving validator itself and refuses whatever
it refuses, before writing a manifest or touching the registry.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.manifest import ADAPTER_FILES, CONFIG_FILE, MANIFEST_FILE, AdapterManifest, build_manifest, manifest_bytes
from service.validation import AdapterValidationError, ValidatedAdapter, validate_adapter


class ExportError(ValueError):
    """An adapter that must not reach a server; `.code` is stable (`modules-to-save` or the validator's code)."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class TrainedRun:
    """A finished `sft` output directory: `adapter/` + `training.json`."""

    run_dir: Path
    summary: dict[str, Any]

    @classmethod
    def open(cls, run_dir: Path | str) -> TrainedRun:
        root = Path(run_dir)
        summary_path = root / "training.json"
        if not summary_path.is_file() or not (root / "adapter" / CONFIG_FILE).is_file():
            raise ExportError(f"{root} is not a finished training run (needs training.json and adapter/{CONFIG_FILE}); "
                              "run `sft` to completion first", code="not-a-run")
        return cls(root, json.loads(summary_path.read_text()))

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / "adapter"

    @property
    def base_name(self) -> str:
        return str(self.summary["base_model"]["name"])

    @property
    def base_revision(self) -> str:
        return str(self.summary["base_model"]["revision"])

    @property
    def base_config(self) -> Path:
        return Path(self.summary["base_model"]["path"]) / "config.json"

    def training_record(self) -> dict[str, Any]:
        """The manifest's `training` section: how it was made, on what data."""
        config = self.summary["config"]
        return {
            "data_hash": self.summary["data_hash"],
            "train_samples": self.summary["train_samples"],
            "eval_samples": self.summary["eval_samples"],
            "steps": self.summary["steps"],
            "epochs": config["epochs"] if config.get("max_steps") is None else None,
            "learning_rate": config["learning_rate"],
            "dropout": config["dropout"],
            "micro_batch": config["micro_batch"],
            "grad_accum": config["grad_accum"],
            "max_length": config["max_length"],
            "seed": config["seed"],
            "targets": config["targets"],
            "loss_curve": [{"step": p["step"], "loss": p["loss"]} for p in self.summary["loss_curve"]],
        }

    def metrics_record(self) -> dict[str, Any]:
        curve = self.summary["loss_curve"]
        return {"eval_loss": self.summary["eval_loss"], "final_train_loss": curve[-1]["loss"] if curve else None,
                "eval_curve": self.summary.get("eval_curve", [])}


def refuse_unservable(adapter_dir: Path) -> None:
    """`+embeddings` runs are for experiments only: vLLM refuses adapters that carry modules_to_save."""
    config = json.loads((adapter_dir / CONFIG_FILE).read_text())
    if config.get("modules_to_save"):
        raise ExportError(
            f"{adapter_dir} was trained with +embeddings (modules_to_save={config['modules_to_save']}); vLLM refuses "
            "adapters that replace embeddings or the LM head, so it cannot be exported or published. Retrain with "
            "--targets all-linear (or attention / attention-qv).", code="modules-to-save")


def _copy_clean(run: TrainedRun, dest: Path) -> None:
    """Only the two files vLLM reads; the config names the base model, not a path on the training machine."""
    dest.mkdir(parents=True)
    config = json.loads((run.adapter_dir / CONFIG_FILE).read_text())
    config["base_model_name_or_path"] = run.base_name
    config["inference_mode"] = True
    (dest / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in ADAPTER_FILES:
        if name != CONFIG_FILE:
            shutil.copyfile(run.adapter_dir / name, dest / name)


def validate_run(run: TrainedRun, adapter_dir: Path, max_rank: int) -> ValidatedAdapter:
    try:
        return validate_adapter(adapter_dir, base_config=run.base_config, max_rank=max_rank)
    except AdapterValidationError as exc:
        raise ExportError(f"the serving validator refuses {adapter_dir}: [{exc.code}] {exc}", code=exc.code) from exc


def export_run(run_dir: Path | str, dest: Path | str, *, domain: str, version: int = 1, max_rank: int = 32,
               overwrite: bool = False) -> AdapterManifest:
    """Write `dest/` = adapter_config.json + adapter_model.safetensors + manifest.json; refuse what vLLM would."""
    run = TrainedRun.open(run_dir)
    refuse_unservable(run.adapter_dir)
    out = Path(dest)
    if out.exists():
        if not overwrite:
            raise ExportError(f"{out} exists; exports are immutable (pass overwrite to replace a local export)", code="exists")
        shutil.rmtree(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _copy_clean(run, staging)
        validate_run(run, staging, max_rank)
        manifest = build_manifest(staging, domain, version, run.base_name, run.base_revision,
                                  training=run.training_record(), metrics=run.metrics_record())
        (staging / MANIFEST_FILE).write_bytes(manifest_bytes(manifest))
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def publish_run(run_dir: Path | str, registry: Any, *, domain: str, max_rank: int = 32) -> AdapterManifest:
    """Publish to the registry as the next immutable version (the registry validates again on its side)."""
    import tempfile

    run = TrainedRun.open(run_dir)
    refuse_unservable(run.adapter_dir)
    with tempfile.TemporaryDirectory(prefix="exaone-lora-export-") as tmp:
        clean = Path(tmp) / "adapter"
        _copy_clean(run, clean)
        validate_run(run, clean, max_rank)
        manifest: AdapterManifest = registry.publish(
            domain, clean, base_model_name=run.base_name, base_model_revision=run.base_revision, max_rank=max_rank,
            training=run.training_record(), metrics=run.metrics_record(), base_config=run.base_config)
        return manifest
