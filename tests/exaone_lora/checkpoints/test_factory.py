"""The checkpoint factory: EXAONE's real names and config keys, loadable by transformers and PEFT."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from exaone_lora.checkpoints import Checkpoint, make_adapter, make_checkpoint
from exaone_lora.checkpoints.factory import parameter_shapes
from exaone_lora.hf_compat import fix_input_embeddings
from exaone_lora.model_shape import EXAONE_3_5_2_4B, EXAONE_TINY


def test_full_shape_has_the_real_parameter_names_and_count() -> None:
    shapes = dict(parameter_shapes(EXAONE_3_5_2_4B))
    assert sum(math.prod(s) for s in shapes.values()) == 2_405_327_360
    assert shapes["transformer.wte.weight"] == (102_400, 2560)
    assert shapes["transformer.h.29.attn.attention.k_proj.weight"] == (640, 2560)
    assert shapes["transformer.h.0.mlp.c_fc_0.weight"] == (7168, 2560)
    assert shapes["transformer.h.0.mlp.c_proj.weight"] == (2560, 7168)
    assert "lm_head.weight" not in shapes  # tied to wte, as in the published checkpoint


def test_config_has_exaone_keys(tiny_checkpoint: Checkpoint) -> None:
    config = json.loads((tiny_checkpoint.path / "config.json").read_text())
    assert config["architectures"] == ["ExaoneForCausalLM"]
    assert config["model_type"] == "exaone"
    assert config["num_layers"] == EXAONE_TINY.num_layers and "num_hidden_layers" not in config
    assert config["auto_map"]["AutoConfig"] == "configuration_exaone.ExaoneConfig"
    assert (tiny_checkpoint.path / "configuration_exaone.py").exists()


def test_tokenizer_renders_exaone_chat_format(tiny_checkpoint: Checkpoint) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint.path)
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}],
        tokenize=False,
    )
    assert text == "[|system|]S[|endofturn|]\n[|user|]U\n[|assistant|]A[|endofturn|]\n"
    assert tokenizer.eos_token == "[|endofturn|]"
    assert len(tokenizer.encode("[|user|]")) == 1  # special tokens are single tokens


def test_loads_with_trust_remote_code_and_runs_forward(tiny_checkpoint: Checkpoint) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint.path, trust_remote_code=True, dtype=torch.float32)
    assert model.config.num_hidden_layers == EXAONE_TINY.num_layers  # mapped onto num_layers
    names = dict(model.named_parameters())
    assert "transformer.h.1.attn.attention.out_proj.weight" in names
    ids = torch.tensor([[5, 6, 7, 8]])
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    assert out.logits.shape == (1, 4, EXAONE_TINY.vocab_size)
    assert torch.isfinite(out.loss)


def test_remote_code_reproduces_the_get_input_embeddings_gap(tiny_checkpoint: Checkpoint) -> None:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(tiny_checkpoint.path, trust_remote_code=True)
    with pytest.raises(NotImplementedError):
        model.get_input_embeddings()
    assert fix_input_embeddings(model).get_input_embeddings() is model.transformer.wte


def test_adapter_loads_with_peft_and_changes_the_output(tiny_checkpoint: Checkpoint, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = make_adapter(tiny_checkpoint, tmp_path / "lora", rank=4, seed=3)
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("base_model.model.transformer.h.0.mlp.c_fc_1.lora_A.weight").shape == (4, 128)
    assert "base_model.model.transformer.h.1.attn.attention.v_proj.lora_B.weight" in keys
    assert len(keys) == 2 * 7 * EXAONE_TINY.num_layers

    model = fix_input_embeddings(
        AutoModelForCausalLM.from_pretrained(tiny_checkpoint.path, trust_remote_code=True, dtype=torch.float32))
    ids = torch.tensor([[5, 6, 7, 8]])
    base = model(input_ids=ids).logits.detach().clone()
    peft_model = PeftModel.from_pretrained(model, str(adapter))
    tuned = peft_model(input_ids=ids).logits
    assert not torch.allclose(base, tuned, atol=1e-4)


def test_every_load_computes_the_same_rotary_embedding(tiny_checkpoint: Checkpoint) -> None:
    """transformers 5 materialises a remote-code model from the meta device: anything not in the checkpoint
    (such as a non-persistent rotary buffer) would be uninitialised memory, and differ from load to load."""
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    outputs = []
    for _ in range(2):
        model: Any = AutoModelForCausalLM.from_pretrained(tiny_checkpoint.path, trust_remote_code=True,
                                                          dtype=torch.float32)
        cos, sin = model.transformer.rotary(torch.arange(6)[None], torch.float32)
        dim = EXAONE_TINY.head_dim
        angle = 3 * EXAONE_TINY.rope_theta ** (-2 * 1 / dim)  # position 3, frequency 1
        assert cos[0, 0, 3, 1] == pytest.approx(math.cos(angle), abs=1e-6)
        assert sin[0, 0, 3, 1 + dim // 2] == pytest.approx(math.sin(angle), abs=1e-6)
        with torch.no_grad():
            outputs.append(model(input_ids=ids).logits)
    assert torch.equal(outputs[0], outputs[1])


def test_uninitialised_rotary_buffers_are_refused() -> None:
    from exaone_lora.hf_compat import RotaryNotInitialised, check_rotary_buffers

    rotary = torch.nn.Module()
    good = 1.0 / (10_000 ** (torch.arange(0, 16, 2).float() / 16))
    rotary.register_buffer("inv_freq", good, persistent=False)
    check_rotary_buffers(rotary)
    for garbage in (torch.zeros(8), torch.full((8,), float("nan")), good * 3.0e-18):
        rotary.inv_freq = garbage
        with pytest.raises(RotaryNotInitialised, match="inv_freq"):
            check_rotary_buffers(rotary)


def test_factory_refreshes_the_modeling_code_of_a_reused_checkpoint(tmp_path: Path) -> None:
    first = make_checkpoint(tmp_path / "m", "tiny", seed=5)
    stale = first.path / "modeling_exaone.py"
    stale.write_text("# an older version\n")
    make_checkpoint(tmp_path / "m", "tiny", seed=5)
    assert "class ExaoneForCausalLM" in stale.read_text()


def test_factory_is_idempotent_and_atomic(tmp_path: Path) -> None:
    first = make_checkpoint(tmp_path / "m", "tiny", seed=5)
    stamp = (first.path / "model.safetensors").stat().st_mtime_ns
    assert make_checkpoint(tmp_path / "m", "tiny", seed=5).path == first.path
    assert (first.path / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rewritten
    make_checkpoint(tmp_path / "m", "tiny", seed=6)  # a different recipe rebuilds
    assert (first.path / "model.safetensors").stat().st_mtime_ns != stamp
    assert not (tmp_path / "m.partial").exists()
