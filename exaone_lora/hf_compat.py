"""The fix EXAONE's remote code needs under transformers 5.x, applied the same way to the real and test models."""

from __future__ import annotations

from typing import Any


def fix_input_embeddings(model: Any) -> Any:
    """Give an EXAONE model the `get_input_embeddings` transformers 5.x cannot derive for it.

    transformers 5 raises NotImplementedError for `ExaoneModel` (its embedding is `wte`, not
    `embed_tokens`); PEFT calls it while checking tied weights, so every PEFT load needs this first.
    """
    embeddings = model.transformer.wte
    model.get_input_embeddings = lambda: embeddings
    model.transformer.get_input_embeddings = lambda: embeddings
    return model


class RotaryNotInitialised(RuntimeError):
    """A rotary-embedding buffer holds memory transformers never filled."""


def check_rotary_buffers(model: Any) -> None:
    """Refuse a model whose RoPE inverse frequencies look uninitialised.

    transformers 5 builds a remote-code model on the meta device and loads only the checkpoint's tensors;
    a non-persistent `inv_freq` buffer is re-filled only for rotary modules it recognises, otherwise it is
    left as whatever memory held (this project's own stand-in had that bug). Every RoPE variant in use
    keeps the first frequency at 1 (theta ** 0) and all of them in (0, 1], so anything else is refused
    before a single training step encodes positions with garbage.
    """
    import torch

    for name, buffer in model.named_buffers():
        if not name.endswith("inv_freq") or buffer.numel() == 0:
            continue
        values = buffer.detach().float().cpu()
        if not (torch.isfinite(values).all() and (values > 0).all() and (values <= 1).all()
                and abs(float(values[0]) - 1.0) < 1e-6):
            raise RotaryNotInitialised(
                f"{name} does not hold RoPE inverse frequencies (first values {values[:4].tolist()}): transformers "
                "left it uninitialised when it loaded this remote code; recompute it after loading (as the "
                "stand-in modeling code does in forward) before training or scoring with this model")
