"""Causal-LM loss as a token sum, optionally chunked so the vocabulary-wide logits never exist whole.

EXAONE's vocabulary is 102,400 words: a micro-batch of 32 × 400 tokens would need 5 GB of bf16 logits (and
twice that in fp32 for the loss). The chunked path runs the decoder, keeps only positions whose target is
a label (assistant tokens), and computes the head + cross-entropy chunk by chunk, so at most one chunk of
logits is alive at a time: for the usual frozen head with the gradient made in the same pass
(`LinearCrossEntropy`), for a trained head under activation checkpointing.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from training.data import block_causal_mask, label_positions


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


def supports_padding_free(model: Any) -> bool:
    """Whether the decoder takes sample bounds (`cu_seq_lens_q`, `max_length_q`) for one flattened row.

    The project's EXAONE-shaped modeling code does; EXAONE's published remote code does not.
    """
    decoder, _ = causal_parts(model)
    params = inspect.signature(decoder.forward).parameters
    return "cu_seq_lens_q" in params and "max_length_q" in params


def causal_parts(model: Any) -> tuple[Any, Any]:
    """(decoder, lm_head) of a (PEFT-wrapped) EXAONE causal LM; LoRA layers live inside them in place."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.transformer, base.get_output_embeddings()


def _ce_sum(head: Any, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


class LinearCrossEntropy(torch.autograd.Function):
    """sum(cross_entropy(hidden @ weight.T, targets)) for a frozen head, chunk by chunk, gradient made in forward.

    Each chunk's logits exist once: its loss and its gradient with respect to `hidden` (softmax - one-hot,
    times the head) are computed together and only that gradient is kept for backward, so nothing is
    recomputed and no logits are stored. Exact for a loss used linearly (the trainer's token sum, scaled).
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,  # type: ignore[override]
                chunk_tokens: int) -> torch.Tensor:
        hidden = hidden.to(weight.dtype)
        total = hidden.new_zeros((), dtype=torch.float32)
        grad = torch.empty_like(hidden)
        for start in range(0, hidden.shape[0], chunk_tokens):
            part = slice(start, start + chunk_tokens)
            logits = (hidden[part] @ weight.T).float()
            log_norm = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, targets[part, None]).squeeze(1)
            total += (log_norm - picked).sum()
            probs = logits.sub_(log_norm[:, None]).exp_()
            probs[torch.arange(probs.shape[0], device=probs.device), targets[part]] -= 1.0
            grad[part] = probs.to(weight.dtype) @ weight
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * grad_total.to(grad.dtype), None, None, None


def loss_sum(model: Any, batch: dict[str, torch.Tensor], *, chunked: bool, chunk_tokens: int = 1024,
             packed: PackedAttention | None = None, max_sample_tokens: int | None = None) -> tuple[torch.Tensor, int]:
    """Sum of token cross-entropies over the batch's labelled (shifted) targets, and their count.

    For a padding-free batch, `max_sample_tokens` bounds one sample's length (the attention kernel sizes its
    grid by it); pass a constant such as the training max_length so a compiled model never sees a new value.
    Without it, the batch's longest sample is used.
    """
    inputs: dict[str, Any] = {k: batch[k] for k in ("input_ids", "position_ids")}
    labels = batch["labels"]
    if "cu_seq_lens" in batch:  # a padding-free batch (`collate_flat`): attention per sample by its bounds
        inputs["cu_seq_lens_q"] = batch["cu_seq_lens"]
        inputs["max_length_q"] = max_sample_tokens or int(batch["cu_seq_lens"].diff().max())
    elif packed is not None:
        packed.mask = block_causal_mask(batch["segment_ids"])
        inputs["attention_mask"] = batch["attention_mask"]
    # Unpacked rows are right-padded: under a causal mask no real token sees a later pad, and pad positions
    # carry no label, so the 2-D mask changes no counted loss. Leaving it out lets attention run the
    # mask-free (FlashAttention) kernel in the project's and EXAONE's own modeling code.
    # Targets by flat position, made on the host by `collate`: selecting them by a boolean mask on the GPU
    # would make the host wait for the whole forward before it could queue the loss and the backward.
    positions = batch["label_positions"] if "label_positions" in batch else label_positions(labels)
    count = positions.numel()
    flat_targets = labels.reshape(-1)[positions]
    predictors = positions - 1  # the token before each target predicts it
    if not chunked:
        logits = model(**inputs).logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1])[predictors].float(), flat_targets,
                               reduction="sum"), count
    decoder, head = causal_parts(model)
    last = decoder(**inputs).last_hidden_state
    hidden = last.reshape(-1, last.shape[-1])[predictors]
    frozen_head = type(head) is torch.nn.Linear and head.bias is None and not head.weight.requires_grad
    if frozen_head and torch.is_grad_enabled():
        return LinearCrossEntropy.apply(hidden, head.weight, flat_targets, chunk_tokens), count
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, count, chunk_tokens):
        part = slice(start, start + chunk_tokens)
        if torch.is_grad_enabled():
            # A trained head (+embeddings) needs its own gradient too: recompute each chunk in backward.
            total = total + checkpoint(_ce_sum, head, hidden[part], flat_targets[part], use_reentrant=False)
        else:
            total = total + _ce_sum(head, hidden[part], flat_targets[part])
    return total, count
