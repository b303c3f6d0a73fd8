"""Forwarding one OpenAI request to a replica, streaming or not, with the alias written back.

Clients only ever see the alias in `model`; vLLM only ever sees the immutable version name.
A replica that refuses the connection, or no longer has the version (404), is skipped and the
request is placed on another replica: nothing was generated yet, so the retry is safe.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.http_exceptions import LineTooLong
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from service.gateway.core import GatewayCore, RoutingError
from service.gateway.shadow import mirror
from service.gateway.state import Replica, Route

VERSION_HEADER = "x-exaone-adapter-version"
# Every answer to an inference request carries it; the gateway's log lines about the request name it too.
REQUEST_ID_HEADER = "x-request-id"
# Largest SSE line the gateway forwards. aiohttp's default (twice its 64 KiB read buffer) is below what vLLM can
# send in one event: a completion with `echo` and `logprobs` carries the whole prompt's logprobs in its first chunk.
MAX_EVENT_BYTES = 64 * 1024 * 1024

log = logging.getLogger("service.gateway")


def openai_error(status: int, code: str, message: str, *, param: str | None = "model", request_id: str | None = None
                 ) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    error: dict[str, Any] = {"message": message, "type": kind, "param": param, "code": code}
    headers = {}
    if request_id is not None:
        error["request_id"] = request_id
        headers[REQUEST_ID_HEADER] = request_id
    return JSONResponse({"error": error}, status_code=status, headers=headers)


# Host paths (`/data/lora-adapters/...`, `~/...`, `C:\...`) and URLs in a message: what an upstream error must not
# carry to a client. A slash after a word character (`tokens/s`) is not a path.
_HOST_DETAIL = re.compile(r"(?:^|[^\w])[/~]+[\w.~-]|[A-Za-z]:\\|\\\\")


def client_message(raw: bytes, upstream_model: str, alias: str) -> str | None:
    """vLLM's own error message when it is safe to show a client (version name replaced by the alias), else None."""
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    error = payload.get("error", payload) if isinstance(payload, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message or len(message) > 1000 or _HOST_DETAIL.search(message):
        return None
    return message.replace(upstream_model, alias)


class _Accounting:
    """One request's metrics and in-flight bookkeeping, closed exactly once."""

    def __init__(self, core: GatewayCore, route: Route) -> None:
        self.core, self.route = core, route
        self.start = time.perf_counter()
        self.replica: Replica | None = None
        self.closed = False
        self.streaming = False  # a stream took the books over: it closes them when it ends
        self.first_at: float | None = None
        self.completion = 0
        core.traffic.begin(route.upstream_model)
        core.metrics.in_flight.labels(route.alias).inc()

    def attach(self, replica: Replica) -> None:
        if self.replica is not None:
            self.replica.outstanding -= 1
        self.replica = replica
        replica.outstanding += 1

    def first_token(self) -> None:
        self.first_at = time.perf_counter()
        self.core.metrics.ttft.labels(self.route.alias, self.route.label).observe(self.first_at - self.start)

    def tokens(self, completion: int, prompt: int = 0) -> None:
        m, alias, label = self.core.metrics, self.route.alias, self.route.label
        if completion > 0:
            self.completion += completion
            m.tokens.labels(alias, label).inc(completion)
        if prompt > 0:
            m.prompt_tokens.labels(alias, label).inc(prompt)

    def close(self, status: int, error: str | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        m, alias, label = self.core.metrics, self.route.alias, self.route.label
        m.requests.labels(alias, label, str(status)).inc()
        if error:
            m.errors.labels(alias, label, error).inc()
        now = time.perf_counter()
        m.duration.labels(alias, label).observe(now - self.start)
        if error is None and self.first_at is not None and self.completion >= 2:
            m.tpot.labels(alias, label).observe((now - self.first_at) / (self.completion - 1))
        m.in_flight.labels(alias).dec()
        self.core.traffic.end(self.route.upstream_model)
        if self.replica is not None:
            self.replica.outstanding -= 1


def _count(usage: object, key: str) -> int:
    value = usage.get(key) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _rewrite(payload: dict[str, Any], alias: str) -> dict[str, Any]:
    if "model" in payload:
        payload["model"] = alias
    return payload


class _AccountedStream(StreamingResponse):
    """A streamed answer whose books close when the response ends, however it ends.

    `_sse` closes them itself when it runs to its end or is interrupted inside a read. A client that goes away
    while the generator is parked at a `yield` (or before it started) leaves the generator suspended; it is
    closed here, at once, rather than whenever the garbage collector finalises it.
    """

    def __init__(self, body: AsyncGenerator[bytes, None], upstream: aiohttp.ClientResponse, acct: _Accounting,
                 headers: dict[str, str]) -> None:
        super().__init__(body, media_type="text/event-stream", headers=headers)
        self._body, self._upstream, self._acct = body, upstream, acct

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._body.aclose()
            if not self._acct.closed:  # the generator never started: nothing read, the connection is mid-response
                self._upstream.close()
                self._acct.close(499, "client_disconnected")


async def forward(core: GatewayCore, path: str, body: dict[str, Any], headers: dict[str, str],
                  request_id: str | None = None) -> Response:
    request_id = request_id or uuid.uuid4().hex
    try:
        route = core.resolve(body.get("model"), body.get("user"))
    except RoutingError as exc:
        core.metrics.errors.labels("unknown", "none", exc.code).inc()
        return openai_error(exc.status, exc.code, exc.message, request_id=request_id)

    acct = _Accounting(core, route)
    mirror(core, route, path, body, headers)
    try:
        return await _forward(core, route, path, body, headers, acct, request_id)
    except asyncio.CancelledError:  # the client went away while the replica was being asked
        acct.close(499, "client_disconnected")
        raise
    finally:
        # Whatever happened on the way (an answer that is not JSON, a read that failed, a bug), the request is no
        # longer in flight unless a stream took the books over; close() is a no-op when they were closed already.
        if not acct.streaming:
            acct.close(500, "gateway_error")


async def _forward(core: GatewayCore, route: Route, path: str, body: dict[str, Any], headers: dict[str, str],
                   acct: _Accounting, request_id: str) -> Response:
    stream = bool(body.get("stream"))
    client_wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    upstream_body = {**body, "model": route.upstream_model}
    if stream:
        # Ask vLLM for the usage chunk so tokens are counted; dropped again unless the client asked.
        upstream_body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}

    tried: set[str] = set()
    retried: set[str] = set()
    while True:
        try:
            replica = core.pick(route, exclude=tried)
        except RoutingError as exc:
            acct.close(exc.status, exc.code)
            return openai_error(exc.status, exc.code, exc.message, request_id=request_id)
        acct.attach(replica)
        tried.add(replica.url)
        core.metrics.routed.labels(route.alias, core.path_of(replica, route)).inc()
        core.metrics.placed.labels(str(core.replicas.index(replica)), route.label).inc()
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

    extra = {VERSION_HEADER: route.label, REQUEST_ID_HEADER: request_id}
    if upstream.status == 200 and stream:
        acct.streaming = True
        return _AccountedStream(_sse(upstream, acct, route.alias, client_wants_usage), upstream, acct, extra)

    try:
        raw = await upstream.read()
    except BaseException as exc:
        upstream.close()  # mid-response: the connection cannot go back to the pool
        if not isinstance(exc, aiohttp.ClientError):
            raise
        log.warning("request %s: reading the answer of %s (%d) failed: %r", request_id, replica.url, upstream.status, exc)
        acct.close(502, "upstream_unreachable")
        return openai_error(502, "upstream_unreachable", f"the model server closed the connection (request id "
                            f"{request_id})", param=None, request_id=request_id)
    upstream.release()

    if upstream.status != 200:
        reason = "upstream_error" if upstream.status >= 500 else "upstream_rejected"
        acct.close(upstream.status, reason)
        message = client_message(raw, route.upstream_model, route.alias) if upstream.status < 500 else None
        if message is None:
            # The whole text stays in the gateway's log (it can name host paths and internal addresses).
            log.warning("request %s: %s answered %d: %s", request_id, replica.url, upstream.status,
                        raw[:2000].decode(errors="replace"))
            message = f"the model server could not complete the request (request id {request_id})"
        answer = openai_error(upstream.status, reason, message, param=None, request_id=request_id)
        answer.headers[VERSION_HEADER] = route.label  # which version failed: a canary's errors are told apart
        return answer

    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):
        payload = None
    if not isinstance(payload, dict):
        log.warning("request %s: %s answered 200 with a body that is not a JSON object: %s", request_id, replica.url,
                    raw[:2000].decode(errors="replace"))
        acct.close(502, "upstream_bad_response")
        return openai_error(502, "upstream_bad_response", f"the model server sent an answer the gateway cannot read "
                            f"(request id {request_id})", param=None, request_id=request_id)
    usage = payload.get("usage")
    acct.tokens(_count(usage, "completion_tokens"), _count(usage, "prompt_tokens"))
    acct.close(200)
    return JSONResponse(_rewrite(payload, route.alias), headers=extra)


