"""A stand-in vLLM replica that streams completions at a fixed token interval, for measuring the gateway alone.

It answers the three calls the gateway makes (`GET /v1/models`, `GET /health`, `POST /v1/completions` with
`stream`) byte for byte in vLLM 0.32's layout (compact JSON, one `data:` event per token, the usage chunk,
`[DONE]`), from pre-encoded bytes, and `GET /stats` (connections accepted, completions served). Its own cost per
token is a few microseconds, so what a load through the gateway costs is the gateway's. Written on raw asyncio
streams rather than an ASGI server for the same reason.

    python -m benchmarks.sse_upstream --port 9100 --interval-ms 5 --adapter medical-v1

Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated

import typer

SERVED_NAME = "exaone"


def token_event(model: str, index: int) -> bytes:
    """One token chunk as vLLM 0.32 streams it for `/v1/completions` (captured from the CPU server)."""
    payload = {"id": "cmpl-b6be240b1c3dff87", "object": "text_completion", "created": 1795560747, "model": model,
               "choices": [{"index": 0, "text": " tok", "logprobs": None, "finish_reason": None,
                            "stop_reason": None, "token_ids": [3559 + index % 7]}]}
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def usage_event(model: str, prompt_tokens: int, completion_tokens: int) -> bytes:
    payload = {"id": "cmpl-b6be240b1c3dff87", "object": "text_completion", "created": 1795560747, "model": model,
               "choices": [], "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
                                        "completion_tokens": completion_tokens}}
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def models_body(adapters: list[str]) -> bytes:
    data = [{"id": SERVED_NAME, "object": "model", "root": "/models/exaone", "parent": None}]
    data += [{"id": name, "object": "model", "root": f"/adapters/{name}", "parent": SERVED_NAME} for name in adapters]
    return json.dumps({"object": "list", "data": data}).encode()


def header_fields(lines: list[str]) -> dict[str, str]:
    """An HTTP message's header lines (after its first line) by lower-case name."""
    return {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines if ":" in ln)}


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    """The next HTTP/1.1 request on a keep-alive connection: method, path and body (IncompleteReadError once the
    client closed it)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    length = int(header_fields(lines[1:]).get("content-length", "0"))
    return method, path, await reader.readexactly(length)


def reply(writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str = "application/json") -> None:
    """A whole response with a content-length (the connection stays open for the next request)."""
    writer.write(b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
                 % (status, content_type.encode(), len(body), body))


class Upstream:
    def __init__(self, adapters: list[str], interval_s: float) -> None:
        self.adapters = adapters
        self.interval_s = interval_s
        self.models = models_body(adapters)
        self.served = {SERVED_NAME, *adapters}
        self.events = {name: [chunked(token_event(name, i)) for i in range(7)] for name in self.served}
        # TCP connections accepted and completions served so far (GET /stats): how well a client reuses connections.
        self.connections = 0
        self.completions = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:  # keep-alive: the gateway's pool reuses connections
                method, path, body = await read_request(reader)
                if method == "GET" and path == "/v1/models":
                    reply(writer, 200, self.models)
                elif method == "GET" and path == "/health":
                    reply(writer, 200, b"")
                elif method == "GET" and path == "/stats":
                    stats = {"connections": self.connections, "completions": self.completions}
                    reply(writer, 200, json.dumps(stats).encode())
                elif method == "POST" and path == "/v1/completions":
                    await self._complete(writer, json.loads(body))
                else:
                    reply(writer, 404, b'{"error":{"message":"not found"}}')
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _complete(self, writer: asyncio.StreamWriter, payload: dict[str, object]) -> None:
        model = str(payload.get("model"))
        if model not in self.served or not payload.get("stream"):
            reply(writer, 404, json.dumps({"error": {"message": f"The model `{model}` does not exist."}}).encode())
            return
        self.completions += 1
        tokens = int(payload.get("max_tokens") or 16)  # type: ignore[call-overload]
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        events = self.events[model]
        # Tokens on a fixed schedule (as a decode step would emit them), not a sleep after each write: a slow
        # reader makes the next tokens due at once rather than shifting the whole stream later.
        start = time.monotonic()
        for i in range(tokens):
            writer.write(events[i % len(events)])
            await writer.drain()
            if self.interval_s > 0:
                await asyncio.sleep(max(0.0, start + (i + 1) * self.interval_s - time.monotonic()))
        writer.write(chunked(usage_event(model, 8, tokens)) + chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")


async def serve(port: int, adapters: list[str], interval_s: float) -> None:
    upstream = Upstream(adapters, interval_s)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main(
    port: Annotated[int, typer.Option(help="loopback port to listen on")],
    interval_ms: Annotated[float, typer.Option(help="time between two tokens of one stream (a decode step)")] = 5.0,
    adapter: Annotated[list[str] | None, typer.Option(help="adapter version name it serves (repeat)")] = None,
) -> None:
    """Stream vLLM-shaped completions on 127.0.0.1:PORT at one token per INTERVAL_MS per stream."""
    asyncio.run(serve(port, adapter or ["medical-v1"], interval_ms / 1000))


if __name__ == "__main__":
    typer.run(main)
