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