@dataclass(frozen=True)
class SseChunk:
    """One upstream `data:` payload after rewriting: what to send (None: drop), tokens counted, has choices."""

    out: str | None
    tokens: int
    has_choices: bool
    prompt_tokens: int = 0


def rewrite_chunk(data: str, upstream_model: str, alias: str, client_wants_usage: bool) -> SseChunk:
    """Rewrite one streamed chunk for the client without parsing it when it need not be parsed.

    Every token chunk passes through here, so the common case is two substring checks and one replace
    (vLLM writes compact JSON: `"model":"medical-v3"`); only the chunk carrying `usage` (once per request)
    or an unexpected layout is parsed. The version name inside generated text is JSON-escaped (`\\"`), so
    the replace can only hit the top-level field. ValueError: the payload is not a JSON object.
    """
    needle = f'"model":"{upstream_model}"'
    if '"usage":{' not in data and needle in data:
        return SseChunk(data.replace(needle, f'"model":"{alias}"', 1), 0, '"choices":[]' not in data)
    chunk = json.loads(data)
    if not isinstance(chunk, dict):
        raise ValueError("a streamed event that is not a JSON object")
    usage = chunk.get("usage")
    tokens, prompt = _count(usage, "completion_tokens"), _count(usage, "prompt_tokens")
    has_choices = bool(chunk.get("choices"))
    if not has_choices and usage and not client_wants_usage:
        return SseChunk(None, tokens, False, prompt)
    if not client_wants_usage:
        chunk.pop("usage", None)
    return SseChunk(json.dumps(_rewrite(chunk, alias), separators=(",", ":")), tokens, has_choices, prompt)


async def _sse(upstream: aiohttp.ClientResponse, acct: _Accounting, alias: str, client_wants_usage: bool
               ) -> AsyncGenerator[bytes, None]:
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
            acct.tokens(chunk.tokens, chunk.prompt_tokens)
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
    except (ValueError, RecursionError):
        status, error = 502, "upstream_bad_event"
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
