"""A corpus of broken (and valid) LoRA adapters, one per validation error, for any test to import.

`build_corpus(out_dir, shape)` writes every case with numpy only (no torch) and its own tiny safetensors
writer, which can also write the malformed files the real library would refuse to produce. Each case says
which error code the validator must raise; `domain` is the name a publish would use (the `../` case is a
good adapter under a bad name) and `manifest` the manifest its files are checked against.

    cases = build_corpus(tmp_path, EXAONE_TINY)
    for case in cases.values(): ... case.path, case.code (None for the valid ones)
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from exaone_lora.checkpoints.factory import adapter_config, linear_module_path
from exaone_lora.model_shape import ALL_LINEAR_MODULES, ModelShape
from service.manifest import AdapterManifest, build_manifest

RANK = 8
Tensors = dict[str, tuple[str, np.ndarray]]  # name -> (safetensors dtype, values; BF16 as raw uint16)


@dataclass(frozen=True)
class CorpusCase:
    name: str
    path: Path
    code: str | None  # the AdapterValidationError code expected; None: the adapter is valid
    domain: str = "medical"
    manifest: AdapterManifest | None = None
    note: str = ""


def to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (round to nearest even), as uint16; NaN stays NaN."""
    bits = values.astype("<f4").view("<u4")
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded).astype("<u2")


def lora_tensors(shape: ModelShape, rank: int = RANK, modules: tuple[str, ...] = ALL_LINEAR_MODULES, seed: int = 1,
                 dtype: str = "F32") -> Tensors:
    rng = np.random.default_rng(seed)
    tensors: Tensors = {}
    for layer in range(shape.num_layers):
        for module in modules:
            fan_in, fan_out = shape.linear_shape(module)
            key = f"base_model.model.{linear_module_path(layer, module)}"
            a = (rng.standard_normal((rank, fan_in)) / fan_in**0.5).astype("<f4")
            b = (rng.standard_normal((fan_out, rank)) * 0.05).astype("<f4")
            tensors[f"{key}.lora_A.weight"] = _cast(a, dtype)
            tensors[f"{key}.lora_B.weight"] = _cast(b, dtype)
    return tensors


def _cast(values: np.ndarray, dtype: str) -> tuple[str, np.ndarray]:
    if dtype == "BF16":
        return "BF16", to_bf16(values)
    numpy_dtype = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}[dtype]
    return dtype, values.astype(numpy_dtype)


