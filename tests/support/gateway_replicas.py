"""Replicas on loopback for the gateway's security tests: the benchmark's stand-in (`benchmarks.sse_upstream`) and a
scripted one whose answer the prompt picks (answers the CPU vLLM cannot be made to give on demand)."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.sse_upstream import Upstream, models_body, read_request, reply, usage_event
from exaone_lora.local.processes import free_port
from service.gateway import GatewayApps, create_gateway
from service.gateway.server import RunningGateway, gateway_in_thread

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
# What a replica's error text may hold and a client must never see.
HOST_PATH = "/data/lora-adapters/medical-v1/adapter_config.json"


@contextmanager
def serving(handler: Handler) -> Iterator[str]:
    """A raw asyncio server on a free loopback port in a thread of its own; yields its URL."""
    loop = asyncio.new_event_loop()
    port = free_port()
    server = loop.run_until_complete(asyncio.start_server(handler, "127.0.0.1", port))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()


@contextmanager
def stand_in(adapters: list[str] | None = None, interval_s: float = 0.0) -> Iterator[str]:
    """The benchmark's stand-in replica (vLLM 0.32's streaming layout), one token per `interval_s` per stream."""
    with serving(Upstream(adapters or ["medical-v1"], interval_s).handle) as url:
        yield url


@dataclass
class ScriptedReplica:
    """Serves `exaone` and `medical-v1`; a completion's prompt picks the answer. Records every request it gets."""

    requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                method, path, raw = await read_request(reader)
                if (method, path) == ("GET", "/metrics"):  # the gateway's scorer polls it: not a request under test
                    reply(writer, 404, b'{"error":{"message":"no metrics here"}}')
                    await writer.drain()
                    continue
                body = json.loads(raw) if raw else {}
                self.requests.append((method, path, body))
                if path == "/v1/models":
                    reply(writer, 200, models_body(["medical-v1"]))
                elif path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
                    reply(writer, 200, b"ok", "text/plain")
                elif not await self._complete(writer, body):
                    return  # the connection is cut on purpose
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _complete(self, writer: asyncio.StreamWriter, body: dict[str, Any]) -> bool:
        prompt, model = body.get("prompt"), str(body.get("model"))
        if prompt == "not-json":  # a 200 whose body is not JSON (a proxy's error page, a broken replica)
            reply(writer, 200, b"<html>upstream proxy error</html>", "text/html")
        elif prompt in ("cut-error", "cut-ok"):  # the body ends long before its content-length: a payload error
            status = 500 if prompt == "cut-error" else 200
            writer.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: 4096\r\n\r\n{\"err" % status)
            await writer.drain()
            return False
        elif prompt == "path-400":
            message = f"Loading lora {model} failed: No adapter found for {HOST_PATH}"
            reply(writer, 400, json.dumps({"error": {"message": message, "type": "BadRequestError", "code": 400}}).encode())
        elif prompt == "path-500":
            reply(writer, 500, json.dumps({"error": {"message": f"Traceback ... {HOST_PATH}"}}).encode())
        elif prompt == "plain-400":
            message = f"max_tokens must be at least 1, got 0 (model {model})"
            reply(writer, 400, json.dumps({"error": {"message": message, "type": "BadRequestError", "code": 400}}).encode())
        elif body.get("stream"):
            usage = usage_event(model, 11, 3)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n%s"
                         % (len(usage) + 14, usage + b"data: [DONE]\n\n"))
        else:
            answer = {"id": "cmpl-1", "object": "text_completion", "model": model,
                      "choices": [{"index": 0, "text": " hi", "finish_reason": "length"}],
                      "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
            reply(writer, 200, json.dumps(answer).encode())
        return True

    def completions(self) -> list[dict[str, Any]]:
        return [body for _, path, body in self.requests if path.endswith("completions")]


def admin_key() -> str:
    return secrets.token_urlsafe(24)


@contextmanager
def gateway(upstream: str, key: str, **options: Any) -> Iterator[tuple[RunningGateway, GatewayApps]]:
    """The real gateway (both listeners) on loopback in front of `upstream`, `medical` -> `medical-v1`."""
    options.setdefault("initial_aliases", {"medical": "medical-v1"})
    apps = create_gateway([upstream], admin_key=key, **options)
    with gateway_in_thread(apps, ("127.0.0.1", free_port()), ("127.0.0.1", free_port())) as running:
        yield running, apps


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name}


def settled(apps: GatewayApps, timeout: float = 10.0) -> bool:
    """True once nothing is in flight (a stream's books close just after its client read the last byte)."""
    deadline = time.monotonic() + timeout
    while True:
        gauges = samples(apps.core.metrics.render().decode(), "exaone_gateway_in_flight_requests")
        if not apps.core.traffic.in_flight and all(v == 0 for v in gauges.values()) \
                and all(r.outstanding == 0 for r in apps.core.replicas):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def metric(client: httpx.Client, running: RunningGateway, name: str, **labels: str) -> float:
    """One sample of the gateway's /metrics, read where Prometheus reads it: the admin listener."""
    found = samples(client.get(f"{running.admin_url}/metrics").text, name)
    return found.get(tuple(sorted(labels.items())), 0.0)
