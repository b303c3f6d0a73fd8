"""What a served model makes of a fixed prompt, for comparing two servers of the same weights."""

from __future__ import annotations

import httpx


def prompt_logprobs(url: str, model: str, headers: dict[str, str] | None = None) -> list[float]:
    """Log-probabilities of a fixed prompt's own tokens: no sampling choice, so two servers can be compared."""
    body = {"model": model, "prompt": "What should I know about asthma? Please explain.", "max_tokens": 1,
            "temperature": 0, "echo": True, "logprobs": 1}
    response = httpx.post(f"{url}/v1/completions", json=body, headers=headers or {}, timeout=120)
    assert response.status_code == 200, response.text
    values = response.json()["choices"][0]["logprobs"]["token_logprobs"]
    return [v for v in values[:-1] if v is not None]


def max_difference(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b) > 3, (a, b)
    return max(abs(x - y) for x, y in zip(a, b, strict=True))
