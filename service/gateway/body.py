"""A client's request body: read within a size limit, parsed as strict JSON, and checked against an allow-list.

The gateway forwards only fields it knows to be plain OpenAI sampling/output controls (and a few vLLM ones
clients of this project use). Everything else is refused with a 400 naming the field, because vLLM's request
models carry fields that reach its internals: `kv_transfer_params`/`ec_transfer_params` (connectors to other
hosts), `vllm_xargs` (arguments for server-side plug-ins), `prompt_embeds` (tensors deserialised on the server),
`chat_template`/`chat_template_kwargs` (a Jinja template from the client), `priority` and `request_id`
(scheduling and bookkeeping), `cache_salt`, `mm_*`/`media_io_kwargs`. An allow-list fails closed: a field a
future vLLM adds is refused until someone decides it is safe, where a deny-list would forward it.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

# 1 MiB: a full 32k-token context as text or as token ids (~7 bytes each) fits several times over.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024

_COMMON = frozenset({
    "model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "top_k", "min_p", "n", "stop",
    "stop_token_ids", "seed", "frequency_penalty", "presence_penalty", "repetition_penalty", "logit_bias", "logprobs",
    "prompt_logprobs", "echo", "user", "response_format", "ignore_eos", "min_tokens", "include_stop_str_in_output",
    "skip_special_tokens", "spaces_between_special_tokens", "bad_words", "allowed_token_ids", "return_token_ids",
    "truncate_prompt_tokens",
})
ALLOWED_FIELDS: dict[str, frozenset[str]] = {
    "/v1/completions": _COMMON | {"prompt", "suffix"},
    "/v1/chat/completions": _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice",
                                       "parallel_tool_calls", "add_generation_prompt", "continue_final_message",
                                       "reasoning_effort", "include_reasoning"},
}
STREAM_OPTIONS = frozenset({"include_usage", "continuous_usage_stats"})


class BodyError(Exception):
    """A body the gateway refuses: becomes an OpenAI-style error with this status, code and parameter."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to be larger than `limit` (declared or received)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyError(413, "body_too_large", f"the request body is {declared} bytes; the limit is {limit} bytes")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise BodyError(413, "body_too_large", f"the request body is larger than the limit of {limit} bytes")
    return bytes(data)


def _no_constants(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def parse_object(raw: bytes) -> dict[str, Any]:
    """Strict JSON (no NaN/Infinity), an object at the top."""
    try:
        body = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError; RecursionError: deep nesting
        reason = "too deeply nested" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise BodyError(400, "invalid_json", f"the request body must be a JSON object ({reason})") from None
    if not isinstance(body, dict):
        raise BodyError(400, "invalid_json", f"the request body must be a JSON object, not {type(body).__name__}")
    return body


def check_fields(path: str, body: dict[str, Any]) -> None:
    """Only allow-listed fields, with the types the gateway itself relies on."""
    unknown = sorted(set(body) - ALLOWED_FIELDS[path])
    if unknown:
        shown = ", ".join(f"`{name[:64]}`" for name in unknown[:5])
        raise BodyError(400, "unsupported_field", f"this gateway does not accept {shown} on {path}", unknown[0][:64])
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise BodyError(400, "invalid_type", "`stream` must be true or false", "stream")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise BodyError(400, "invalid_type", "`stream_options` must be an object", "stream_options")
        extra = sorted(set(options) - STREAM_OPTIONS)
        if extra:
            raise BodyError(400, "unsupported_field", f"`stream_options` accepts only {sorted(STREAM_OPTIONS)}, "
                            f"not `{extra[0][:64]}`", "stream_options")


async def read_request(request: Request, path: str, limit: int) -> dict[str, Any]:
    body = parse_object(await read_limited(request, limit))
    check_fields(path, body)
    return body
