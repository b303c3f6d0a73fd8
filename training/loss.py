"""Causal-LM loss as a token sum, optionally chunked so the vocabulary-wide logits never exist whole.

EXAONE's vocabulary is 102,400 words: a micro-batch of 32 × 400 tokens would need 5 GB of bf16 logits (and
twice that in fp32 for the loss). The chunked path runs the decoder, keeps only positions whose target is
a label (assistant tokens), and computes the head + cross-entropy chunk by chunk under activation
checkpointing, so at most one chunk of logits is alive at a time, forward or backward.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from training.data import IGNORE_INDEX, block_causal_mask


class PackedAttention:
    """Makes every attention layer use a block-diagonal causal mask built from the batch's segment ids.

    The EXAONE remote code builds a plain causal mask from a 2-D attention mask and takes no 4-D mask,
    so a forward pre-hook on each attention module swaps in the per-sample mask (also on the recomputed
    forward of gradient checkpointing, which calls the same modules again).
    """

    MASK_ARG = 3  # ExaoneSelfAttention.forward(hidden_states, cos, sin, mask)

    def __init__(self, model: Any):
        self.mask: torch.Tensor | None = None
        self._handles = []
        for module in model.modules():
            if type(module).__name__ != "ExaoneSelfAttention":
                continue
            params = list(inspect.signature(module.forward).parameters)
            if len(params) <= self.MASK_ARG or params[self.MASK_ARG] != "mask":
                raise ValueError("packing needs an attention module whose forward takes (hidden_states, cos, sin, mask); "
                                 f"this model's takes {params}. Train without --packing.")
            self._handles.append(module.register_forward_pre_hook(self._hook))
        if not self._handles:
            raise ValueError("packing needs EXAONE attention modules (ExaoneSelfAttention); none found. Train without --packing.")

    def _hook(self, module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if self.mask is None:
            return None
        return (*args[: self.MASK_ARG], self.mask, *args[self.MASK_ARG + 1:])

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def causal_parts(model: Any) -> tuple[Any, Any]:
    """(decoder, lm_head) of a (PEFT-wrapped) EXAONE causal LM; LoRA layers live inside them in place."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.transformer, base.get_output_embeddings()


def _ce_sum(head: Any, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def loss_sum(model: Any, batch: dict[str, torch.Tensor], *, chunked: bool, chunk_tokens: int = 1024,
             packed: PackedAttention | None = None) -> tuple[torch.Tensor, int]:
    """Sum of token cross-entropies over the batch's labelled (shifted) targets, and their count."""
    inputs = {k: batch[k] for k in ("input_ids", "position_ids")}
    labels = batch["labels"]
    if packed is not None:
        packed.mask = block_causal_mask(batch["segment_ids"])
        inputs["attention_mask"] = batch["attention_mask"]
    # Unpacked rows are right-padded: under a causal mask no real token sees a later pad, and pad positions
    # carry no label, so the 2-D mask changes no counted loss. Leaving it out lets attention run the
    # mask-free (FlashAttention) kernel in the project's and EXAONE's own modeling code.
    targets = labels[:, 1:]
    selected = targets != IGNORE_INDEX
    count = int(selected.sum())
    if not chunked:
        logits = model(**inputs).logits[:, :-1]
        return F.cross_entropy(logits[selected].float(), targets[selected], reduction="sum"), count
    decoder, head = causal_parts(model)
    hidden = decoder(**inputs).last_hidden_state[:, :-1][selected]
    flat_targets = targets[selected]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, flat_targets.numel(), chunk_tokens):
        part = slice(start, start + chunk_tokens)
        total = total + checkpoint(_ce_sum, head, hidden[part], flat_targets[part], use_reentrant=False)
    return total, count
