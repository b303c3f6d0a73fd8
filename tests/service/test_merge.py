"""Folding a LoRA version into the base weights, checked against PEFT applying the same adapter at run time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from exaone_lora.checkpoints import Checkpoint
from service.merge import MERGED_RECORD, MergeError, merge_adapter


def _logits(model_dir: Path, ids: torch.Tensor, adapter: Path | None = None) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from exaone_lora.hf_compat import fix_input_embeddings

    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), trust_remote_code=True, dtype=torch.float32)
    fix_input_embeddings(model)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_weights_reproduce_peft_outputs(tiny_checkpoint: Checkpoint, tiny_adapters: dict[str, Path],
                                               tmp_path: Path) -> None:
    out = tmp_path / "medical-v1"
    merged = merge_adapter(tiny_checkpoint.path, tiny_adapters["medical"], out, version_name="medical-v1", max_rank=8)
    assert not merged.reused and merged.merged_weights == tiny_checkpoint.shape.num_layers * 7
    assert merged.scale == 2.0  # the factory writes alpha = 2 r
    ids = torch.tensor([[1, 5, 9, 42, 7, 300, 11, 2]])
    base = _logits(tiny_checkpoint.path, ids)
    with_lora = _logits(tiny_checkpoint.path, ids, tiny_adapters["medical"])
    folded = _logits(out, ids)
    # bf16 storage of the merged weights rounds; the adapter's effect is far larger than that rounding.
    assert (with_lora - base).abs().max() > 20 * (folded - with_lora).abs().max()
    assert torch.equal(folded.argmax(-1), with_lora.argmax(-1))
    for name in ("config.json", "tokenizer.json", "modeling_exaone.py", "configuration_exaone.py"):
        assert (out / name).read_bytes() == (tiny_checkpoint.path / name).read_bytes()
    record = json.loads((out / MERGED_RECORD).read_text())
    assert record["recipe"]["version_name"] == "medical-v1"
    assert set(record["recipe"]["adapter"]["files"]) == {"adapter_config.json", "adapter_model.safetensors"}


def test_rerun_reuses_and_a_new_adapter_replaces_atomically(tiny_checkpoint: Checkpoint,
                                                            tiny_adapters: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "merged"
    first = merge_adapter(tiny_checkpoint.path, tiny_adapters["medical"], out, version_name="medical-v1", max_rank=8)
    again = merge_adapter(tiny_checkpoint.path, tiny_adapters["medical"], out, version_name="medical-v1", max_rank=8)
    assert again.reused and not first.reused
    before = (out / "model.safetensors").read_bytes()
    merge_adapter(tiny_checkpoint.path, tiny_adapters["legal"], out, version_name="legal-v1", max_rank=8)
    assert (out / "model.safetensors").read_bytes() != before
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.old"))


def test_a_malformed_adapter_is_refused_and_the_served_directory_kept(tiny_checkpoint: Checkpoint,
                                                                      tiny_adapters: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "merged"
    merge_adapter(tiny_checkpoint.path, tiny_adapters["medical"], out, version_name="medical-v1", max_rank=8)
    before = (out / MERGED_RECORD).read_text()
    bad = tmp_path / "bad"
    shutil.copytree(tiny_adapters["legal"], bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps(config | {"r": 64}))
    with pytest.raises(MergeError, match="rank 64 exceeds"):
        merge_adapter(tiny_checkpoint.path, bad, out, version_name="legal-v2", max_rank=8)
    assert (out / MERGED_RECORD).read_text() == before
    with pytest.raises(MergeError, match="not a model directory"):
        merge_adapter(tmp_path, tiny_adapters["legal"], tmp_path / "x", version_name="legal-v2")


def test_merged_model_is_readable_by_the_service_user_whatever_the_umask(tiny_checkpoint: Checkpoint,
                                                                        tiny_adapters: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    """The host runs the merge as root and vLLM as its own user: a strict umask must not lock vLLM out."""
    import os
    import stat

    out = tmp_path / "models" / "merged" / "medical-v1"
    previous = os.umask(0o077)
    try:
        merge_adapter(tiny_checkpoint.path, tiny_adapters["medical"], out, version_name="medical-v1", max_rank=8)
    finally:
        os.umask(previous)
    for path in (out.parent, out, *out.iterdir()):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o004, f"{path} is {oct(mode)}: not readable by others"
        if path.is_dir():
            assert mode & 0o001, f"{path} is {oct(mode)}: not searchable by others"
