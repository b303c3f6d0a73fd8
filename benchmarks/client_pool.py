"""Load from several client processes at once.

One Python process cannot parse more than ~13k stream chunks/s (docs/benchmarks.md), so at 128+ streams a
single-process client measures itself. Each share runs in its own spawned process (a fork would inherit the
caller's running event loop); all shares wait for one common start time, so process start-up is not part of
the measured span. Aggregate tok/s is all tokens over the span from the first start to the last end.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from benchmarks.client import Job, RequestResult, run_jobs, summarize

# Enough for a spawned interpreter to import httpx and the client; a share that is later starts late and
# the span says so.
START_DELAY_S = 3.0


def _share(url: str, jobs: list[Job], concurrency: int, start_at: float) -> tuple[float, float, list[RequestResult]]:
    time.sleep(max(0.0, start_at - time.time()))
    start = time.time()
    results, wall = asyncio.run(run_jobs(url, jobs, concurrency))
    return start, start + wall, results


def client_pool(processes: int) -> ProcessPoolExecutor:
    """A pool of spawned client processes, to reuse across levels (`run_jobs_in_processes(pool=...)`)."""
    return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))


def run_jobs_in_processes(shares: list[tuple[str, list[Job]]], concurrency_each: int,
                          pool: ProcessPoolExecutor | None = None, start_delay_s: float = START_DELAY_S
                          ) -> dict[str, Any]:
    """Run each (url, jobs) share in its own process with `concurrency_each` requests in flight.

    `pool` (at least as many workers as shares, already started) saves spawning interpreters for every level;
    `start_delay_s` can then be short. Returns `client.summarize` over every request (span as wall time) plus
    the per-process ITL/TTFT p50s.
    """
    if not shares:
        raise ValueError("no client shares to run")
    if pool is None:
        with client_pool(len(shares)) as own:
            return run_jobs_in_processes(shares, concurrency_each, own, start_delay_s)
    start_at = time.time() + start_delay_s
    futures = [pool.submit(_share, url, jobs, concurrency_each, start_at) for url, jobs in shares]
    done = [f.result() for f in futures]
    span = max(end for _, end, _ in done) - min(start for start, _, _ in done)
    per_process = [summarize(results) for _, _, results in done]
    return summarize([r for _, _, results in done for r in results], span) | {
        "client_processes": len(shares),
        "late_start_s": max(start for start, _, _ in done) - start_at,
        "itl_p50_s_by_process": [p["itl_s"]["p50"] for p in per_process],
        "ttft_p50_s_by_process": [p["ttft_s"]["p50"] for p in per_process],
    }
