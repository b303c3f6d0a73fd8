"""The validator refuses each broken adapter of the corpus with its own error class and code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exaone_lora.checkpoints import Checkpoint
from exaone_lora.model_shape import EXAONE_TINY
from service.manifest import build_manifest
from service.validation import (
    ALLOWED_FILES,
    ERROR_CLASSES,
    AdapterValidationError,
    BadNameError,
    BaseConfigError,
    ChecksumMismatchError,
    check_name,
    read_safetensors_header,
    validate_adapter,
)
from tests.support.corpus import CorpusCase, build_corpus, to_bf16

MAX_RANK = 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CorpusCase]:
    return build_corpus(tmp_path_factory.mktemp("corpus"), EXAONE_TINY)


def _invalid(corpus: dict[str, CorpusCase]) -> list[str]:
    return [name for name, case in corpus.items() if case.code is not None]


BROKEN = [
    "wrong_rank", "unknown_module", "unknown_module_tensor", "pickle_file", "truncated_safetensors", "truncated_header",
    "offsets_beyond_file", "checksum_mismatch", "extra_vocab", "extra_vocab_lm_head", "extra_vocab_file",
    "modules_to_save", "modules_to_save_tensor", "nan_weights", "inf_weights_bf16", "nan_weights_f16", "not_lora",
    "not_lora_loha", "symlink_escape", "shape_mismatch", "shape_mismatch_rank", "unknown_layer", "missing_tensor",
    "bad_dtype", "dora", "not_peft", "bad_config",
]


def test_corpus_lists_every_broken_case(corpus: dict[str, CorpusCase]) -> None:
    assert sorted(BROKEN) == sorted(n for n in _invalid(corpus) if corpus[n].domain == "medical")


@pytest.mark.parametrize("name", BROKEN)
def test_broken_adapter_is_refused_with_its_own_code(corpus: dict[str, CorpusCase], tiny_checkpoint: Checkpoint,
                                                     name: str) -> None:
    case = corpus[name]
    with pytest.raises(AdapterValidationError) as caught:
        validate_adapter(case.path, base_config=tiny_checkpoint.path, max_rank=MAX_RANK, manifest=case.manifest)
    error = caught.value
    assert error.code == case.code, f"{name}: {error}"
    # One class per code, and the message names the file or tensor at fault.
    assert type(error).code == case.code and type(error) is not AdapterValidationError
    assert str(error).startswith(f"[{case.code}]")
    assert error.path or error.tensor, f"{name}: {error} names no file or tensor"


def test_each_code_has_one_class() -> None:
    codes = [cls.code for cls in ERROR_CLASSES]
    assert len(codes) == len(set(codes))
    for required in ("not-peft", "pickle-file", "rank-too-high", "unknown-module", "shape-mismatch", "modules-to-save",
                     "extra-vocab", "checksum-mismatch", "truncated-safetensors", "bad-name", "symlink", "nan-weights",
                     "not-lora"):
        assert required in codes


@pytest.mark.parametrize("name", ["valid", "valid_bf16", "valid_attention_only"])
def test_valid_adapter_passes(corpus: dict[str, CorpusCase], name: str) -> None:
    result = validate_adapter(corpus[name].path, base_config=EXAONE_TINY, max_rank=MAX_RANK)
    assert result.rank == 8 and result.alpha == 16.0
    assert result.dtype == ("BF16" if name == "valid_bf16" else "F32")
    assert set(result.files) == {"adapter_config.json", "adapter_model.safetensors"}
    assert result.layers == (0, 1)


def test_factory_adapter_passes_with_every_base_config_form(tiny_checkpoint: Checkpoint,
                                                            tiny_adapters: dict[str, Path]) -> None:
    config_path = tiny_checkpoint.path / "config.json"
    forms: list[object] = [tiny_checkpoint.path, config_path, json.loads(config_path.read_text()), tiny_checkpoint.shape]
    for form in forms:
        result = validate_adapter(tiny_adapters["medical"], base_config=form, max_rank=MAX_RANK)  # type: ignore[arg-type]
        assert result.rank == 8 and len(result.target_modules) == 7 and result.tensor_count == 2 * 7 * 2


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_torch_written_half_precision_adapters_pass(tiny_checkpoint: Checkpoint, tmp_path: Path, dtype: str) -> None:
    from exaone_lora.checkpoints import make_adapter

    adapter = make_adapter(tiny_checkpoint, tmp_path / dtype, rank=4, modules=("q_proj", "c_proj"), dtype=dtype)
    result = validate_adapter(adapter, base_config=tiny_checkpoint.path, max_rank=8)
    assert result.dtype == {"bfloat16": "BF16", "float16": "F16"}[dtype]
    assert result.target_modules == ("q_proj", "c_proj") and result.rank == 4


def test_manifest_match_passes_and_size_change_is_refused(tiny_adapters: dict[str, Path], tmp_path: Path) -> None:
    manifest = build_manifest(tiny_adapters["legal"], "legal", 1, EXAONE_TINY.name, "0" * 40)
    assert validate_adapter(tiny_adapters["legal"], base_config=EXAONE_TINY, max_rank=8, manifest=manifest).files == \
        manifest.files
    copy = tmp_path / "legal"
    copy.mkdir()
    for name in manifest.files:
        (copy / name).write_bytes((tiny_adapters["legal"] / name).read_bytes())
    with (copy / "adapter_config.json").open("a") as handle:
        handle.write("\n")
    with pytest.raises(ChecksumMismatchError, match=r"adapter_config\.json"):
        validate_adapter(copy, base_config=EXAONE_TINY, max_rank=8, manifest=manifest)


def test_rank_limit_is_the_servers(corpus: dict[str, CorpusCase]) -> None:
    # The same rank-16 adapter is fine on a server started with --max-lora-rank 16.
    assert validate_adapter(corpus["wrong_rank"].path, base_config=EXAONE_TINY, max_rank=16).rank == 16


@pytest.mark.parametrize("name", ["../medical", "/etc", "med/ical", "medical\n", "..", ".hidden", "", "Medical", "a\x00b",
                                  "~root", "med\\ical"])
def test_names_with_path_tricks_are_refused(name: str) -> None:
    with pytest.raises(BadNameError) as caught:
        check_name(name, "domain")
    assert caught.value.code == "bad-name"


def test_good_names_pass() -> None:
    for name in ("medical", "customer_support", "code", "a1"):
        assert check_name(name) == name


def test_bf16_nan_detection_reads_exponent_bits() -> None:
    values = np.array([1.0, -2.5, np.inf, -np.inf, np.nan, 0.0], dtype="<f4")
    bits = to_bf16(values)
    assert [bool((b & 0x7F80) == 0x7F80) for b in bits] == [False, False, True, True, True, False]


def test_header_parser_reports_tensors(corpus: dict[str, CorpusCase]) -> None:
    tensors = read_safetensors_header(corpus["valid"].path / "adapter_model.safetensors")
    assert len(tensors) == 2 * 7 * 2
    assert {t.dtype for t in tensors} == {"F32"}


def test_unusable_base_config_is_a_caller_error(corpus: dict[str, CorpusCase], tmp_path: Path) -> None:
    with pytest.raises(BaseConfigError):
        validate_adapter(corpus["valid"].path, base_config=tmp_path / "missing.json", max_rank=8)
    with pytest.raises(BaseConfigError):
        validate_adapter(corpus["valid"].path, base_config={"hidden_size": 128}, max_rank=8)


def test_corpus_writer_matches_the_safetensors_library(corpus: dict[str, CorpusCase]) -> None:
    # The hand-written files must be real safetensors, or the corpus would test the writer, not the validator.
    from safetensors import safe_open

    path = corpus["valid"].path / "adapter_model.safetensors"
    ours = {t.name: t.shape for t in read_safetensors_header(path)}
    with safe_open(str(path), framework="numpy") as handle:
        theirs = {name: tuple(handle.get_tensor(name).shape) for name in handle.keys()}  # noqa: SIM118
    assert ours == theirs


NAME_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="/\\")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(alphabet=NAME_CHARS, min_size=1, max_size=24), nested=st.booleans())
def test_anything_beside_the_adapter_files_is_refused(corpus: dict[str, CorpusCase], tmp_path_factory: Any,
                                                      name: str, nested: bool) -> None:
    """Only the two adapter files, the manifest and PEFT's README may sit in an adapter directory: a `.py`, a
    tokenizer or a nested folder would otherwise travel to every host next to the weights."""
    if name in (".", "..") or (not nested and name in ALLOWED_FILES):
        return
    adapter = tmp_path_factory.mktemp("extra") / "adapter"
    shutil.copytree(corpus["valid"].path, adapter)
    target = adapter / "sub" / name if nested else adapter / name
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(b"import os\n")
    with pytest.raises(AdapterValidationError) as err:
        validate_adapter(adapter, base_config=EXAONE_TINY, max_rank=MAX_RANK)
    assert err.value.code in ("unexpected-file", "pickle-file", "extra-vocab", "bad-name"), err.value


def test_a_manifest_listing_a_file_beyond_the_adapter_is_refused(corpus: dict[str, CorpusCase]) -> None:
    from service.manifest import manifest_bytes, parse_manifest

    good = build_manifest(corpus["valid"].path, "medical", 1, EXAONE_TINY.name, "0" * 40)
    document = json.loads(manifest_bytes(good))
    assert parse_manifest(json.dumps(document)) == good
    document["files"]["evil.py"] = {"sha256": "0" * 64, "size": 1}
    with pytest.raises(ValueError, match=r"files lists evil\.py"):
        parse_manifest(json.dumps(document))
