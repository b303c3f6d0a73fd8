"""The benchmark suites, each a function of a running server, returning plain JSON-able dicts.

Sizes are parameters so the same code runs on the H100 (full sizes) and in CI against the tiny CPU
server (a handful of requests). Suites:
- test1: the seed's Test 1, sequential requests per model (base + adapters), fixed length, temperature 0.
- test2: the seed's Test 2, every model at once, several rounds; per-stream tok/s.
- quality: the seed's quality-matrix shape (domain prompts x models) with output lengths.
- saturation: fixed concurrency levels, mixed adapters vs base only: aggregate tok/s and latency quantiles.
- swap: load adapter -> first token -> unload (from local disk), and first token on an adapter that sits
  in vLLM's CPU cache but not in a GPU slot.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from benchmarks.client import Job, RequestResult, post_json, run_jobs, stream_completion, summarize
from benchmarks.client_pool import run_jobs_in_processes
from service.served import git_commit

# The seed's prompts (one per adapter domain); the text only sets the prompt length here.
DOMAIN_PROMPTS: dict[str, str] = {
    "medical": "Explain the first-line treatment for community-acquired pneumonia in adults.",
    "legal": "Summarise the key elements required to form a valid contract.",
    "customer_support": "A customer says their order arrived damaged. Draft a helpful reply.",
    "code": "Write a Python function that checks whether a string is a palindrome.",
}
GENERIC_PROMPT = "Describe the water cycle in a few sentences."


@dataclass(frozen=True)
class SuiteSizes:
    """How much work each suite does; `full()` is the H100 run, `tiny()` the CI run."""

    max_tokens: int = 128
    test1_requests: int = 15
    test2_rounds: int = 3
    quality_max_tokens: int = 256
    concurrency_levels: tuple[int, ...] = (1, 8, 32, 128, 256)
    # Requests per saturation level: max(min_requests, rounds * concurrency).
    saturation_rounds: int = 2
    saturation_min_requests: int = 16
    swap_cycles: int = 10
    warmup_requests: int = 2
    # Each saturation level is sent from min(this, concurrency) client processes (client_pool) when that is more
    # than one; one process falls behind parsing the stream at 128+ streams on an H100.
    client_processes: int = 1
    # The paired suite: base-only and mixed back to back at one concurrency, this many times, alternating
    # which goes first (a saturation level lasts seconds, and its aggregate drifts more between passes than
    # the two modes differ).
    paired_concurrency: int = 128
    paired_repeats: int = 5

    @staticmethod
    def full() -> SuiteSizes:
        return SuiteSizes()

    @staticmethod
    def tiny() -> SuiteSizes:
        return SuiteSizes(max_tokens=8, test1_requests=1, test2_rounds=1, quality_max_tokens=8,
                          concurrency_levels=(1, 2), saturation_rounds=1, saturation_min_requests=2,
                          swap_cycles=1, warmup_requests=1, paired_concurrency=2, paired_repeats=2)


@dataclass
class Target:
    """A running server and the adapters this run may load into it."""

    url: str
    base_model: str
    adapter_dirs: dict[str, str]  # domain -> adapter directory on the server's filesystem
    # Prepended to adapter names, so runs sharing one server (tests) never collide.
    name_prefix: str = ""
    loaded: list[str] = field(default_factory=list)

    @property
    def models(self) -> list[str]:
        return [self.base_model, *self.loaded]


async def load_adapter(url: str, name: str, path: str, client: httpx.AsyncClient | None = None) -> float:
    status, text, seconds = await post_json(url, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path},
                                            client=client)
    if status != 200:
        raise RuntimeError(f"load_lora_adapter {name} from {path}: HTTP {status}: {text[:300]}")
    return seconds


async def unload_adapter(url: str, name: str, client: httpx.AsyncClient | None = None) -> float:
    status, text, seconds = await post_json(url, "/v1/unload_lora_adapter", {"lora_name": name}, client=client)
    if status != 200:
        raise RuntimeError(f"unload_lora_adapter {name}: HTTP {status}: {text[:300]}")
    return seconds


async def load_domain_adapters(target: Target) -> dict[str, float]:
    """Load every domain adapter under `<name_prefix><domain>`; returns load seconds per name."""
    seconds: dict[str, float] = {}
    for domain, path in target.adapter_dirs.items():
        name = f"{target.name_prefix}{domain}"
        seconds[name] = await load_adapter(target.url, name, path)
        target.loaded.append(name)
    return seconds


async def unload_all(target: Target) -> None:
    for name in list(target.loaded):
        await unload_adapter(target.url, name)
        target.loaded.remove(name)


def prompt_for(model: str) -> str:
    """The domain prompt for an adapter served as `<prefix><domain>` or as an immutable `<domain>-vN`."""
    name = re.sub(r"-v\d+$", "", model)
    for domain, prompt in DOMAIN_PROMPTS.items():
        if name.endswith(domain):
            return prompt
    return GENERIC_PROMPT


async def warmup(target: Target, sizes: SuiteSizes) -> None:
    jobs = [Job(m, prompt_for(m), sizes.max_tokens) for m in target.models for _ in range(sizes.warmup_requests)]
    await run_jobs(target.url, jobs, concurrency=1)


async def suite_test1(target: Target, sizes: SuiteSizes) -> dict[str, Any]:
    """Sequential requests per model; the ratio of each adapter's decode speed to the base's."""
    per_model: dict[str, Any] = {}
    for model in target.models:
        jobs = [Job(model, prompt_for(model), sizes.max_tokens) for _ in range(sizes.test1_requests)]
        results, wall = await run_jobs(target.url, jobs, concurrency=1)
        per_model[model] = summarize(results, wall)
    base = per_model[target.base_model]["mean_decode_tok_s"] or 0.0
    lora = [per_model[m]["mean_decode_tok_s"] or 0.0 for m in target.loaded]
    return {
        "max_tokens": sizes.max_tokens,
        "requests_per_model": sizes.test1_requests,
        "per_model": per_model,
        "base_decode_tok_s": base,
        "lora_decode_tok_s_mean": sum(lora) / len(lora) if lora else None,
        "lora_over_base": (sum(lora) / len(lora)) / base if lora and base else None,
    }


async def suite_test2(target: Target, sizes: SuiteSizes) -> dict[str, Any]:
    """Every model at once (one stream each), `rounds` times; per-stream decode speed."""
    rounds: list[dict[str, Any]] = []
    for _ in range(sizes.test2_rounds):
        jobs = [Job(m, prompt_for(m), sizes.max_tokens) for m in target.models]
        results, wall = await run_jobs(target.url, jobs, concurrency=len(jobs))
        rounds.append({
            "wall_s": wall,
            "per_model": {r.model: {"decode_tok_s": r.decode_tok_s, "ttft_s": r.ttft_s, "ok": r.ok,
                                    "output_tokens": r.output_tokens} for r in results},
            "summary": summarize(results, wall),
        })
    streams = [v["decode_tok_s"] for rnd in rounds for v in rnd["per_model"].values() if v["decode_tok_s"]]
    return {"max_tokens": sizes.max_tokens, "rounds": rounds,
            "per_stream_decode_tok_s_min": min(streams) if streams else None,
            "per_stream_decode_tok_s_max": max(streams) if streams else None}


async def suite_quality(target: Target, sizes: SuiteSizes) -> dict[str, Any]:
    """The seed's quality matrix shape: each domain prompt to each model, output length and timing.

    With random weights the text says nothing; what is kept is that every cell answered and how long it took.
    """
    cells = []
    for domain, prompt in DOMAIN_PROMPTS.items():
        for model in target.models:
            results, _ = await run_jobs(target.url, [Job(model, prompt, sizes.quality_max_tokens)], concurrency=1)
            r = results[0]
            cells.append({"prompt_domain": domain, "model": model, "ok": r.ok, "output_tokens": r.output_tokens,
                          "ttft_s": r.ttft_s, "e2e_s": r.e2e_s, "error": r.error})
    return {"max_tokens": sizes.quality_max_tokens, "cells": cells,
            "all_ok": all(c["ok"] for c in cells)}


async def suite_saturation(target: Target, sizes: SuiteSizes) -> dict[str, Any]:
    """Aggregate tok/s and latency quantiles at each concurrency, mixed adapters vs base only."""
    modes: dict[str, list[str]] = {"base_only": [target.base_model]}
    if target.loaded:
        modes["mixed_adapters"] = list(target.loaded)
    out: dict[str, Any] = {"max_tokens": sizes.max_tokens, "levels": list(sizes.concurrency_levels), "modes": {}}
    for mode, models in modes.items():
        out["modes"][mode] = [await _saturation_level(target, models, conc, sizes)
                              for conc in sizes.concurrency_levels]
    if "mixed_adapters" in out["modes"]:
        out["mixed_over_base"] = {
            str(b["concurrency"]): (m["aggregate_tok_s"] / b["aggregate_tok_s"]) if b["aggregate_tok_s"] else None
            for b, m in zip(out["modes"]["base_only"], out["modes"]["mixed_adapters"], strict=True)
        }
    return out


def _level_requests(sizes: SuiteSizes, conc: int) -> int:
    return max(sizes.saturation_min_requests, sizes.saturation_rounds * conc)


async def _saturation_level(target: Target, models: list[str], conc: int, sizes: SuiteSizes) -> dict[str, Any]:
    """One level: max(min_requests, rounds x conc) requests cycling over `models`, `conc` in flight."""
    n = _level_requests(sizes, conc)
    jobs = [Job(models[i % len(models)], prompt_for(models[i % len(models)]), sizes.max_tokens) for i in range(n)]
    processes = min(sizes.client_processes, conc)
    if processes > 1:
        shares = [(target.url, jobs[p::processes]) for p in range(processes)]
        level = await asyncio.to_thread(run_jobs_in_processes, shares, conc // processes)
    else:
        results, wall = await run_jobs(target.url, jobs, concurrency=conc)
        level = summarize(results, wall)
    return {"concurrency": conc, **level}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def _spread(values: list[float | None]) -> dict[str, float] | None:
    """Median and range of the pairs that produced a ratio (a level whose requests all failed has none)."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return {"median": statistics.median(present), "min": min(present), "max": max(present)}


