"""EXAONE-shaped checkpoints with random weights, for tests (tiny) and GPU benchmarks (full 2.4B shape).

Nothing is downloaded: config keys, parameter names, tokenizer specials and chat template are EXAONE
3.5's own, the weights are random. Decode speed does not depend on weight values when the output length
is forced, so the full-size checkpoint measures serving speed exactly as the real model would.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from exaone_lora.checkpoints.tokenizer import BOS, EOS, PAD, token_id, write_tokenizer
from exaone_lora.model_shape import ALL_LINEAR_MODULES, SHAPES, ModelShape

REMOTE_CODE = Path(__file__).parent / "remote_code"
SHARD_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    shape: ModelShape


def config_dict(shape: ModelShape, bos: int, eos: int, pad: int) -> dict[str, object]:
    return {
        "architectures": ["ExaoneForCausalLM"],
        "model_type": "exaone",
        "auto_map": {
            "AutoConfig": "configuration_exaone.ExaoneConfig",
            "AutoModelForCausalLM": "modeling_exaone.ExaoneForCausalLM",
        },
        "activation_function": "silu",
        "attention_dropout": 0.0,
        "embed_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "head_dim": shape.head_dim,
        "hidden_size": shape.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": shape.intermediate_size,
        "layer_norm_epsilon": shape.layer_norm_epsilon,
        "max_position_embeddings": shape.max_position_embeddings,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "num_layers": shape.num_layers,
        "rope_scaling": None,
        "rope_theta": shape.rope_theta,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": shape.vocab_size,
    }


def parameter_shapes(shape: ModelShape) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Every tensor of the checkpoint with its real EXAONE name, in file order."""
    yield "transformer.wte.weight", (shape.vocab_size, shape.hidden_size)
    for i in range(shape.num_layers):
        prefix = f"transformer.h.{i}"
        yield f"{prefix}.ln_1.weight", (shape.hidden_size,)
        for module in ALL_LINEAR_MODULES:
            fan_in, fan_out = shape.linear_shape(module)
            owner = "attn.attention" if module in ("q_proj", "k_proj", "v_proj", "out_proj") else "mlp"
            yield f"{prefix}.{owner}.{module}.weight", (fan_out, fan_in)
        yield f"{prefix}.ln_2.weight", (shape.hidden_size,)
    yield "transformer.ln_f.weight", (shape.hidden_size,)
    if not shape.tie_word_embeddings:
        yield "lm_head.weight", (shape.vocab_size, shape.hidden_size)


def linear_module_path(layer: int, module: str) -> str:
    owner = "attn.attention" if module in ("q_proj", "k_proj", "v_proj", "out_proj") else "mlp"
    return f"transformer.h.{layer}.{owner}.{module}"


def make_checkpoint(out_dir: Path | str, size: str = "tiny", seed: int = 0, device: str = "cpu",
                    overwrite: bool = False) -> Checkpoint:
    """Write a HF-format EXAONE checkpoint; re-running with the same arguments reuses a complete one."""
    import torch
    from safetensors.torch import save_file

    shape = SHAPES[size]
    out = Path(out_dir)
    marker = out / ".factory.json"
    recipe = {"size": size, "seed": seed, "shape": shape.name}
    if marker.exists() and not overwrite and json.loads(marker.read_text()) == recipe:
        _refresh_remote_code(out)
        return Checkpoint(out, shape)
    # Build next to the target and rename, so an interrupted run never leaves a half checkpoint.
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write_tokenizer(staging, vocab_size=min(shape.vocab_size, 2048), model_max_length=shape.max_position_embeddings)
    ids = {tok: token_id(staging, tok) for tok in (BOS, EOS, PAD)}
    (staging / "config.json").write_text(json.dumps(config_dict(shape, ids[BOS], ids[EOS], ids[PAD]), indent=2))
    generation = {"bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD]}
    (staging / "generation_config.json").write_text(json.dumps(generation, indent=2))
    for name in ("configuration_exaone.py", "modeling_exaone.py"):
        shutil.copy(REMOTE_CODE / name, staging / name)

    generator = torch.Generator(device=device).manual_seed(seed)
    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for name, dims in parameter_shapes(shape):
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            tensor = torch.ones(dims, dtype=torch.bfloat16, device=device)
        else:
            tensor = torch.randn(dims, generator=generator, device=device, dtype=torch.float32)
            tensor = tensor.mul_(0.02).to(torch.bfloat16)
        size_bytes = tensor.numel() * 2
        if shard_bytes and shard_bytes + size_bytes > SHARD_BYTES:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = tensor.cpu()
        shard_bytes += size_bytes
    _save_shards(staging, shards, save_file)
    marker_tmp = staging / ".factory.json"
    marker_tmp.write_text(json.dumps(recipe))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return Checkpoint(out, shape)


def _refresh_remote_code(out: Path) -> None:
    """A reused checkpoint gets this version's modeling code (weights do not depend on it); atomic per file."""
    for name in ("configuration_exaone.py", "modeling_exaone.py"):
        current = (REMOTE_CODE / name).read_bytes()
        target = out / name
        if not target.is_file() or target.read_bytes() != current:
            staging = target.with_name(name + ".partial")
            staging.write_bytes(current)
            staging.replace(target)


def _save_shards(out: Path, shards: list[dict], save_file) -> None:  # type: ignore[type-arg, no-untyped-def]
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards, start=1):
        filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / filename), metadata={"format": "pt"})
        for name, tensor in shard.items():
            weight_map[name] = filename
            total += tensor.numel() * tensor.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def make_adapter(
    base: Checkpoint,
    out_dir: Path | str,
    rank: int = 8,
    modules: tuple[str, ...] = ALL_LINEAR_MODULES,
    seed: int = 1,
    alpha: int | None = None,
    dtype: str = "float32",
    scale: float = 0.05,
) -> Path:
    """Write a PEFT-layout LoRA adapter for `base` whose B matrices are non-zero (it changes outputs)."""
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(base.shape.num_layers):
        for module in modules:
            fan_in, fan_out = base.shape.linear_shape(module)
            key = f"base_model.model.{linear_module_path(layer, module)}"
            lora_a = torch.randn(rank, fan_in, generator=generator) / fan_in**0.5
            lora_b = torch.randn(fan_out, rank, generator=generator) * scale
            tensors[f"{key}.lora_A.weight"] = lora_a.to(torch_dtype).contiguous()
            tensors[f"{key}.lora_B.weight"] = lora_b.to(torch_dtype).contiguous()
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(adapter_config(str(base.path), rank, modules, alpha), indent=2))
    return out


def adapter_config(base_path: str, rank: int, modules: tuple[str, ...] | list[str], alpha: int | None = None,
                   dropout: float = 0.05) -> dict[str, object]:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_path,
        "r": rank,
        "lora_alpha": alpha if alpha is not None else 2 * rank,
        "lora_dropout": dropout,
        "target_modules": list(modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
        "layers_to_transform": None,
        "revision": None,
    }
