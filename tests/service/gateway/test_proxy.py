"""The gateway's forwarding path against a stand-in replica whose behaviour a test can set: the cases the CPU vLLM
cannot be made to produce on demand (a very large event, a replica dying mid-stream) and the upstream connection
pool under many streams at once."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from benchmarks.sse_upstream import read_request, reply
from exaone_lora.local.processes import free_port
from service.gateway import core as core_module
from service.gateway import create_gateway
from service.gateway.server import RunningGateway, gateway_in_thread
from tests.support.asgi import serve_in_thread

BIG_TEXT = "x" * (1024 * 1024)  # one event of ~1 MiB: past aiohttp's default line limit (128 KiB)


def _event(model: str, text: str) -> bytes:
    chunk = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": model,
             "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": None, "stop_reason": None}]}
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


@dataclass
class StandIn:
    """A replica serving `medical-v1`; the prompt picks the behaviour. Records each request's client port (one port
    per upstream connection: a connection's port is fixed, and connections open at the same time differ in it).
    With `wave` set, a `wave` request is answered only once `wave` of them have arrived, so all of a wave's requests
    are in flight at once, each on its own connection, whatever the machine's speed."""

    ports: list[int] = field(default_factory=list)
    wave: int = 0
    arrived: int = 0

    def app(self) -> Starlette:
        async def models(_: Request) -> Response:
            return JSONResponse({"object": "list", "data": [{"id": "exaone", "parent": None},
                                                            {"id": "medical-v1", "root": "/a/medical-v1",
                                                             "parent": "exaone"}]})

        async def completions(request: Request) -> Response:
            body = await request.json()
            assert request.client is not None
            self.ports.append(request.client.port)
            model, prompt = body["model"], body["prompt"]

            async def stream() -> AsyncIterator[bytes]:
                if prompt == "big":
                    yield _event(model, BIG_TEXT)
                elif prompt == "badbyte":
                    yield _event(model, "a#b").replace(b"#", b"\xff")  # not UTF-8: must not end the stream
                    yield _event(model, " c")
                else:
                    if prompt == "wave":
                        self.arrived += 1
                        deadline = time.monotonic() + 120  # only a broken gateway gets here: fail, do not hang
                        while self.arrived % self.wave and time.monotonic() < deadline:
                            await asyncio.sleep(0.01)
                        assert self.arrived % self.wave == 0, f"{self.arrived % self.wave} of a wave of {self.wave}"
                    for i in range(4):
                        yield _event(model, f" t{i}")
                        await asyncio.sleep(0.02)
                    if prompt == "cut":
                        raise RuntimeError("the replica died mid-stream")  # uvicorn drops the connection
                usage = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": model, "choices": [],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}}
                yield b"data: " + json.dumps(usage, separators=(",", ":")).encode() + b"\n\ndata: [DONE]\n\n"

            return StreamingResponse(stream(), media_type="text/event-stream")

        return Starlette(routes=[Route("/v1/models", models), Route("/v1/completions", completions, methods=["POST"])])


@contextmanager
def gateway_over(stand_in: StandIn, keep_alive_s: int = 5) -> Iterator[RunningGateway]:
    with serve_in_thread(stand_in.app(), keep_alive_s=keep_alive_s) as upstream:
        apps = create_gateway([upstream], admin_key=secrets.token_urlsafe(24), initial_aliases={"medical": "medical-v1"})
        with gateway_in_thread(apps, ("127.0.0.1", free_port()), ("127.0.0.1", free_port())) as gateway:
            yield gateway


def _stream(client: httpx.Client, gateway: RunningGateway, prompt: str) -> list[dict[str, object]]:
    with client.stream("POST", f"{gateway.public_url}/v1/completions",
                       json={"model": "medical", "prompt": prompt, "stream": True}) as response:
        assert response.status_code == 200
        return [json.loads(line[6:]) for line in response.iter_lines()
                if line.startswith("data: ") and line != "data: [DONE]"]


def test_a_very_large_event_is_forwarded_whole() -> None:
    with gateway_over(StandIn()) as gateway, httpx.Client(timeout=30) as client:
        events = _stream(client, gateway, "big")
    assert len(events) == 1 and events[0]["model"] == "medical"
    assert events[0]["choices"][0]["text"] == BIG_TEXT  # type: ignore[index]


def test_a_byte_that_is_not_utf8_is_replaced_not_fatal() -> None:
    with gateway_over(StandIn()) as gateway, httpx.Client(timeout=30) as client:
        events = _stream(client, gateway, "badbyte")
    assert [e["choices"][0]["text"] for e in events] == ["a\ufffdb", " c"]  # type: ignore[index]
    assert {e["model"] for e in events} == {"medical"}


def test_a_replica_dying_mid_stream_is_counted_as_unreachable() -> None:
    with gateway_over(StandIn()) as gateway, httpx.Client(timeout=30) as client:
        try:
            received = len(_stream(client, gateway, "cut"))
        except httpx.HTTPError:
            received = -1  # the client sees the cut as a broken chunked body
        assert received == -1
        deadline = time.monotonic() + 10
        while True:  # the gateway closes its books when the stream's generator ends, just after the client sees it
            families = list(text_string_to_metric_families(client.get(f"{gateway.admin_url}/metrics").text))
            errors = {s.labels["reason"]: s.value for f in families for s in f.samples
                      if s.name == "exaone_gateway_request_errors_total"}
            in_flight = [s.value for f in families for s in f.samples
                         if s.name == "exaone_gateway_in_flight_requests" and s.labels == {"alias": "medical"}]
            if errors or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert errors == {"upstream_unreachable": 1.0}, errors
    assert in_flight == [0.0]


