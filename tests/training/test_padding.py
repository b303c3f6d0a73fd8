"""Right padding without a 2-D attention mask: the loss the trainer counts is exactly the unpadded one.

The trainer leaves the mask out for unpacked batches so attention can use its mask-free kernel; these
tests hold both the project's modeling code and the loss to that claim on the tiny checkpoint.
"""

from __future__ import annotations

import torch

from exaone_lora.checkpoints import Checkpoint
from training.data import Conversation, Turn, collate, single_rows, tokenize_all
from training.loss import loss_sum
from training.sft import load_base_model


def _rows(tokenizer: object, texts: list[tuple[str, str]]) -> list:  # type: ignore[type-arg]
    conversations = [Conversation((Turn("user", q), Turn("assistant", a))) for q, a in texts]
    examples, dropped = tokenize_all(tokenizer, conversations, max_length=256)
    assert dropped == 0
    return single_rows(examples)


def test_mask_free_right_padded_batch_has_the_per_sample_losses(tiny_checkpoint: Checkpoint) -> None:
    model, tokenizer = load_base_model(tiny_checkpoint.path, dtype=torch.float32, device="cpu")
    model.eval()
    rows = _rows(tokenizer, [("What is asthma?", "A short, careful answer about asthma: first check the facts."),
                             ("Hi", "Hello.")])
    assert len(rows[0]) != len(rows[1])  # so the batch really is padded
    pad_id = tokenizer.pad_token_id
    with torch.no_grad():
        batch_total, batch_count = loss_sum(model, collate(rows, pad_id, pad_multiple=8), chunked=False)
        alone = [loss_sum(model, collate([row], pad_id), chunked=False) for row in rows]
        chunked_total, _ = loss_sum(model, collate(rows, pad_id, pad_multiple=8), chunked=True, chunk_tokens=5)
    assert batch_count == sum(n for _, n in alone) > 0
    expected = sum(float(t) for t, _ in alone)
    assert abs(float(batch_total) - expected) < 1e-3 * expected
    assert abs(float(chunked_total) - expected) < 1e-3 * expected


def test_masked_and_mask_free_attention_agree_on_real_tokens(tiny_checkpoint: Checkpoint) -> None:
    model, tokenizer = load_base_model(tiny_checkpoint.path, dtype=torch.float32, device="cpu")
    model.eval()
    rows = _rows(tokenizer, [("Please explain civil law.", "Common questions about civil law and their answers."),
                             ("Hi", "Hello.")])
    batch = collate(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        masked = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        free = model(input_ids=batch["input_ids"]).logits
    real = batch["attention_mask"].bool()
    assert not real.all()
    assert torch.allclose(masked[real], free[real], atol=1e-4)
    # The padded positions do differ: the mask-free path is only equal where it matters.
    assert not torch.allclose(masked[~real], free[~real], atol=1e-4)
