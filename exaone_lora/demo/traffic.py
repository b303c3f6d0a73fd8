"""A bounded client loop through the OpenAI SDK: counts every request's outcome per model while a deploy runs."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


@dataclass
class TrafficResult:
    ok: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    served_by: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.ok.values()) + sum(self.failed.values())

    @property
    def failures(self) -> int:
        return sum(self.failed.values())


class BoundedTraffic:
    """Send chat completions round-robin over `models` from `workers` threads until stopped or a bound is hit.

    Bounded twice (request count and seconds) so that a stuck deploy can never turn it into an endless load.
    """

    def __init__(self, base_url: str, api_key: str, models: list[str], *, workers: int = 3, max_requests: int = 300,
                 max_seconds: float = 60.0, max_tokens: int = 4) -> None:
        from openai import OpenAI

        self._client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30.0)
        self._models = models
        self._workers = workers
        self._max_requests = max_requests
        self._max_seconds = max_seconds
        self._max_tokens = max_tokens
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sent = 0
        self.result = TrafficResult()
        self._pool: ThreadPoolExecutor | None = None
        self._started = 0.0

    def _next(self) -> str | None:
        with self._lock:
            if self._stop.is_set() or self._sent >= self._max_requests:
                return None
            if time.monotonic() - self._started > self._max_seconds:
                return None
            model = self._models[self._sent % len(self._models)]
            self._sent += 1
            return model

    def _worker(self) -> None:
        while (model := self._next()) is not None:
            try:
                reply = self._client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "Say something about your domain."}],
                    max_tokens=self._max_tokens, temperature=0,
                )
                with self._lock:
                    self.result.ok[model] += 1
                    self.result.served_by[reply.model] += 1
            except Exception as exc:  # every failure is counted and kept, never retried away
                with self._lock:
                    self.result.failed[model] += 1
                    if len(self.result.errors) < 20:
                        self.result.errors.append(f"{model}: {type(exc).__name__}: {exc}")

    def __enter__(self) -> BoundedTraffic:
        self._started = time.monotonic()
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="traffic")
        for _ in range(self._workers):
            self._pool.submit(self._worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._pool is not None
        self._pool.shutdown(wait=True)
        self.result.seconds = time.monotonic() - self._started
