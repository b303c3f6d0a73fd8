"""ShareGPT reading, EXAONE rendering with assistant-only labels, packing without cross-contamination."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from exaone_lora.checkpoints import Checkpoint
from tests.training.conftest import conversations, write_jsonl
from training.cli import app
from training.data import (
    IGNORE_INDEX,
    DataError,
    block_causal_mask,
    collate,
    content_hash,
    load_corpus,
    pack_examples,
    parse_line,
    read_sharegpt,
    single_rows,
    tokenize_all,
    tokenize_conversation,
)
from training.loss import PackedAttention, loss_sum
from training.sft import SFTConfig, load_base_model, train

GOOD = json.dumps(conversations("medical")[0])
BAD_LINES = {
    2: ("{not json", "invalid JSON"),
    3: ('{"messages": []}', "missing 'conversations'"),
    4: ('{"conversations": [{"from": "bot", "value": "hi"}]}', "'from' must be one of"),
    5: ('{"conversations": [{"from": "human", "value": "  "}, {"from": "gpt", "value": "x"}]}', "empty 'value'"),
    6: ('{"conversations": [{"from": "human", "value": "a question"}]}', "last turn must be from gpt"),
    7: ("", "blank line"),
    8: ('{"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]}', "alternate"),
    10: ('{"conversations": [{"from": "human", "value": "q"}, {"from": "system", "value": "s"}, '
         '{"from": "gpt", "value": "a"}]}', "system turn may only come first"),
}


@pytest.fixture()
def bad_corpus(tmp_path: Path) -> Path:
    lines = [BAD_LINES[n][0] if n in BAD_LINES else GOOD for n in range(1, 12)]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_corpus_reports_every_bad_line_with_its_number_and_reason(bad_corpus: Path) -> None:
    corpus = read_sharegpt(bad_corpus)
    assert [p.line for p in corpus.problems] == sorted(BAD_LINES)
    for problem in corpus.problems:
        assert BAD_LINES[problem.line][1] in problem.reason, problem
    assert len(corpus.conversations) == 11 - len(BAD_LINES)  # good lines are kept, bad ones listed, none silently lost
    with pytest.raises(DataError) as info:
        load_corpus(bad_corpus)
    assert "line 2: invalid JSON" in str(info.value) and "line 10:" in str(info.value)


def test_validate_data_cli_lists_bad_lines_and_fails(bad_corpus: Path, corpora: Path) -> None:
    result = CliRunner().invoke(app, ["validate-data", str(corpora / "legal.jsonl"), str(bad_corpus)], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "ok" in result.output and "8 bad line(s)" in result.output
    assert "invalid JSON" in result.output and "last turn must be from gpt" in result.output


def test_training_refuses_a_bad_corpus_before_loading_anything(bad_corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        train(tmp_path / "no-model-needed", bad_corpus, tmp_path / "run", SFTConfig())
    assert [p.line for p in info.value.problems] == sorted(BAD_LINES)
    assert not (tmp_path / "run").exists()


def test_labels_cover_only_assistant_turns(tiny_checkpoint: Checkpoint) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint.path))
    conversation = parse_line(json.dumps({"conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "What should I know about asthma?"},
        {"from": "gpt", "value": "A short, careful answer about asthma."},
        {"from": "human", "value": "And the flu?"},
        {"from": "gpt", "value": "First check the facts, then act."},
    ]}), 1)
    example = tokenize_conversation(tokenizer, conversation, max_length=512)
    assert example is not None
    text = str(tokenizer.decode(example.input_ids))
    assert text.startswith("[|system|]Be brief.[|endofturn|]\n[|user|]What should I know about asthma?\n[|assistant|]")
    learned = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX])
    assert learned == "A short, careful answer about asthma.[|endofturn|]First check the facts, then act.[|endofturn|]"


def test_content_hash_ignores_case_and_whitespace_but_not_words() -> None:
    a = {"conversations": [{"from": "human", "value": "Hello  there"}, {"from": "gpt", "value": "Hi!"}]}
    b = {"conversations": [{"from": "human", "value": "hello there "}, {"from": "gpt", "value": "HI!"}]}
    c = {"conversations": [{"from": "human", "value": "hello there"}, {"from": "gpt", "value": "Bye!"}]}
    assert content_hash(a) == content_hash(b) != content_hash(c)


def test_packing_keeps_samples_apart_and_losses_agree(tiny_checkpoint: Checkpoint, corpora: Path) -> None:
    """A packed sample sees only itself: same logits as alone, and packed/chunked/plain losses match."""
    model, tokenizer = load_base_model(tiny_checkpoint.path, dtype=torch.float32, device="cpu")
    model.eval()
    examples, dropped = tokenize_all(tokenizer, load_corpus(corpora / "code.jsonl").conversations[:6], max_length=512)
    assert dropped == 0
    rows = pack_examples(examples, max_length=4 * max(len(e) for e in examples))
    assert len(rows) < len(examples) and max(max(r.segment_ids) for r in rows) > 1
    single = collate(single_rows(examples), tokenizer.pad_token_id)
    packed = collate(rows, tokenizer.pad_token_id)
    hooks = PackedAttention(model)
    with torch.no_grad():
        plain_sum, plain_n = loss_sum(model, single, chunked=False)
        chunk_sum, chunk_n = loss_sum(model, single, chunked=True, chunk_tokens=7)
        packed_sum, packed_n = loss_sum(model, packed, chunked=True, packed=hooks)
        # The second sample of the first packed row, run alone vs inside the pack: identical logits.
        row = rows[0]
        start = row.segment_ids.index(2)
        end = start + row.segment_ids.count(2)
        hooks.mask = None
        alone = model(input_ids=torch.tensor([row.input_ids[start:end]])).logits[0]
        hooks.mask = block_causal_mask(packed["segment_ids"][:1])
        inside = model(input_ids=packed["input_ids"][:1], position_ids=packed["position_ids"][:1]).logits[0, start:end]
    hooks.remove()
    # The first label of each packed sample is masked on purpose (no cross-sample target), so counts differ by that.
    assert plain_n == chunk_n == packed_n + sum(1 for e in examples if e.labels[1] != IGNORE_INDEX)
    assert torch.allclose(plain_sum, chunk_sum, rtol=1e-4)
    assert abs(float(packed_sum) / packed_n - float(plain_sum) / plain_n) < 0.05
    assert torch.allclose(alone, inside, atol=1e-4), "a packed sample attended to its neighbour"


def test_bad_jsonl_written_by_helper_round_trips(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", conversations("legal"))
    corpus = load_corpus(path)
    assert corpus.ok and len(corpus.conversations) == 18
    assert corpus.data_hash() == load_corpus(path).data_hash()
