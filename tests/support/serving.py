"""Serving fixtures: adapter versions on disk and a real gateway (both listeners) on loopback ports."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.gateway import VERSION_HEADER, EngineClient, GatewayAdmin, create_gateway
from service.gateway.server import RunningGateway, gateway_in_thread
from service.reconciler import DesiredAlias, LocalSource, Reconciler
from tests.support.processes import free_port

GatewayFactory = Callable[[list[str]], AbstractContextManager[RunningGateway]]


@pytest.fixture(scope="session")
def medical_versions(tiny_adapters: dict[str, Path]) -> dict[str, Path]:
    """Three immutable versions of `medical` (other weights each, so they answer differently)."""
    return {"medical-v1": tiny_adapters["medical"], "medical-v2": tiny_adapters["legal"],
            "medical-v3": tiny_adapters["code"]}


@pytest.fixture
def admin_key() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture
def gateway_factory(admin_key: str) -> GatewayFactory:
    @contextmanager
    def start(upstreams: list[str]) -> Iterator[RunningGateway]:
        apps = create_gateway(upstreams, admin_key=admin_key, served_name="exaone", refresh_seconds=1.0)
        with gateway_in_thread(apps, ("127.0.0.1", free_port()), ("127.0.0.1", free_port())) as running:
            yield running

    return start


def reconcile(gateway: RunningGateway, admin_key: str, upstreams: list[str], versions: dict[str, Path],
              desired: dict[str, DesiredAlias], max_cpu_loras: int = 4) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            engines = [EngineClient(u, client) for u in upstreams]
            admin = GatewayAdmin(gateway.admin_url, admin_key, client)
            reconciler = Reconciler(engines, admin, LocalSource(versions), max_cpu_loras=max_cpu_loras,
                                    managed_domains=frozenset({"medical"}))
            return await reconciler.reconcile(desired)

    return asyncio.run(go())


def unload_all(urls: list[str], names: list[str]) -> None:
    for url in urls:
        for name in names:
            httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=30)


def _streamed_models(text: str) -> set[str]:
    """The `model` of every JSON event of an SSE body (the client must only ever see the alias)."""
    events = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    return {json.loads(e).get("model") for e in events if e and e != "[DONE]"}


@dataclass
class TrafficLoop:
    """A bounded client loop: `workers` threads, at most `max_requests` and `max_seconds` in all."""

    url: str
    model: str
    workers: int = 4
    max_requests: int = 200
    max_seconds: float = 20.0
    statuses: Counter[int] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[tuple[str, int]] = field(default_factory=Counter)  # (version served, status)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sent: int = 0
    _threads: list[threading.Thread] = field(default_factory=list)

    def _take(self) -> bool:
        with self._lock:
            if self._sent >= self.max_requests:
                return False
            self._sent += 1
            return True

    def _worker(self, index: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=60) as client:
            i = 0
            while not self._stop.is_set() and time.monotonic() < deadline and self._take():
                i += 1
                stream = (i + index) % 3 == 0  # a third of the requests stream (SSE pass-through)
                body = {"model": self.model, "prompt": f"Patient {index}-{i}:", "max_tokens": 3, "temperature": 0,
                        "stream": stream}
                try:
                    if stream:
                        with client.stream("POST", f"{self.url}/v1/completions", json=body) as response:
                            text = "".join(response.iter_text())
                            ok = response.status_code == 200 and "data: [DONE]" in text and _streamed_models(text) == {self.model}
                    else:
                        response = client.post(f"{self.url}/v1/completions", json=body)
                        ok = response.status_code == 200 and response.json()["model"] == self.model
                except Exception as exc:  # a worker must never die silently: every surprise is a recorded failure
                    with self._lock:
                        self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                with self._lock:
                    self.statuses[response.status_code] += 1
                    self.versions[response.headers.get(VERSION_HEADER, "?")] += 1
                    self.outcomes[(response.headers.get(VERSION_HEADER, "?"), response.status_code)] += 1
                    if not ok:
                        self.failures.append(f"{response.status_code}: {response.text[:200] if not stream else 'stream'}")

    @contextmanager
    def running(self) -> Iterator[TrafficLoop]:
        self._threads = [threading.Thread(target=self._worker, args=(i,), daemon=True) for i in range(self.workers)]
        for t in self._threads:
            t.start()
        try:
            yield self
        finally:
            self._stop.set()
            for t in self._threads:
                t.join(timeout=90)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + len([f for f in self.failures if not f[:3].isdigit()])

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        """Let at least `count` more requests complete (bounded in time).

        Fails when they do not: a loop that ran out of its request or time budget early would otherwise let a
        test's later phase go by without traffic, and its version checks fail far from the cause.
        """
        with self._lock:
            target = sum(self.statuses.values()) + count
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ended = not any(t.is_alive() for t in self._threads)  # before the count, which then is final
            with self._lock:
                done, sent = sum(self.statuses.values()), self._sent
            if done >= target:
                return
            if ended:
                raise AssertionError(f"traffic loop ended after {sent} requests (budget {self.max_requests} requests, "
                                     f"{self.max_seconds:.0f} s) before {count} more completed")
            time.sleep(0.05)
        raise AssertionError(f"only {done - (target - count)} of {count} requests completed in {timeout:.0f} s")