async def suite_paired(target: Target, sizes: SuiteSizes) -> dict[str, Any]:
    """Mixed adapters vs base only at one concurrency, as `paired_repeats` back-to-back pairs alternating which
    mode goes first: each ratio compares two levels run seconds apart, and the spread shows the noise."""
    if not target.loaded:
        raise ValueError("the paired suite needs loaded adapters")
    conc = sizes.paired_concurrency
    modes = {"base_only": [target.base_model], "mixed_adapters": list(target.loaded)}
    pairs: list[dict[str, Any]] = []
    aggregate: list[float | None] = []
    itl: list[float | None] = []
    for repeat in range(sizes.paired_repeats):
        order = ["base_only", "mixed_adapters"] if repeat % 2 == 0 else ["mixed_adapters", "base_only"]
        pair = {mode: await _saturation_level(target, modes[mode], conc, sizes) for mode in order}
        base, mixed = pair["base_only"], pair["mixed_adapters"]
        aggregate.append(_ratio(mixed["aggregate_tok_s"], base["aggregate_tok_s"]))
        # A step's cost: base-only ITL over mixed ITL (above 1 would mean mixed steps are faster).
        itl.append(_ratio((base.get("itl_s") or {}).get("p50"), (mixed.get("itl_s") or {}).get("p50")))
        pairs.append({"first": order[0], **pair, "aggregate_ratio": aggregate[-1], "itl_p50_ratio": itl[-1]})
    return {"concurrency": conc, "requests_per_level": _level_requests(sizes, conc),
            "pairs": pairs, "aggregate_ratio": _spread(aggregate), "itl_p50_ratio": _spread(itl)}


