"""Forwarding one OpenAI request to a replica, streaming or not, with the alias written back.

Clients only ever see the alias in `model`; vLLM only ever sees the immutable version name.
A replica that refuses the connection, or no longer has the version (404), is skipped and the
request is placed on another replica: nothing was generated yet, so the retry is safe.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.http_exceptions import LineTooLong
from fastapi.responses import JSONResponse, Response, StreamingResponse

from service.gateway.core import GatewayCore, RoutingError
from service.gateway.state import Replica, Route

VERSION_HEADER = "x-exaone-adapter-version"
# Largest SSE line the gateway forwards. aiohttp's default (twice its 64 KiB read buffer) is below what vLLM can
# send in one event: a completion with `echo` and `logprobs` carries the whole prompt's logprobs in its first chunk.
MAX_EVENT_BYTES = 64 * 1024 * 1024


def openai_error(status: int, code: str, message: str) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": "model", "code": code}},
                        status_code=status)


class _Accounting:
    """One request's metrics and in-flight bookkeeping, closed exactly once."""

    def __init__(self, core: GatewayCore, route: Route) -> None:
        self.core, self.route = core, route
        self.start = time.perf_counter()
        self.replica: Replica | None = None
        self.closed = False
        core.traffic.begin(route.upstream_model)
        core.metrics.in_flight.labels(route.alias).inc()

    def attach(self, replica: Replica) -> None:
        if self.replica is not None:
            self.replica.outstanding -= 1
        self.replica = replica
        replica.outstanding += 1

    def first_token(self) -> None:
        self.core.metrics.ttft.labels(self.route.alias, self.route.label).observe(time.perf_counter() - self.start)

    def tokens(self, count: int) -> None:
        if count > 0:
            self.core.metrics.tokens.labels(self.route.alias, self.route.label).inc(count)

    def close(self, status: int, error: str | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        m, alias, label = self.core.metrics, self.route.alias, self.route.label
        m.requests.labels(alias, label, str(status)).inc()
        if error:
            m.errors.labels(alias, label, error).inc()
        m.duration.labels(alias, label).observe(time.perf_counter() - self.start)
        m.in_flight.labels(alias).dec()
        self.core.traffic.end(self.route.upstream_model)
        if self.replica is not None:
            self.replica.outstanding -= 1


def _rewrite(payload: dict[str, Any], alias: str) -> dict[str, Any]:
    if "model" in payload:
        payload["model"] = alias
    return payload


async def forward(core: GatewayCore, path: str, body: dict[str, Any], headers: dict[str, str]) -> Response:
    try:
        route = core.resolve(body.get("model"))
    except RoutingError as exc:
        core.metrics.errors.labels("unknown", "none", exc.code).inc()
        return openai_error(exc.status, exc.code, exc.message)

    stream = bool(body.get("stream"))
    client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    upstream_body = {**body, "model": route.upstream_model}
    if stream:
        # Ask vLLM for the usage chunk so tokens are counted; dropped again unless the client asked.
        upstream_body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}

    acct = _Accounting(core, route)
    tried: set[str] = set()
    retried: set[str] = set()
    while True:
        try:
            replica = core.pick(route, exclude=tried)
        except RoutingError as exc:
            acct.close(exc.status, exc.code)
            return openai_error(exc.status, exc.code, exc.message)
        acct.attach(replica)
        tried.add(replica.url)
        core.metrics.routed.labels(route.alias, core.path_of(replica, route)).inc()
        try:
            upstream = await core.inference_session().post(f"{replica.url}{path}", json=upstream_body, headers=headers)
        except aiohttp.ClientConnectionError:
            # One broken connection (a pooled one the replica closed as the request went out, a reset) says little
            # about the replica, and nothing was generated: once more on a new connection before calling it down
            # for every request (the periodic refresh brings a replica that is down back when it answers again).
            if replica.url in retried:
                replica.healthy = False
            else:
                retried.add(replica.url)
                tried.discard(replica.url)
            continue
        if upstream.status == 404 and route.label != "base" and len(tried) < len(core.replicas):
            upstream.release()
            replica.loaded.discard(route.upstream_model)
            if replica.merged_for(route.upstream_model):
                replica.base = ()  # it was restarted with another version; the next refresh says which
            continue
        break

    extra = {VERSION_HEADER: route.label}
    if upstream.status != 200:
        try:
            raw = await upstream.read()
        finally:
            upstream.release()
        reason = "upstream_error" if upstream.status >= 500 else "upstream_rejected"
        acct.close(upstream.status, reason)
        try:
            payload = json.loads(raw)
        except ValueError:
            return openai_error(upstream.status, reason, raw.decode(errors="replace")[:500])
        if isinstance(payload, dict):
            # vLLM's message names the internal version; clients only know the alias.
            text = json.dumps(payload).replace(route.upstream_model, route.alias)
            return JSONResponse(json.loads(text), status_code=upstream.status, headers=extra)
        return JSONResponse(payload, status_code=upstream.status, headers=extra)

    if not stream:
        try:
            raw = await upstream.read()
        except aiohttp.ClientError:
            acct.close(502, "upstream_unreachable")
            return openai_error(502, "upstream_unreachable", "the replica closed the connection")
        finally:
            upstream.release()
        payload = _rewrite(json.loads(raw), route.alias)
        acct.tokens(int((payload.get("usage") or {}).get("completion_tokens") or 0))
        acct.close(200)
        return JSONResponse(payload, headers=extra)

    return StreamingResponse(_sse(upstream, acct, route.alias, client_wants_usage), media_type="text/event-stream",
                             headers=extra)