def write_safetensors(path: Path, tensors: Tensors, header_overrides: dict[str, dict[str, object]] | None = None) -> None:
    """The safetensors format by hand: 8-byte header length, JSON header, raw little-endian data."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs: list[bytes] = []
    offset = 0
    for name, (dtype, values) in tensors.items():
        data = np.ascontiguousarray(values).tobytes()
        entry: dict[str, object] = {"dtype": dtype, "shape": list(values.shape), "data_offsets": [offset, offset + len(data)]}
        entry.update((header_overrides or {}).get(name, {}))
        header[name] = entry
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the reference writer pads the header to 8 bytes
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def write_adapter(out: Path, shape: ModelShape, *, rank: int = RANK, modules: tuple[str, ...] = ALL_LINEAR_MODULES,
                  dtype: str = "F32", seed: int = 1, config_changes: dict[str, object] | None = None,
                  tensor_changes: Callable[[Tensors], None] | None = None,
                  header_overrides: dict[str, dict[str, object]] | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    tensors = lora_tensors(shape, rank, modules, seed, dtype)
    if tensor_changes:
        tensor_changes(tensors)
    write_safetensors(out / "adapter_model.safetensors", tensors, header_overrides)
    config = adapter_config("exaone-tiny", rank, modules) | (config_changes or {})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out


def _key(layer: int, module: str, ab: str) -> str:
    return f"base_model.model.{linear_module_path(layer, module)}.lora_{ab}.weight"


def build_corpus(out_dir: Path, shape: ModelShape) -> dict[str, CorpusCase]:
    """Write every case under `out_dir` (one directory each) and return them by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cases: list[CorpusCase] = []

    def add(name: str, code: str | None, note: str, **kwargs: object) -> Path:
        path = write_adapter(out_dir / name, shape, **kwargs)  # type: ignore[arg-type]
        cases.append(CorpusCase(name, path, code, note=note))
        return path

    add("valid", None, "rank 8 on all seven modules, float32")
    add("valid_bf16", None, "rank 8, bfloat16", dtype="BF16")
    add("valid_attention_only", None, "rank 8 on q/k/v/out only", modules=("q_proj", "k_proj", "v_proj", "out_proj"))
    add("wrong_rank", "rank-too-high", "rank 16 on a server whose max rank is 8", rank=16)
    add("unknown_module", "unknown-module", "target_modules names gate_proj (a Llama module)",
        config_changes={"target_modules": [*ALL_LINEAR_MODULES, "gate_proj"]})

    def llama_tensor(tensors: Tensors) -> None:
        tensors["base_model.model.transformer.h.0.mlp.gate_proj.lora_A.weight"] = _cast(np.zeros((RANK, 8), "<f4"), "F32")
    add("unknown_module_tensor", "unknown-module", "a tensor for gate_proj the config does not list",
        tensor_changes=llama_tensor)

    pickle_dir = add("pickle_file", "pickle-file", "training_args.bin next to the weights")
    (pickle_dir / "training_args.bin").write_bytes(b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00.")

    truncated = add("truncated_safetensors", "truncated-safetensors", "the weights file cut in half")
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    header_cut = add("truncated_header", "truncated-safetensors", "header length larger than the file")
    (header_cut / "adapter_model.safetensors").write_bytes(struct.pack("<Q", 4096) + b'{"a":')
    first = _key(0, "q_proj", "A")
    add("offsets_beyond_file", "truncated-safetensors", "a tensor's data_offsets point past the end of the file",
        header_overrides={first: {"data_offsets": [0, 10**9]}})

    checksum = add("checksum_mismatch", "checksum-mismatch", "a file changed after its manifest was built")
    manifest = build_manifest(checksum, "medical", 1, shape.name, "0" * 40, created_at=datetime(2026, 1, 1, tzinfo=UTC))
    config = json.loads((checksum / "adapter_config.json").read_text())
    config["lora_dropout"] = 0.0
    (checksum / "adapter_config.json").write_text(json.dumps(config, indent=2))
    cases[-1] = CorpusCase("checksum_mismatch", checksum, "checksum-mismatch", manifest=manifest, note=cases[-1].note)

    dotdot = add("bad_name", "bad-name", "a valid adapter published under the domain '../medical'")
    cases[-1] = CorpusCase("bad_name", dotdot, "bad-name", domain="../medical", note=cases[-1].note)

    def vocab(tensors: Tensors) -> None:
        tensors["base_model.model.transformer.wte.lora_embedding_A"] = _cast(np.zeros((RANK, shape.vocab_size + 16), "<f4"),
                                                                             "F32")
        tensors["base_model.model.transformer.wte.lora_embedding_B"] = _cast(np.zeros((shape.hidden_size, RANK), "<f4"),
                                                                             "F32")
    add("extra_vocab", "extra-vocab", "LoRA on the (resized) token embeddings", tensor_changes=vocab)

    def lm_head(tensors: Tensors) -> None:
        tensors["base_model.model.lm_head.weight"] = _cast(np.zeros((shape.vocab_size + 16, shape.hidden_size), "<f4"), "F32")
    add("extra_vocab_lm_head", "extra-vocab", "a resized lm_head saved with the adapter", tensor_changes=lm_head)
    vocab_file = add("extra_vocab_file", "extra-vocab", "added_tokens.json next to the adapter")
    (vocab_file / "added_tokens.json").write_text(json.dumps({"<|medical|>": shape.vocab_size}))

    add("modules_to_save", "modules-to-save", "modules_to_save=['lm_head'] in the config",
        config_changes={"modules_to_save": ["lm_head"]})

    def full_weight(tensors: Tensors) -> None:
        tensors["base_model.model.transformer.h.0.ln_1.weight"] = _cast(np.ones((shape.hidden_size,), "<f4"), "F32")
    add("modules_to_save_tensor", "modules-to-save", "a full layer-norm weight saved with the adapter",
        tensor_changes=full_weight)

    def nan_f32(tensors: Tensors) -> None:
        dtype, values = tensors[_key(1, "c_proj", "B")]
        values = values.copy()
        values[3, 2] = np.nan
        tensors[_key(1, "c_proj", "B")] = (dtype, values)
    add("nan_weights", "nan-weights", "one NaN in a float32 lora_B", tensor_changes=nan_f32)

    def inf_bf16(tensors: Tensors) -> None:
        dtype, values = tensors[_key(0, "v_proj", "A")]
        values = values.copy()
        values[0, 0] = 0x7F80  # +Inf in bfloat16
        tensors[_key(0, "v_proj", "A")] = (dtype, values)
    add("inf_weights_bf16", "nan-weights", "one +Inf in a bfloat16 lora_A", dtype="BF16", tensor_changes=inf_bf16)

    def nan_f16(tensors: Tensors) -> None:
        dtype, values = tensors[_key(0, "q_proj", "B")]
        values = values.copy()
        values[-1, -1] = np.nan
        tensors[_key(0, "q_proj", "B")] = (dtype, values)
    add("nan_weights_f16", "nan-weights", "one NaN in a float16 lora_B", dtype="F16", tensor_changes=nan_f16)

    add("not_lora", "not-lora", "peft_type IA3", config_changes={"peft_type": "IA3"})
    add("not_lora_loha", "not-lora", "peft_type LOHA", config_changes={"peft_type": "LOHA"})

    outside = out_dir / "outside-weights"
    outside.mkdir(exist_ok=True)
    link = add("symlink_escape", "symlink", "adapter_model.safetensors is a symlink out of the directory")
    shutil.move(link / "adapter_model.safetensors", outside / "adapter_model.safetensors")
    (link / "adapter_model.safetensors").symlink_to(Path("..") / "outside-weights" / "adapter_model.safetensors")

    def wrong_shape(tensors: Tensors) -> None:
        dtype, values = tensors[_key(0, "k_proj", "B")]
        tensors[_key(0, "k_proj", "B")] = (dtype, np.zeros((values.shape[0] * 2, values.shape[1]), values.dtype))
    add("shape_mismatch", "shape-mismatch", "k_proj lora_B with twice the base model's out_features",
        tensor_changes=wrong_shape)
    add("shape_mismatch_rank", "shape-mismatch", "tensors of rank 4 under a config that says rank 8",
        config_changes={"r": 8}, rank=4)

    def extra_layer(tensors: Tensors) -> None:
        fan_in, fan_out = shape.linear_shape("q_proj")
        tensors[_key(shape.num_layers, "q_proj", "A")] = _cast(np.zeros((RANK, fan_in), "<f4"), "F32")
        tensors[_key(shape.num_layers, "q_proj", "B")] = _cast(np.zeros((fan_out, RANK), "<f4"), "F32")
    add("unknown_layer", "unknown-layer", "tensors for a layer past the base model's last", tensor_changes=extra_layer)

    def drop_b(tensors: Tensors) -> None:
        del tensors[_key(1, "out_proj", "B")]
    add("missing_tensor", "missing-tensor", "a lora_A without its lora_B", tensor_changes=drop_b)
    add("bad_dtype", "bad-dtype", "float64 tensors", dtype="F64")
    add("dora", "unsupported-feature", "use_dora=true", config_changes={"use_dora": True})

    not_peft = add("not_peft", "not-peft", "only adapter_config.json, no weights")
    (not_peft / "adapter_model.safetensors").unlink()
    garbage = add("bad_config", "bad-config", "adapter_config.json is not JSON")
    (garbage / "adapter_config.json").write_text("{peft_type: LORA")
    return {case.name: case for case in cases}


__all__ = ["RANK", "CorpusCase", "build_corpus", "lora_tensors", "to_bf16", "write_adapter", "write_safetensors"]