async def suite_swap(target: Target, sizes: SuiteSizes, max_loras: int) -> dict[str, Any]:
    """Swap latency: load from local disk -> first token -> unload, and first token from the CPU cache tier."""
    paths = list(target.adapter_dirs.values())
    cycles: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0)) as client:
        # One untimed cycle first: the first load of a session pays one-off set-up on both sides.
        await load_adapter(target.url, f"swap-{os.getpid()}-warm", paths[0], client)
        await stream_completion(client, target.url, f"swap-{os.getpid()}-warm", GENERIC_PROMPT, 1)
        await unload_adapter(target.url, f"swap-{os.getpid()}-warm", client)
        for i in range(sizes.swap_cycles):
            name = f"swap-{os.getpid()}-{i}"
            start = time.perf_counter()
            load_s = await load_adapter(target.url, name, paths[i % len(paths)], client)
            first = await stream_completion(client, target.url, name, GENERIC_PROMPT, 1)
            swap_s = time.perf_counter() - start
            unload_s = await unload_adapter(target.url, name, client)
            cycles.append({"load_s": load_s, "first_token_s": first.ttft_s, "load_plus_first_token_s": swap_s,
                           "unload_s": unload_s, "ok": first.ok, "error": first.error})

        # CPU tier: more adapters than GPU slots, requested round robin, so each request needs a slot swap
        # from the CPU cache (no disk read). Compared with the base's TTFT measured the same way.
        names = [f"cpu-{os.getpid()}-{i}" for i in range(max_loras + 2)]
        for i, name in enumerate(names):
            await load_adapter(target.url, name, paths[i % len(paths)])
        try:
            for name in names:  # first use moves them in once; not timed
                await stream_completion(client, target.url, name, GENERIC_PROMPT, 1)
            cpu_tier: list[RequestResult] = []
            base: list[RequestResult] = []
            for i in range(sizes.swap_cycles):
                cpu_tier.append(await stream_completion(client, target.url, names[i % len(names)], GENERIC_PROMPT, 1))
                base.append(await stream_completion(client, target.url, target.base_model, GENERIC_PROMPT, 1))
        finally:
            for name in names:
                await unload_adapter(target.url, name)
    ok = [c for c in cycles if c["ok"]]
    return {
        "cycles": cycles,
        "disk": summarize_values([c["load_plus_first_token_s"] for c in ok]),
        "disk_load_only": summarize_values([c["load_s"] for c in ok]),
        "cpu_tier_first_token": summarize_values([r.ttft_s for r in cpu_tier if r.ttft_s is not None]),
        "base_first_token": summarize_values([r.ttft_s for r in base if r.ttft_s is not None]),
        "cpu_tier_adapters": len(names),
        "max_loras": max_loras,
    }