@dataclass(frozen=True)
class SseChunk:
    """One upstream `data:` payload after rewriting: what to send (None: drop), tokens counted, has choices."""

    out: str | None
    tokens: int
    has_choices: bool


def rewrite_chunk(data: str, upstream_model: str, alias: str, client_wants_usage: bool) -> SseChunk:
    """Rewrite one streamed chunk for the client without parsing it when it need not be parsed.

    Every token chunk passes through here, so the common case is two substring checks and one replace
    (vLLM writes compact JSON: `"model":"medical-v3"`); only the chunk carrying `usage` (once per request)
    or an unexpected layout is parsed. The version name inside generated text is JSON-escaped (`\\"`), so
    the replace can only hit the top-level field.
    """
    needle = f'"model":"{upstream_model}"'
    if '"usage":{' not in data and needle in data:
        return SseChunk(data.replace(needle, f'"model":"{alias}"', 1), 0, '"choices":[]' not in data)
    chunk = json.loads(data)
    usage = chunk.get("usage")
    tokens = int(usage.get("completion_tokens") or 0) if isinstance(usage, dict) else 0
    has_choices = bool(chunk.get("choices"))
    if not has_choices and usage and not client_wants_usage:
        return SseChunk(None, tokens, False)
    if not client_wants_usage:
        chunk.pop("usage", None)
    return SseChunk(json.dumps(_rewrite(chunk, alias), separators=(",", ":")), tokens, has_choices)


async def _sse(upstream: aiohttp.ClientResponse, acct: _Accounting, alias: str, client_wants_usage: bool
               ) -> AsyncIterator[bytes]:
    status, error = 200, None
    seen_first = False
    upstream_model = acct.route.upstream_model
    try:
        while raw := await upstream.content.readline(max_line_length=MAX_EVENT_BYTES):  # b"" at the end
            line = raw.decode(errors="replace").rstrip("\r\n")  # as httpx decoded it: a bad byte never ends a stream
            if not line:
                continue
            if not line.startswith("data:"):
                yield (line + "\n").encode()
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                yield b"data: [DONE]\n\n"
                continue
            chunk = rewrite_chunk(data, upstream_model, alias, client_wants_usage)
            acct.tokens(chunk.tokens)
            if chunk.has_choices and not seen_first:
                seen_first = True
                acct.first_token()
            if chunk.out is not None:
                yield f"data: {chunk.out}\n\n".encode()
    except aiohttp.ClientError:
        status, error = 502, "upstream_unreachable"
        raise
    except LineTooLong:
        status, error = 502, "upstream_event_too_large"
        raise
    except BaseException:
        # The client went away (Starlette cancels the generator): counted, not hidden.
        status, error = 499, "client_disconnected"
        raise
    finally:
        # A stream read to its end goes back to the pool; one cut short must not (its connection is mid-response).
        if upstream.content.at_eof():
            upstream.release()
        else:
            upstream.close()
        acct.close(status, error)
