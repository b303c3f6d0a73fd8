"""Real PEFT training of the tiny EXAONE checkpoint on CPU: loss, resume, export, validation, publish, vLLM."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import torch

from exaone_lora.checkpoints import Checkpoint
from service.manifest import parse_manifest
from service.registry import AdapterRegistry
from service.validation import validate_adapter
from tests.support.processes import Azurite, RunningProcess
from tests.training.conftest import FAST
from training.data import load_corpus
from training.export import ExportError, export_run, publish_run
from training.sft import SFTConfig, StopTraining, Trainer, TrainResult, last_checkpoint, train


def test_loss_goes_down_and_run_records_everything(medical_run: TrainResult) -> None:
    losses = [p["loss"] for p in medical_run.loss_curve]
    assert len(losses) == FAST.max_steps == medical_run.steps
    assert sum(losses[-3:]) / 3 < losses[0] - 0.5, losses
    assert medical_run.eval_loss is not None and medical_run.eval_loss < losses[0]
    summary = json.loads((medical_run.out_dir / "training.json").read_text())
    assert summary["data_hash"] and summary["train_samples"] + summary["eval_samples"] == 18
    assert summary["config"]["rank"] == 8 and summary["bf16"] is False  # fp32 on CPU
    assert summary["target_modules"] == ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc_0", "c_fc_1", "c_proj"]


def test_defaults_are_the_seeds() -> None:
    c = SFTConfig()
    assert (c.rank, c.alpha, c.dropout, c.learning_rate, c.epochs, c.micro_batch, c.grad_accum, c.targets) == (
        32, 64, 0.05, 2e-4, 30, 4, 8, "all-linear")
    with pytest.raises(ValueError, match="unknown target strategy"):
        SFTConfig(targets="mlp-only")


def test_pipelined_steps_make_the_sequential_curve(tiny_checkpoint: Checkpoint, corpora: Path, tmp_path: Path) -> None:
    """`train_steps` queues a step before reading the previous loss: same steps, same dropout draws, same curve,
    reported in order, and nothing in flight once it is exhausted."""
    conversations = load_corpus(corpora / "medical.jsonl").conversations
    config = replace(FAST, max_steps=5, eval_fraction=0.0)
    sequential = Trainer(tiny_checkpoint.path, conversations, tmp_path / "sequential", config, data_hash="x")
    one_by_one = [sequential.train_step() for _ in range(5)]
    pipelined = Trainer(tiny_checkpoint.path, conversations, tmp_path / "pipelined", config, data_hash="x")
    first, rest = list(pipelined.train_steps(2)), list(pipelined.train_steps(3))
    assert [s.step for s in first + rest] == [1, 2, 3, 4, 5] == [s.step for s in one_by_one]
    assert [s.loss for s in first + rest] == pytest.approx([s.loss for s in one_by_one], abs=1e-5)
    assert pipelined.step == len(pipelined.loss_curve) == 5
    assert [p["step"] for p in pipelined.loss_curve] == [p["step"] for p in sequential.loss_curve]


def test_run_reports_every_step_and_checkpoints_a_settled_state(tiny_checkpoint: Checkpoint, corpora: Path,
                                                               tmp_path: Path) -> None:
    config = replace(FAST, max_steps=5, save_every=3, keep_checkpoints=5)
    reported: list[int] = []
    result = train(tiny_checkpoint.path, corpora / "legal.jsonl", tmp_path / "run", config,
                   on_step=lambda step, loss: reported.append(step))
    assert reported == [1, 2, 3, 4, 5] and result.steps == 5
    # Each checkpoint holds exactly the steps before it: none of the next step's work leaked in.
    for name, steps in (("step-000003", 3), ("step-000005", 5)):
        state = json.loads((tmp_path / "run" / "checkpoints" / name / "state.json").read_text())
        assert state["step"] == steps == len(state["loss_curve"])
        optimizer = torch.load(tmp_path / "run" / "checkpoints" / name / "trainer.pt", weights_only=False)["optimizer"]
        assert {int(s["step"]) for s in optimizer["state"].values()} == {steps}


def test_resume_after_interruption_reaches_the_same_end(tiny_checkpoint: Checkpoint, corpora: Path, tmp_path: Path) -> None:
    config = replace(FAST, max_steps=6, save_every=1)
    straight = train(tiny_checkpoint.path, corpora / "legal.jsonl", tmp_path / "straight", config)

    def interrupt(step: int, loss: float) -> None:
        if step == 3:
            raise StopTraining

    run_dir = tmp_path / "interrupted"
    with pytest.raises(StopTraining):
        train(tiny_checkpoint.path, corpora / "legal.jsonl", run_dir, config, on_step=interrupt)
    checkpoint = last_checkpoint(run_dir)
    assert checkpoint is not None and checkpoint.name == "step-000003"
    assert not (run_dir / "adapter").exists()
    resumed = train(tiny_checkpoint.path, corpora / "legal.jsonl", run_dir, config)
    assert resumed.summary["resumed_from_step"] == 3
    assert resumed.steps == straight.steps == 6
    # Optimizer, scheduler, RNG and data order are restored: the curve continues as without interruption
    # (within CPU BLAS noise, which differs between allocations), and the optimizer counted all six steps.
    for a, b in zip(resumed.loss_curve, straight.loss_curve, strict=True):
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], abs=2e-3)
    state = torch.load(run_dir / "checkpoints" / "step-000006" / "trainer.pt", weights_only=False)
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {6}
    assert state["scheduler"]["last_epoch"] == 6
    # Resuming with other settings is refused rather than mixing two runs.
    with pytest.raises(ValueError, match="other settings"):
        train(tiny_checkpoint.path, corpora / "legal.jsonl", run_dir, replace(config, learning_rate=1e-3))


def test_embeddings_strategy_trains_but_export_refuses_it(tiny_checkpoint: Checkpoint, corpora: Path, tmp_path: Path,
                                                         azurite_blob: Azurite) -> None:
    run = train(tiny_checkpoint.path, corpora / "code.jsonl", tmp_path / "emb", replace(FAST, max_steps=1, targets="+embeddings"))
    config = json.loads((run.adapter_dir / "adapter_config.json").read_text())
    assert sorted(config["modules_to_save"]) == ["lm_head", "wte"]
    with pytest.raises(ExportError, match=r"\+embeddings .* vLLM refuses") as info:
        export_run(run.out_dir, tmp_path / "export", domain="code", max_rank=8)
    assert info.value.code == "modules-to-save" and not (tmp_path / "export").exists()
    registry = AdapterRegistry.from_connection_string(azurite_blob.connection_string, container="train-emb")
    registry.ensure_container()
    with pytest.raises(ExportError, match="modules_to_save"):
        publish_run(run.out_dir, registry, domain="code", max_rank=8)
    assert registry.versions("code") == []


def test_export_passes_the_serving_validator_with_a_full_manifest(medical_run: TrainResult, tmp_path: Path) -> None:
    dest = tmp_path / "medical-v1"
    manifest = export_run(medical_run.out_dir, dest, domain="medical", max_rank=8)
    assert sorted(p.name for p in dest.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "manifest.json"]
    stored = parse_manifest((dest / "manifest.json").read_bytes())
    assert stored == manifest
    validated = validate_adapter(dest, base_config=medical_run.summary["base_model"]["path"] + "/config.json", max_rank=8,
                                 manifest=stored)
    assert validated.rank == manifest.rank == 8 and manifest.alpha == 16
    assert sorted(manifest.target_modules) == sorted(validated.target_modules)
    assert manifest.base_model.name == "exaone-tiny-random" and manifest.base_model.revision.startswith("local-")
    assert manifest.training is not None and manifest.metrics is not None
    assert manifest.training["data_hash"] == medical_run.summary["data_hash"]
    assert len(manifest.training["loss_curve"]) == medical_run.steps
    assert manifest.metrics["eval_loss"] == medical_run.eval_loss
    # The serving validator's verdict is the exporter's: a rank above the server's limit is refused.
    with pytest.raises(ExportError) as info:
        export_run(medical_run.out_dir, tmp_path / "too-big", domain="medical", max_rank=4)
    assert info.value.code == "rank-too-high"


def test_publish_creates_new_immutable_versions(medical_run: TrainResult, azurite_blob: Azurite) -> None:
    registry = AdapterRegistry.from_connection_string(azurite_blob.connection_string, container="train-publish")
    registry.ensure_container()
    first = publish_run(medical_run.out_dir, registry, domain="medical", max_rank=8)
    second = publish_run(medical_run.out_dir, registry, domain="medical", max_rank=8)
    assert (first.version, second.version) == (1, 2) and registry.versions("medical") == [1, 2]
    assert registry.manifest("medical", 1).training == first.training


def _completion(url: str, model: str) -> dict[str, list[float]]:
    response = httpx.post(f"{url}/v1/completions", timeout=60, json={
        "model": model, "prompt": "[|user|]What should I know about asthma?\n[|assistant|]", "max_tokens": 6,
        "temperature": 0, "logprobs": 1, "return_token_ids": True})
    response.raise_for_status()
    choice = response.json()["choices"][0]
    return {"tokens": choice.get("token_ids"), "logprobs": choice["logprobs"]["token_logprobs"]}


@pytest.mark.vllm
def test_exported_adapter_loads_into_vllm_and_changes_its_output(medical_run: TrainResult, vllm: RunningProcess,
                                                                 tmp_path: Path) -> None:
    dest = tmp_path / "export"
    export_run(medical_run.out_dir, dest, domain="medical", max_rank=8)
    name = f"trained-medical-{uuid.uuid4().hex[:8]}"
    loaded = httpx.post(f"{vllm.url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(dest)}, timeout=60)
    assert loaded.status_code == 200, loaded.text
    try:
        base = _completion(vllm.url, "exaone")
        tuned = _completion(vllm.url, name)
    finally:
        httpx.post(f"{vllm.url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)
    assert base["tokens"] != tuned["tokens"] or base["logprobs"] != tuned["logprobs"]
    # Trained on answers to this very question: the adapter is far more confident in what it says.
    assert sum(tuned["logprobs"]) > sum(base["logprobs"])
