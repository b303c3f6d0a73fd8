"""Async streaming benchmark client for vLLM's OpenAI `/v1/completions`.

Timing comes from the token stream, never from decoded text: random-weight checkpoints decode to empty
strings, so "first content" would be meaningless. Each streamed chunk is asked to carry its token ids
(`return_token_ids`); where a server ignores that field, a chunk counts as one token (vLLM streams one
engine step per chunk at the default stream interval) and the final `usage` block is the authority for
the total.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

DEFAULT_TIMEOUT_S = 300.0


@dataclass
class RequestResult:
    """One request, timed on the client's monotonic clock (seconds)."""

    model: str
    ok: bool
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft_s: float | None = None
    e2e_s: float = 0.0
    # Gaps between token-carrying chunks, each divided by the tokens that chunk carried.
    itl_s: list[float] = field(default_factory=list)
    error: str | None = None
    start_s: float = 0.0

    @property
    def decode_tok_s(self) -> float | None:
        """Tokens after the first over the time after the first: the per-stream decode speed."""
        if self.ttft_s is None or self.output_tokens < 2 or self.e2e_s <= self.ttft_s:
            return None
        return (self.output_tokens - 1) / (self.e2e_s - self.ttft_s)

    @property
    def e2e_tok_s(self) -> float | None:
        return self.output_tokens / self.e2e_s if self.ok and self.e2e_s > 0 else None

    def to_json(self, with_itl: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not with_itl:
            data.pop("itl_s")
        data["decode_tok_s"] = self.decode_tok_s
        data["itl_mean_s"] = statistics.fmean(self.itl_s) if self.itl_s else None
        return data


def completion_body(model: str, prompt: str, max_tokens: int, temperature: float = 0.0) -> dict[str, Any]:
    """A request whose output length is fixed, so a random-weight model does the same work a trained one does."""
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
        "ignore_eos": True,
        "min_tokens": max_tokens,
        "return_token_ids": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": False},
    }


def _chunk_tokens(choice: dict[str, Any]) -> int:
    ids = choice.get("token_ids")
    if isinstance(ids, list):
        return len(ids)
    # Old servers without token ids: one engine step per chunk; a finish-only chunk carries none.
    return 0 if choice.get("finish_reason") and not choice.get("text") else 1


async def stream_completion(
    client: httpx.AsyncClient, base_url: str, model: str, prompt: str, max_tokens: int, temperature: float = 0.0
) -> RequestResult:
    """Send one streaming completion and time it; errors are recorded, never raised."""
    result = RequestResult(model=model, ok=False)
    start = time.perf_counter()
    result.start_s = start
    last = start
    counted = 0
    usage: dict[str, Any] | None = None
    try:
        body = completion_body(model, prompt, max_tokens, temperature)
        async with client.stream("POST", f"{base_url}/v1/completions", json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                result.error = f"HTTP {response.status_code}: {text[:300]}"
                result.e2e_s = time.perf_counter() - start
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                now = time.perf_counter()
                chunk = json.loads(data)
                if chunk.get("usage"):
                    usage = chunk["usage"]
                tokens = sum(_chunk_tokens(c) for c in chunk.get("choices") or [])
                if tokens <= 0:
                    continue
                if result.ttft_s is None:
                    result.ttft_s = now - start
                else:
                    gap = (now - last) / tokens
                    result.itl_s.extend([gap] * tokens)
                counted += tokens
                last = now
        result.e2e_s = time.perf_counter() - start
        result.output_tokens = int(usage["completion_tokens"]) if usage else counted
        result.prompt_tokens = int(usage["prompt_tokens"]) if usage else 0
        result.ok = result.ttft_s is not None and result.output_tokens > 0
        if not result.ok:
            result.error = "stream carried no tokens"
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as exc:
        result.e2e_s = time.perf_counter() - start
        result.error = f"{type(exc).__name__}: {exc}"
    return result


@dataclass(frozen=True)
class Job:
    model: str
    prompt: str
    max_tokens: int
    temperature: float = 0.0


async def run_jobs(base_url: str, jobs: list[Job], concurrency: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[
        list[RequestResult], float]:
    """Run `jobs` with at most `concurrency` in flight; returns the results (job order) and the wall time."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    results: list[RequestResult | None] = [None] * len(jobs)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(jobs)):
        queue.put_nowait(i)

    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits) as client:
        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                job = jobs[i]
                results[i] = await stream_completion(client, base_url, job.model, job.prompt, job.max_tokens,
                                                     job.temperature)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(jobs)))))
        wall = time.perf_counter() - start
    return [r for r in results if r is not None], wall


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100) of `values`; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(results: list[RequestResult], wall_s: float | None = None) -> dict[str, Any]:
    """Aggregate numbers over a set of requests: counts, tok/s, and p50/p90/p99 of each latency."""
    ok = [r for r in results if r.ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    e2e = [r.e2e_s for r in ok]
    itl = [x for r in ok for x in r.itl_s]
    decode = [d for r in ok if (d := r.decode_tok_s) is not None]
    tokens = sum(r.output_tokens for r in ok)
    out: dict[str, Any] = {
        "requests": len(results),
        "ok": len(ok),
        "errors": sorted({r.error for r in results if r.error})[:5],
        "output_tokens": tokens,
        "mean_decode_tok_s": statistics.fmean(decode) if decode else None,
        "mean_e2e_tok_s": statistics.fmean([t for r in ok if (t := r.e2e_tok_s) is not None]) if ok else None,
    }
    for name, values in (("ttft_s", ttft), ("e2e_s", e2e), ("itl_s", itl)):
        out[name] = {f"p{q}": percentile(values, q) for q in (50, 90, 99)} | {
            "mean": statistics.fmean(values) if values else None}
    if wall_s is not None:
        out["wall_s"] = wall_s
        out["aggregate_tok_s"] = tokens / wall_s if wall_s > 0 else None
    return out


async def post_json(base_url: str, path: str, body: dict[str, Any], timeout_s: float = 120.0,
                    client: httpx.AsyncClient | None = None) -> tuple[int, str, float]:
    """POST a JSON body; returns (status, text, seconds). Used for the LoRA admin endpoints.

    Pass a `client` to time the request alone: a new client pays its own connection set-up, which a gateway
    holding a keep-alive connection to vLLM never does.
    """
    if client is None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s)) as own:
            return await post_json(base_url, path, body, timeout_s, own)
    start = time.perf_counter()
    response = await client.post(f"{base_url}{path}", json=body)
    return response.status_code, response.text, time.perf_counter() - start