def summarize_values(values: list[float]) -> dict[str, float | int | None]:
    from benchmarks.client import percentile

    return {"n": len(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values) if values else None}


SUITES = ("test1", "test2", "quality", "saturation", "paired", "swap")


async def run_suites(target: Target, sizes: SuiteSizes, suites: tuple[str, ...] = SUITES,
                     max_loras: int = 4) -> dict[str, Any]:
    """Load the domain adapters, run the chosen suites, unload; returns {suite: result, ...}."""
    unknown = set(suites) - set(SUITES)
    if unknown:
        raise ValueError(f"unknown suites {sorted(unknown)}; known: {', '.join(SUITES)}")
    out: dict[str, Any] = {}
    out["adapter_load_s"] = await load_domain_adapters(target)
    try:
        await warmup(target, sizes)
        for name in suites:
            start = time.perf_counter()
            if name == "test1":
                out[name] = await suite_test1(target, sizes)
            elif name == "test2":
                out[name] = await suite_test2(target, sizes)
            elif name == "quality":
                out[name] = await suite_quality(target, sizes)
            elif name == "saturation":
                out[name] = await suite_saturation(target, sizes)
            elif name == "paired":
                out[name] = await suite_paired(target, sizes)
            else:
                out[name] = await suite_swap(target, sizes, max_loras)
            out[name]["suite_wall_s"] = time.perf_counter() - start
            print(f"suite {name} done in {out[name]['suite_wall_s']:.1f}s", flush=True)
    finally:
        await unload_all(target)
    return out


def server_version(url: str) -> str | None:
    try:
        return str(httpx.get(f"{url}/version", timeout=10).json().get("version"))
    except (httpx.HTTPError, ValueError):
        return None


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        return out or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "none (CPU)"


def metadata(url: str, server_argv: list[str], variant: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What every result file carries, so a number can always be traced to the config that produced it."""
    return {
        "variant": variant,
        "server_argv": server_argv,
        "vllm_version": server_version(url),
        "gpu": gpu_name(),
        "git_commit": git_commit(),
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }


def run_all(target: Target, sizes: SuiteSizes, server_argv: list[str], variant: str,
            suites: tuple[str, ...] = SUITES, max_loras: int = 4, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Synchronous entry point: metadata plus every suite's results."""
    result = {"meta": metadata(target.url, server_argv, variant, extra)}
    result["suites"] = asyncio.run(run_suites(target, sizes, suites, max_loras))
    return result