def _answered(gateway: RunningGateway) -> float:
    """Requests the gateway has closed its books on: each one's upstream connection is back in the pool by then
    (`proxy._sse` releases it before it closes the request's accounting)."""
    value = gateway.apps.core.metrics.registry.get_sample_value(
        "exaone_gateway_requests_total", {"alias": "medical", "version": "medical-v1", "status": "200"})
    return value or 0.0


def _wait_answered(gateway: RunningGateway, count: int) -> None:
    deadline = time.monotonic() + 60  # a bound for a broken gateway only; a working one gets there in milliseconds
    while _answered(gateway) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _answered(gateway) == count


def test_many_streams_reuse_their_upstream_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """A controlled schedule whose upstream connection count is exact: 5 streams one after another (each sent once
    the previous one's connection is back in the pool) take 1 connection; a wave of 96 streams in flight at once
    takes 96 (that one and 95 new); a second wave of 96, sent once the first is over, takes the same 96 and opens
    none. httpcore 1.0.9's pool, with the old keep-alive limit of 64, closed each connection a finished request
    left idle once more than 64 were open, so the second wave opened 32 new ones."""
    # Idle connections stay open on both sides for the whole test, however slow the machine: the gateway drops
    # its idle ones after UPSTREAM_KEEPALIVE_S and the stand-in (uvicorn) after its keep-alive.
    monkeypatch.setattr(core_module, "UPSTREAM_KEEPALIVE_S", 600.0)
    wave = 96
    stand_in = StandIn(wave=wave)

    async def one(client: httpx.AsyncClient, url: str, prompt: str) -> int:
        async with client.stream("POST", f"{url}/v1/completions",
                                 json={"model": "medical", "prompt": prompt, "stream": True}) as response:
            return len([line async for line in response.aiter_lines() if line.startswith("data: {")])

    async def concurrent(url: str) -> list[int]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            return list(await asyncio.gather(*(one(client, url, "wave") for _ in range(wave))))

    async def single(url: str) -> int:
        async with httpx.AsyncClient(timeout=120) as client:
            return await one(client, url, "x")

    with gateway_over(stand_in, keep_alive_s=600) as gateway:
        url = gateway.public_url
        for i in range(5):
            assert asyncio.run(single(url)) == 4
            _wait_answered(gateway, i + 1)
        sequential = set(stand_in.ports)
        assert len(sequential) == 1, f"{len(sequential)} upstream connections for 5 streams one after another"

        assert asyncio.run(concurrent(url)) == [4] * wave  # every stream whole (the usage chunk is dropped)
        _wait_answered(gateway, 5 + wave)
        first_wave = set(stand_in.ports[5:])
        assert len(first_wave) == wave and sequential <= first_wave

        assert asyncio.run(concurrent(url)) == [4] * wave
        _wait_answered(gateway, 5 + 2 * wave)
        second_wave = set(stand_in.ports[5 + wave:])
    assert len(stand_in.ports) == 5 + 2 * wave
    assert second_wave == first_wave, f"the second wave opened {len(second_wave - first_wave)} new upstream connections"


class ClosingReplica:
    """A raw HTTP/1.1 replica that, like a server whose keep-alive timer ran out as a request arrived, closes a
    connection on the second completion request sent on it, without answering."""

    def __init__(self) -> None:
        self.port = free_port()
        self.completions = 0
        self.loop = asyncio.new_event_loop()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                method, path, _ = await read_request(reader)
                if (method, path) == ("GET", "/v1/models"):
                    reply(writer, 200, json.dumps({"data": [{"id": "exaone", "parent": None},
                                                            {"id": "medical-v1", "root": "/a", "parent": "exaone"}]}).encode())
                elif (method, path) == ("GET", "/metrics"):  # the gateway's scorer polls it: not a completion
                    reply(writer, 404, b"{}")
                elif served:
                    return  # closes the connection: the request is never answered
                else:
                    served += 1
                    self.completions += 1
                    reply(writer, 200, _event("medical-v1", " t") + b"data: [DONE]\n\n", "text/event-stream")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @contextmanager
    def running(self) -> Iterator[str]:
        server = self.loop.run_until_complete(asyncio.start_server(self.handle, "127.0.0.1", self.port))
        thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{self.port}"
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            thread.join(timeout=10)
            server.close()
            self.loop.run_until_complete(server.wait_closed())
            self.loop.close()


def test_a_pooled_connection_the_replica_closed_is_retried_not_a_replica_down() -> None:
    replica = ClosingReplica()
    with replica.running() as upstream:
        apps = create_gateway([upstream], admin_key=secrets.token_urlsafe(24), initial_aliases={"medical": "medical-v1"})
        with gateway_in_thread(apps, ("127.0.0.1", free_port()), ("127.0.0.1", free_port())) as gateway, \
             httpx.Client(timeout=30) as client:
            for _ in range(4):  # each request after the first finds its pooled connection closed under it
                events = _stream(client, gateway, "x")
                assert [e["model"] for e in events] == ["medical"]
            assert apps.core.replicas[0].healthy
    assert replica.completions == 4
