"""Adapter validation: everything that is checked before an adapter reaches vLLM.

vLLM itself accepted an adapter with NaN weights, one whose `peft_type` was not LoRA, and followed a
symlink out of the adapter directory, so this module trusts nothing: it reads the safetensors header
itself (bounded, no pickle, no torch), checks every tensor name against the base model's real layers and
shapes, and scans every value for NaN/Inf with numpy. Each failure is its own exception class with a
stable `.code` and a message naming the file or tensor.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exaone_lora.model_shape import ALL_LINEAR_MODULES, ATTENTION_MODULES, ModelShape
from exaone_lora.spec import ALIAS_PATTERN
from service.manifest import (
    ADAPTER_FILES,
    CONFIG_FILE,
    FILE_NAME_PATTERN,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    AdapterManifest,
    FileDigest,
    file_digest,
)

# Extensions of formats that unpickle (run code) when loaded; refused anywhere in the adapter directory.
PICKLE_SUFFIXES: tuple[str, ...] = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
# What an adapter directory may hold: the two adapter files, the registry's manifest, and the README PEFT writes.
ALLOWED_FILES = frozenset({*ADAPTER_FILES, MANIFEST_FILE, "README.md"})
# Files that carry extra vocabulary (PEFT writes these when tokens were added during training).
EXTRA_VOCAB_FILES: tuple[str, ...] = ("new_embeddings.safetensors", "added_tokens.json")
ALLOWED_DTYPES: dict[str, str] = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_CONFIG_BYTES = 1024 * 1024
# Tensor-name parts that mean the adapter resizes or replaces the embeddings / output head.
_VOCAB_PARTS = ("wte", "embed_tokens", "lm_head", "lora_embedding_A", "lora_embedding_B", "input_embeddings",
                "output_embeddings", "trainable_tokens")
_LORA_KEY = re.compile(
    r"^base_model\.model\.transformer\.h\.(?P<layer>\d+)\.(?P<owner>attn\.attention|mlp)\.(?P<module>[A-Za-z0-9_]+)"
    r"\.lora_(?P<ab>[AB])\.weight$"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# ---------------------------------------------------------------- errors


class AdapterValidationError(ValueError):
    """An adapter refused before it reaches vLLM. `.code` is stable (scripts and tests match on it)."""

    code = "invalid-adapter"

    def __init__(self, message: str, *, path: str | None = None, tensor: str | None = None) -> None:
        super().__init__(f"[{self.code}] {message}")
        self.message = message
        self.path = path
        self.tensor = tensor


class NotPeftError(AdapterValidationError):
    code = "not-peft"


class BadConfigError(AdapterValidationError):
    code = "bad-config"


class NotLoraError(AdapterValidationError):
    code = "not-lora"


class UnsupportedFeatureError(AdapterValidationError):
    code = "unsupported-feature"


class PickleFileError(AdapterValidationError):
    code = "pickle-file"


class SymlinkError(AdapterValidationError):
    code = "symlink"


class SpecialFileError(AdapterValidationError):
    code = "special-file"


class BadNameError(AdapterValidationError):
    code = "bad-name"


class RankTooHighError(AdapterValidationError):
    code = "rank-too-high"


class UnknownModuleError(AdapterValidationError):
    code = "unknown-module"


class UnknownLayerError(AdapterValidationError):
    code = "unknown-layer"


class ShapeMismatchError(AdapterValidationError):
    code = "shape-mismatch"


class MissingTensorError(AdapterValidationError):
    code = "missing-tensor"


class ModulesToSaveError(AdapterValidationError):
    code = "modules-to-save"


class ExtraVocabError(AdapterValidationError):
    code = "extra-vocab"


class BadDtypeError(AdapterValidationError):
    code = "bad-dtype"


class TruncatedSafetensorsError(AdapterValidationError):
    code = "truncated-safetensors"


class BadSafetensorsError(AdapterValidationError):
    code = "bad-safetensors"


class UnexpectedFileError(AdapterValidationError):
    code = "unexpected-file"


class NanWeightsError(AdapterValidationError):
    code = "nan-weights"


class ChecksumMismatchError(AdapterValidationError):
    code = "checksum-mismatch"


class ManifestMismatchError(AdapterValidationError):
    code = "manifest-mismatch"


ERROR_CLASSES: tuple[type[AdapterValidationError], ...] = tuple(AdapterValidationError.__subclasses__())


class BaseConfigError(ValueError):
    """The base model config given to the validator is unusable (a caller error, not the adapter's)."""


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class ValidatedAdapter:
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    dtype: str
    files: dict[str, FileDigest] = field(default_factory=dict)
    tensor_count: int = 0
    layers: tuple[int, ...] = ()


# ---------------------------------------------------------------- names


def check_name(value: object, what: str = "name") -> str:
    """A domain/alias name: refuses path tricks (`..`, `/`, absolute paths, control characters) by name."""
    if not isinstance(value, str) or not value:
        raise BadNameError(f"{what} must be a non-empty string, got {value!r}")
    if _CONTROL.search(value):
        raise BadNameError(f"{what} {value!r} contains control characters")
    if ".." in value or "/" in value or "\\" in value or value.startswith(("~", ".")) or os.path.isabs(value):
        raise BadNameError(f"{what} {value!r} is a path, not a name (no '..', '/', '\\', leading '.' or '~')")
    if not ALIAS_PATTERN.fullmatch(value):
        raise BadNameError(f"{what} {value!r} must be lower-case letters, digits or '_', starting with a letter (max 40)")
    return value


def check_version(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadNameError(f"version must be an integer >= 1, got {value!r}")
    return value


def check_file_name(value: str) -> str:
    if _CONTROL.search(value) or ".." in value or "/" in value or "\\" in value or not FILE_NAME_PATTERN.fullmatch(value):
        raise BadNameError(f"file name {value!r} is not a plain file name", path=value)
    return value


# ---------------------------------------------------------------- base model


def model_shape_from(base_config: Path | str | dict[str, Any] | ModelShape) -> ModelShape:
    """A ModelShape from a config.json path (or the model directory holding it), a config dict or a ModelShape."""
    if isinstance(base_config, ModelShape):
        return base_config
    if isinstance(base_config, (str, Path)):
        path = Path(base_config)
        if path.is_dir():
            path = path / "config.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BaseConfigError(f"cannot read the base model config {path}: {exc}") from None
    elif isinstance(base_config, dict):
        config = base_config
    else:
        raise BaseConfigError(f"base_config must be a config.json path, a dict or a ModelShape, not {type(base_config)}")
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        return ModelShape(
            name=str(config.get("_name_or_path") or config.get("model_type") or "base"),
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            num_layers=int(config.get("num_layers", config.get("num_hidden_layers"))),
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads", heads)),
            intermediate_size=int(config["intermediate_size"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BaseConfigError(f"the base model config lacks or mangles {exc}") from None


# ---------------------------------------------------------------- directory


def _scan_dir(root: Path) -> dict[str, Path]:
    """Every entry under `root`, refusing symlinks, special files and pickle files; returns top-level regular files."""
    top: dict[str, Path] = {}
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in [*dirnames, *filenames]:
            path = here / name
            rel = path.relative_to(root).as_posix()
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                target = os.readlink(path)
                raise SymlinkError(f"{rel} is a symlink (-> {target}); adapters must be plain files inside the directory",
                                   path=rel)
            if _CONTROL.search(name):
                raise BadNameError(f"file name {rel!r} contains control characters", path=rel)
            if stat.S_ISDIR(info.st_mode):
                continue
            if not stat.S_ISREG(info.st_mode):
                raise SpecialFileError(f"{rel} is not a regular file (device, fifo or socket)", path=rel)
            if not path.resolve().is_relative_to(real_root):
                raise SymlinkError(f"{rel} resolves outside the adapter directory", path=rel)
            if name.lower().endswith(PICKLE_SUFFIXES):
                raise PickleFileError(f"{rel} is a pickle-format file; only safetensors weights are accepted "
                                      "(re-save with safetensors and remove it)", path=rel)
            if name in EXTRA_VOCAB_FILES:
                raise ExtraVocabError(f"{rel} adds vocabulary; adapters must not change the base model's vocabulary",
                                      path=rel)
            if here != root or name not in ALLOWED_FILES:
                # Code or data beside the weights (a .py, a tokenizer, a nested folder) would reach every host.
                raise UnexpectedFileError(f"{rel} is not part of a LoRA adapter; the directory may hold only "
                                          f"{', '.join(sorted(ALLOWED_FILES))}", path=rel)
            top[name] = path
    return top


# ---------------------------------------------------------------- adapter_config.json


@dataclass(frozen=True)
class _Config:
    rank: int
    alpha: float
    target_modules: tuple[str, ...]


def _read_config(path: Path, max_rank: int) -> _Config:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise BadConfigError(f"{CONFIG_FILE} is larger than {MAX_CONFIG_BYTES} bytes", path=CONFIG_FILE)
    try:
        config = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadConfigError(f"{CONFIG_FILE} is not valid JSON: {exc}", path=CONFIG_FILE) from None
    if not isinstance(config, dict):
        raise BadConfigError(f"{CONFIG_FILE} must hold a JSON object", path=CONFIG_FILE)
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise NotLoraError(f"{CONFIG_FILE}: peft_type is {peft_type!r}; only 'LORA' adapters are served", path=CONFIG_FILE)
    if config.get("modules_to_save"):
        raise ModulesToSaveError(f"{CONFIG_FILE}: modules_to_save={config['modules_to_save']!r} would replace full base "
                                 "modules; vLLM serves LoRA deltas only", path=CONFIG_FILE)
    if config.get("trainable_token_indices"):
        raise ExtraVocabError(f"{CONFIG_FILE}: trainable_token_indices changes embeddings", path=CONFIG_FILE)
    for flag in ("use_dora", "use_qalora"):
        if config.get(flag):
            raise UnsupportedFeatureError(f"{CONFIG_FILE}: {flag}=true is not supported by vLLM", path=CONFIG_FILE)
    if config.get("bias", "none") not in ("none", None):
        raise UnsupportedFeatureError(f"{CONFIG_FILE}: bias={config['bias']!r}; only bias='none' is served",
                                      path=CONFIG_FILE)
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise UnsupportedFeatureError(f"{CONFIG_FILE}: {key} (per-module ranks) is not supported; use one rank",
                                          path=CONFIG_FILE)
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise BadConfigError(f"{CONFIG_FILE}: r must be a positive integer, got {rank!r}", path=CONFIG_FILE)
    if rank > max_rank:
        raise RankTooHighError(f"{CONFIG_FILE}: rank {rank} exceeds the server's max LoRA rank {max_rank}",
                               path=CONFIG_FILE)
    alpha = config.get("lora_alpha", rank)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise BadConfigError(f"{CONFIG_FILE}: lora_alpha must be a positive number, got {alpha!r}", path=CONFIG_FILE)
    modules = config.get("target_modules")
    if modules == "all-linear":
        modules = list(ALL_LINEAR_MODULES)
    if isinstance(modules, str) or not isinstance(modules, list) or not modules:
        raise UnknownModuleError(f"{CONFIG_FILE}: target_modules must be a non-empty list of module names "
                                 f"(regular expressions cannot be checked), got {modules!r}", path=CONFIG_FILE)
    unknown = [m for m in modules if m not in ALL_LINEAR_MODULES]
    if unknown:
        raise UnknownModuleError(f"{CONFIG_FILE}: target_modules {unknown!r} are not EXAONE linear modules "
                                 f"({', '.join(ALL_LINEAR_MODULES)})", path=CONFIG_FILE)
    return _Config(rank=rank, alpha=float(alpha), target_modules=tuple(m for m in ALL_LINEAR_MODULES if m in modules))


# ---------------------------------------------------------------- safetensors


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def read_safetensors_header(path: Path, label: str = WEIGHTS_FILE) -> list[TensorInfo]:
    """Parse a safetensors header without trusting it: sizes, offsets and dtypes are checked against the file."""
    file_size = path.stat().st_size
    if file_size < 8:
        raise TruncatedSafetensorsError(f"{label} is {file_size} bytes, shorter than the 8-byte header length",
                                        path=label)
    with path.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if header_len > MAX_HEADER_BYTES:
            raise BadSafetensorsError(f"{label} declares a {header_len}-byte header (limit {MAX_HEADER_BYTES})", path=label)
        if 8 + header_len > file_size:
            raise TruncatedSafetensorsError(f"{label} declares a {header_len}-byte header but the file has only "
                                            f"{file_size - 8} bytes after the length", path=label)
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadSafetensorsError(f"{label} has an unreadable header: {exc}", path=label) from None
    if not isinstance(header, dict):
        raise BadSafetensorsError(f"{label} header is not a JSON object", path=label)
    data_size = file_size - 8 - header_len
    tensors: list[TensorInfo] = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise BadSafetensorsError(f"{label}: __metadata__ must map strings to strings", path=label)
            continue
        tensors.append(_tensor_info(name, entry, label, data_size))
    if not tensors:
        raise BadSafetensorsError(f"{label} holds no tensors", path=label)
    # safetensors requires the data section to be covered exactly, without gaps or overlaps.
    position = 0
    for info in sorted(tensors, key=lambda t: (t.begin, t.end)):
        if info.begin != position:
            raise BadSafetensorsError(f"{label}: tensor {info.name} starts at {info.begin}, expected {position} "
                                      "(overlapping or gapped data)", path=label, tensor=info.name)
        position = info.end
    if position != data_size:
        raise BadSafetensorsError(f"{label}: tensors cover {position} bytes of a {data_size}-byte data section",
                                  path=label)
    return tensors


def _tensor_info(name: str, entry: Any, label: str, data_size: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise BadSafetensorsError(f"{label}: entry of tensor {name} is not an object", path=label, tensor=name)
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadSafetensorsError(f"{label}: tensor {name} has an invalid shape {shape!r}", path=label, tensor=name)
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]):
        raise BadSafetensorsError(f"{label}: tensor {name} has invalid data_offsets {offsets!r}", path=label, tensor=name)
    if dtype not in ALLOWED_DTYPES:
        raise BadDtypeError(f"{label}: tensor {name} has dtype {dtype!r}; allowed: {', '.join(ALLOWED_DTYPES)}",
                            path=label, tensor=name)
    begin, end = offsets
    if end > data_size:
        raise TruncatedSafetensorsError(f"{label}: tensor {name} ends at byte {end} of the data section, which has "
                                        f"only {data_size} bytes", path=label, tensor=name)
    expected = math.prod(shape) * np.dtype(ALLOWED_DTYPES[dtype]).itemsize
    if end - begin != expected:
        raise BadSafetensorsError(f"{label}: tensor {name} spans {end - begin} bytes, its shape {shape} in {dtype} needs "
                                  f"{expected}", path=label, tensor=name)
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _tensor_values(path: Path, tensors: list[TensorInfo]) -> Iterator[tuple[TensorInfo, np.ndarray]]:
    with path.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
    data_start = 8 + header_len
    if path.stat().st_size == data_start:
        return
    # A read-only memory map: tensors are checked without copying the file into memory.
    mapped = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start)
    for info in tensors:
        yield info, mapped[info.begin:info.end].view(ALLOWED_DTYPES[info.dtype])


def non_finite_count(info: TensorInfo, values: np.ndarray) -> int:
    if info.dtype == "BF16":
        # bfloat16 has no numpy dtype: all exponent bits set (0x7F80) means Inf or NaN.
        return int(np.count_nonzero((values & 0x7F80) == 0x7F80))
    return int(values.size - np.count_nonzero(np.isfinite(values)))


# ---------------------------------------------------------------- tensors vs the base model


def _check_tensors(tensors: list[TensorInfo], shape: ModelShape, config: _Config) -> tuple[int, ...]:
    seen: dict[tuple[int, str], set[str]] = {}
    for info in tensors:
        name = info.name
        if _CONTROL.search(name):
            raise BadNameError(f"tensor name {name!r} contains control characters", path=WEIGHTS_FILE, tensor=name)
        parts = name.split(".")
        if any(part in _VOCAB_PARTS for part in parts):
            raise ExtraVocabError(f"{WEIGHTS_FILE}: tensor {name} touches the embeddings / output head (extra "
                                  "vocabulary); served adapters must keep the base model's vocabulary",
                                  path=WEIGHTS_FILE, tensor=name)
        if "modules_to_save" in parts or "original_module" in parts:
            raise ModulesToSaveError(f"{WEIGHTS_FILE}: tensor {name} is a modules_to_save copy of a base module",
                                     path=WEIGHTS_FILE, tensor=name)
        match = _LORA_KEY.match(name)
        if match is None:
            if "lora_A" not in parts and "lora_B" not in parts:
                raise ModulesToSaveError(f"{WEIGHTS_FILE}: tensor {name} is not a LoRA matrix (a full module weight "
                                         "or bias saved with the adapter)", path=WEIGHTS_FILE, tensor=name)
            raise UnknownModuleError(f"{WEIGHTS_FILE}: tensor {name} does not name an EXAONE linear module "
                                     "(expected base_model.model.transformer.h.<i>.<attn.attention|mlp>.<module>"
                                     ".lora_<A|B>.weight)", path=WEIGHTS_FILE, tensor=name)
        layer, owner, module, ab = int(match["layer"]), match["owner"], match["module"], match["ab"]
        if module not in ALL_LINEAR_MODULES:
            raise UnknownModuleError(f"{WEIGHTS_FILE}: tensor {name}: {module!r} is not an EXAONE linear module",
                                     path=WEIGHTS_FILE, tensor=name)
        expected_owner = "attn.attention" if module in ATTENTION_MODULES else "mlp"
        if owner != expected_owner:
            raise UnknownModuleError(f"{WEIGHTS_FILE}: tensor {name}: {module} lives under {expected_owner}, not {owner}",
                                     path=WEIGHTS_FILE, tensor=name)
        if module not in config.target_modules:
            raise UnknownModuleError(f"{WEIGHTS_FILE}: tensor {name}: {module} is not in target_modules "
                                     f"{list(config.target_modules)}", path=WEIGHTS_FILE, tensor=name)
        if match["layer"] != str(layer) or layer >= shape.num_layers:
            raise UnknownLayerError(f"{WEIGHTS_FILE}: tensor {name}: layer {match['layer']} does not exist (the base "
                                    f"model has {shape.num_layers} layers)", path=WEIGHTS_FILE, tensor=name)
        fan_in, fan_out = shape.linear_shape(module)
        expected = (config.rank, fan_in) if ab == "A" else (fan_out, config.rank)
        if info.shape != expected:
            raise ShapeMismatchError(f"{WEIGHTS_FILE}: tensor {name} has shape {list(info.shape)}, the base model and "
                                     f"rank {config.rank} need {list(expected)}", path=WEIGHTS_FILE, tensor=name)
        seen.setdefault((layer, module), set()).add(ab)
    for (layer, module), pair in sorted(seen.items()):
        if pair != {"A", "B"}:
            missing = ({"A", "B"} - pair).pop()
            raise MissingTensorError(f"{WEIGHTS_FILE}: layer {layer} {module} has lora_{pair.pop()} but no lora_{missing}",
                                     path=WEIGHTS_FILE)
    return tuple(sorted({layer for layer, _ in seen}))


# ---------------------------------------------------------------- manifest


def _check_manifest(manifest: AdapterManifest, files: dict[str, Path]) -> dict[str, FileDigest]:
    digests: dict[str, FileDigest] = {}
    for filename, expected in manifest.files.items():
        check_file_name(filename)
        if filename not in files:
            raise ManifestMismatchError(f"the manifest of {manifest.name} lists {filename}, which is missing", path=filename)
        actual = file_digest(files[filename])
        if actual.size != expected.size:
            raise ChecksumMismatchError(f"{filename} is {actual.size} bytes, the manifest of {manifest.name} says "
                                        f"{expected.size}", path=filename)
        if actual.sha256 != expected.sha256:
            raise ChecksumMismatchError(f"{filename} has sha256 {actual.sha256}, the manifest of {manifest.name} says "
                                        f"{expected.sha256}", path=filename)
        digests[filename] = actual
    return digests


# ---------------------------------------------------------------- entry point


def validate_adapter(
    adapter_dir: Path | str,
    *,
    base_config: Path | str | dict[str, Any] | ModelShape,
    max_rank: int,
    manifest: AdapterManifest | None = None,
) -> ValidatedAdapter:
    """Check a PEFT LoRA adapter directory against the base model and the server's limits.

    Raises an `AdapterValidationError` subclass on the first problem. Nothing is imported from torch and
    nothing is unpickled. With `manifest`, every file's size and sha256 must match it.
    """
    shape = model_shape_from(base_config)
    root = Path(adapter_dir)
    if not root.is_dir():
        raise NotPeftError(f"{root} is not a directory", path=str(root))
    files = _scan_dir(root)
    missing = [name for name in ADAPTER_FILES if name not in files]
    if missing:
        raise NotPeftError(f"{root} lacks {', '.join(missing)} (a PEFT adapter has {' and '.join(ADAPTER_FILES)})",
                           path=missing[0])
    # The manifest's checksums go first: a corrupted download is reported as such, not as whatever it broke.
    config_digests: dict[str, FileDigest] = {}
    if manifest is not None:
        config_digests = _check_manifest(manifest, files)
    config = _read_config(files[CONFIG_FILE], max_rank)
    if manifest is not None and (manifest.rank, sorted(manifest.target_modules)) != (config.rank, sorted(config.target_modules)):
        raise ManifestMismatchError(f"the manifest of {manifest.name} says rank {manifest.rank} on "
                                    f"{sorted(manifest.target_modules)}, {CONFIG_FILE} says rank {config.rank} on "
                                    f"{sorted(config.target_modules)}", path=CONFIG_FILE)
    tensors = read_safetensors_header(files[WEIGHTS_FILE])
    layers = _check_tensors(tensors, shape, config)
    dtypes = sorted({t.dtype for t in tensors})
    if len(dtypes) > 1:
        raise BadDtypeError(f"{WEIGHTS_FILE} mixes dtypes {dtypes}; save every LoRA matrix in one dtype", path=WEIGHTS_FILE)
    for info, values in _tensor_values(files[WEIGHTS_FILE], tensors):
        bad = non_finite_count(info, values)
        if bad:
            raise NanWeightsError(f"{WEIGHTS_FILE}: tensor {info.name} has {bad} NaN/Inf values", path=WEIGHTS_FILE,
                                  tensor=info.name)
    digests = config_digests or {name: file_digest(files[name]) for name in ADAPTER_FILES}
    return ValidatedAdapter(rank=config.rank, alpha=config.alpha, target_modules=config.target_modules, dtype=dtypes[0],
                            files=digests, tensor_count=len(tensors), layers=layers)


__all__ = [
    "ERROR_CLASSES",
    "MANIFEST_FILE",
    "AdapterValidationError",
    "BadConfigError",
    "BadDtypeError",
    "BadNameError",
    "BadSafetensorsError",
    "BaseConfigError",
    "ChecksumMismatchError",
    "ExtraVocabError",
    "ManifestMismatchError",
    "MissingTensorError",
    "ModulesToSaveError",
    "NanWeightsError",
    "NotLoraError",
    "NotPeftError",
    "PickleFileError",
    "RankTooHighError",
    "ShapeMismatchError",
    "SpecialFileError",
    "SymlinkError",
    "TruncatedSafetensorsError",
    "UnknownLayerError",
    "UnknownModuleError",
    "UnsupportedFeatureError",
    "ValidatedAdapter",
    "check_file_name",
    "check_name",
    "check_version",
    "model_shape_from",
    "read_safetensors_header",
    "validate_adapter",
]
