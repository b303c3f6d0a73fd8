"""Padding-free batches: a micro-batch's samples end to end in one row, attention kept per sample.

The claim the speed knob makes is that the maths does not change: the same samples per step, the same
labelled targets, the same loss. These tests hold the batch builder, the modeling code's per-sample
attention (its CPU path: SDPA under the block-diagonal mask the CUDA kernel implies) and the trainer to it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from exaone_lora.checkpoints import Checkpoint
from tests.training.conftest import FAST
from training.data import IGNORE_INDEX, Row, collate, collate_flat, load_corpus, pack_examples, single_rows, tokenize_all
from training.loss import loss_sum, supports_padding_free
from training.sft import SFTConfig, Trainer, load_base_model


def _row(ids: list[int], labels: list[int]) -> Row:
    return Row(ids, labels, list(range(len(ids))), [1] * len(ids))


def test_flat_batch_lays_samples_end_to_end_and_masks_each_first_label() -> None:
    rows = [_row([5, 6, 7], [IGNORE_INDEX, 6, 7]), _row([8, 9], [8, 9])]
    packed = Row([1, 2, 3, 4], [IGNORE_INDEX, 2, IGNORE_INDEX, 4], [0, 1, 0, 1], [1, 1, 2, 2])
    batch = collate_flat([*rows, packed], pad_id=0, pad_multiple=4)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 1, 2, 3, 4, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 0, 1, 0, 1, 2]]
    # The second sample's first label (8) would be the target of the first sample's last token: masked.
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9, IGNORE_INDEX, 2, IGNORE_INDEX, 4,
                                         IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]
    # Four samples (a packed row counts two), then the trailing padding as a sample of its own.
    assert batch["cu_seq_lens"].tolist() == [0, 3, 5, 7, 9, 12]
    assert batch["cu_seq_lens"].dtype == torch.int32
    assert batch["segment_ids"].tolist() == [[1, 1, 1, 2, 2, 3, 3, 4, 4, 0, 0, 0]]
    assert "attention_mask" not in batch
    # The counted targets are exactly the rows' own.
    assert int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) == sum(r.label_count for r in [*rows, packed])
    assert collate_flat(rows, pad_id=0)["input_ids"].shape == (1, 5)


def test_flat_loss_and_logits_equal_the_padded_batch(tiny_checkpoint: Checkpoint, corpora: Path) -> None:
    model, tokenizer = load_base_model(tiny_checkpoint.path, dtype=torch.float32, device="cpu")
    model.eval()
    assert supports_padding_free(model)
    examples, dropped = tokenize_all(tokenizer, load_corpus(corpora / "legal.jsonl").conversations[:5], max_length=512)
    assert dropped == 0 and len({len(e) for e in examples}) > 1
    rows = single_rows(examples)
    padded = collate(rows, tokenizer.pad_token_id)
    flat = collate_flat(rows, tokenizer.pad_token_id, pad_multiple=16)
    with torch.no_grad():
        padded_sum, padded_n = loss_sum(model, padded, chunked=False)
        flat_sum, flat_n = loss_sum(model, flat, chunked=True, chunk_tokens=9, max_sample_tokens=512)
        bounds = flat["cu_seq_lens"].tolist()
        decoder = model.transformer
        hidden = decoder(input_ids=flat["input_ids"], position_ids=flat["position_ids"],
                         cu_seq_lens_q=flat["cu_seq_lens"], max_length_q=512).last_hidden_state[0]
        for i, row in enumerate(rows):
            alone = decoder(input_ids=torch.tensor([row.input_ids])).last_hidden_state[0]
            assert torch.allclose(alone, hidden[bounds[i]:bounds[i + 1]], atol=1e-4), f"sample {i} saw a neighbour"
    assert flat_n == padded_n > 0
    assert torch.allclose(flat_sum, padded_sum, rtol=1e-4)


def test_decoder_refuses_bounds_without_a_length_bound(tiny_checkpoint: Checkpoint) -> None:
    model, _ = load_base_model(tiny_checkpoint.path, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="max_length_q"):
        model.transformer(input_ids=torch.tensor([[5, 6, 7]]), cu_seq_lens_q=torch.tensor([0, 3], dtype=torch.int32))


def test_padding_free_training_follows_the_padded_loss_curve(tiny_checkpoint: Checkpoint, corpora: Path,
                                                             tmp_path: Path) -> None:
    """Same samples per step and the same maths: without dropout (its masks depend on tensor layout) the
    loss curves agree to float precision."""
    conversations = load_corpus(corpora / "code.jsonl").conversations
    config = replace(FAST, dropout=0.0, max_steps=4, eval_fraction=0.0, micro_batch=3, grad_accum=2)
    curves = {}
    flat = replace(config, padding_free=True, pad_multiple=8)
    # ...and the chunked loss, whose gradient is made in the forward pass, follows it too.
    variants = {"padded": config, "flat": flat, "chunked": replace(flat, chunked_ce=True, ce_chunk_tokens=16)}
    for name, variant in variants.items():
        trainer = Trainer(tiny_checkpoint.path, conversations, tmp_path / name, variant, data_hash="x")
        curves[name] = [trainer.train_step().loss for _ in range(4)]
    assert curves["flat"] == pytest.approx(curves["padded"], rel=1e-4)
    assert curves["chunked"] == pytest.approx(curves["padded"], rel=1e-4)
    assert curves["flat"][-1] < curves["flat"][0]


def test_padding_free_packed_rows_keep_samples_apart(tiny_checkpoint: Checkpoint, corpora: Path) -> None:
    model, tokenizer = load_base_model(tiny_checkpoint.path, dtype=torch.float32, device="cpu")
    model.eval()
    examples, _ = tokenize_all(tokenizer, load_corpus(corpora / "medical.jsonl").conversations[:6], max_length=512)
    rows = pack_examples(examples, max_length=3 * max(len(e) for e in examples))
    assert len(rows) < len(examples)
    with torch.no_grad():
        packed_sum, packed_n = loss_sum(model, collate_flat(rows, tokenizer.pad_token_id), chunked=False)
        single_sum, single_n = loss_sum(model, collate_flat(single_rows(examples), tokenizer.pad_token_id), chunked=False)
    # Packing only regroups samples; flattened, every sample is the same span with the same bounds.
    assert packed_n == single_n
    assert torch.allclose(packed_sum, single_sum, rtol=1e-4)


def test_padding_free_config_is_checked() -> None:
    with pytest.raises(ValueError, match="pad_multiple"):
        SFTConfig(padding_free=True, max_length=64, pad_multiple=128)
    # A speed knob: resuming a run with or without it is allowed.
    assert SFTConfig(padding_free=True).fingerprint() == SFTConfig().fingerprint()


def test_compiled_padding_free_training_matches_eager(tiny_checkpoint: Checkpoint, corpora: Path, tmp_path: Path) -> None:
    """Regional compilation (one graph per decoder block, any row width) changes no loss beyond float noise."""
    conversations = load_corpus(corpora / "legal.jsonl").conversations
    config = replace(FAST, dropout=0.0, max_steps=3, eval_fraction=0.0, micro_batch=4, grad_accum=1,
                     padding_free=True, chunked_ce=True, pad_multiple=16)
    curves = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        trainer = Trainer(tiny_checkpoint.path, conversations, tmp_path / name, replace(config, torch_compile=compiled),
                          data_hash="x")
        curves[name] = [trainer.train_step().loss for _ in range(3)]
        base: Any = trainer.model.get_base_model()
        assert all((block._compiled_call_impl is not None) == compiled for block in base.transformer.h)
    assert curves["compiled"] == pytest.approx(curves["eager"], rel=1e-3)


def test_linear_cross_entropy_matches_autograd_in_value_and_gradient() -> None:
    from training.loss import LinearCrossEntropy

    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(37, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 50, (37,), generator=gen)
    fused = LinearCrossEntropy.apply(hidden, weight, targets, 8)
    (fused_grad,) = torch.autograd.grad(2.5 * fused, hidden)
    plain = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    (plain_grad,) = torch.autograd.grad(2.5 * plain, hidden)
    assert float(fused.detach()) == pytest.approx(float(plain.detach()), rel=1e-6)
    assert torch.allclose(fused_grad, plain_grad, atol=1e-6)
