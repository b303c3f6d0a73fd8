"""Hostile requests against the real gateway in front of the stand-in replica (benchmarks/sse_upstream.py), generated
with hypothesis: malformed JSON, bodies past the limit, odd headers, unknown models, raw version names, wrong keys,
fields vLLM would act on. Every answer is a success or a 4xx with a JSON error message, never a 5xx, a dropped
connection or a host path; nothing stays in flight afterwards. Loopback only, bounded in count."""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from service.gateway import GatewayApps
from service.gateway.body import ALLOWED_FIELDS
from service.gateway.server import RunningGateway
from tests.service.gateway.test_body import INTERNAL_FIELDS
from tests.support.gateway_replicas import admin_key, gateway, settled, stand_in

LIMIT = 8 * 1024
API_KEY = "fuzz-api-key-0123456789"
MODELS = ["medical", "exaone", "medical-v1", "medical-v2", "legal", "MEDICAL", "medical ", "../medical-v1", "",
          "/data/lora-adapters/medical-v1", "medical\u0000", "\u00e9xaone"]
# Where the stand-in says its weights live (`root` in /v1/models): must never reach a client.
LEAKS = ("/adapters/", "/models/", "Traceback", "/data/")


@dataclass
class Fuzzed:
    gateway: RunningGateway
    apps: GatewayApps
    client: httpx.Client


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Fuzzed]:
    with stand_in(["medical-v1", "legal-v2"]) as upstream, \
            gateway(upstream, admin_key(), api_key=API_KEY, max_body_bytes=LIMIT) as (running, apps), \
            httpx.Client(timeout=30) as client:
        yield Fuzzed(running, apps, client)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=4), max_leaves=12)
# Bodies a client may send (values the stand-in can act on): these reach the replica, half of them on the alias.
clean_bodies = st.fixed_dictionaries(
    {"model": st.one_of(st.just("medical"), st.sampled_from(MODELS)), "stream": st.booleans()},
    optional={"prompt": st.text(max_size=40) | st.lists(st.integers(0, 1000), max_size=5),
              "max_tokens": st.integers(1, 6),
              "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
              "temperature": st.floats(0, 2), "user": st.text(max_size=10)})
# The same with a field of the wrong type, one that reaches vLLM's internals, or a made-up one.
hostile_fields = st.one_of(
    st.tuples(st.just("stream"), json_values.filter(lambda v: v is not None and not isinstance(v, bool))),
    st.tuples(st.just("stream_options"), json_values.filter(lambda v: v is not None and not isinstance(v, dict))),
    st.tuples(st.just("model"), json_values.filter(lambda v: not isinstance(v, str))),
    st.sampled_from(sorted(INTERNAL_FIELDS.items())),
    st.tuples(st.text(min_size=1, max_size=12).filter(lambda k: k not in ALLOWED_FIELDS["/v1/chat/completions"]),
              json_values))


@st.composite
def payloads(draw: st.DrawFn) -> tuple[bytes | Iterator[bytes], str]:
    kind = draw(st.sampled_from(["clean"] * 4 + ["hostile"] * 2 + ["raw", "json", "huge", "huge-chunked", "text"]))
    if kind == "clean":
        return json.dumps(draw(clean_bodies)).encode(), kind
    if kind == "hostile":
        key, value = draw(hostile_fields)
        return json.dumps({**draw(clean_bodies), key: value}).encode(), kind
    if kind == "json":
        return json.dumps(draw(json_values)).encode(), kind
    if kind == "raw":
        return draw(st.binary(max_size=200)), kind
    if kind == "text":  # JSON-looking text that is not JSON
        return draw(st.sampled_from(['{"model": "medical",', "{'model': 'medical'}", '{"model": NaN}', "[" * 3000,
                                     '{"model": "medical"} trailing', "\ufeff{}", "null"])).encode(), kind
    size = draw(st.integers(LIMIT + 1, 4 * LIMIT))
    body = json.dumps({"model": "medical", "prompt": "x" * size}).encode()
    if kind == "huge":
        return body, kind
    return iter([body[i:i + 4096] for i in range(0, len(body), 4096)]), kind


header_names = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=20).filter(
    lambda n: n.lower() not in {"content-length", "transfer-encoding", "host", "connection", "expect", "authorization",
                                "content-encoding", "upgrade", "te", "trailer"})
header_values = st.text(string.printable.strip("\r\n\x0b\x0c") + " ", max_size=60).map(str.strip)
content_types = st.sampled_from([None, "application/json", "text/plain", "application/x-www-form-urlencoded",
                                 "application/json; charset=latin-1", "multipart/form-data; boundary=x"])
WRONG_KEYS = [None, f"Bearer {API_KEY}x", "Bearer", API_KEY, f"bearer {API_KEY}", "Basic Zm9vOmJhcg==",
              f"Bearer {API_KEY[:-1]}", "Bearer \u00e9\u00e9\u00e9".encode("latin-1")]


def send(fuzzed: Fuzzed, method: str, path: str, content: bytes | Iterator[bytes] | None, headers: dict[str, str]
         ) -> tuple[httpx.Response, str]:
    request = fuzzed.client.build_request(method, f"{fuzzed.gateway.public_url}{path}", headers=headers,
                                          content=content)
    response = fuzzed.client.send(request, stream=True)
    try:
        text = response.read().decode(errors="replace")
    finally:
        response.close()
    event(f"status {response.status_code}")  # `--hypothesis-show-statistics`: how far the examples got
    return response, text


def check_answer(fuzzed: Fuzzed, response: httpx.Response, text: str, sent: bytes | Iterator[bytes] | None) -> None:
    assert response.status_code < 500, (response.status_code, text[:500])
    echoed = sent.decode(errors="replace") if isinstance(sent, bytes) else ""  # a client's own model name comes back
    for leak in LEAKS:
        assert leak not in text or leak in echoed, (leak, text[:500])
    if response.status_code >= 400:
        error = json.loads(text)["error"]
        assert isinstance(error["message"], str) and error["message"], text
    elif "text/event-stream" in response.headers.get("content-type", ""):
        assert text.endswith("data: [DONE]\n\n"), text[-200:]
    assert settled(fuzzed.apps), fuzzed.apps.core.snapshot()
    # The replica stays healthy: no hostile input makes the gateway call it down.
    assert all(r.healthy for r in fuzzed.apps.core.replicas)


FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


@FUZZ
@given(path=st.one_of(st.just("/v1/completions"), st.sampled_from(sorted(ALLOWED_FIELDS))), payload=payloads(),
       content_type=content_types, extra=st.dictionaries(header_names, header_values, max_size=4))
def test_hostile_bodies_and_headers_get_a_clear_answer_and_leave_nothing_in_flight(
        fuzzed: Fuzzed, path: str, payload: tuple[bytes | Iterator[bytes], str], content_type: str | None,
        extra: dict[str, str]) -> None:
    content, kind = payload
    headers = {**extra, "Authorization": f"Bearer {API_KEY}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response, text = send(fuzzed, "POST", path, content, headers)
    check_answer(fuzzed, response, text, content)
    assert (response.status_code == 413) == kind.startswith("huge"), (kind, response.status_code, text[:300])
    if kind in ("hostile", "raw", "json", "text"):
        assert 400 <= response.status_code < 500, (kind, response.status_code, text[:300])


@settings(FUZZ, max_examples=60)
@given(method=st.sampled_from(["POST", "GET", "PUT", "DELETE", "PATCH"]),
       path=st.sampled_from([*ALLOWED_FIELDS, "/v1/models", "/metrics", "/v1/load_lora_adapter", "/admin/state",
                             "/v1/completions/../../admin/state", "/v1/x", "/docs", "/openapi.json"]),
       payload=payloads(), auth=st.sampled_from(WRONG_KEYS))
def test_wrong_keys_paths_and_methods_are_refused(fuzzed: Fuzzed, method: str, path: str,
                                                  payload: tuple[bytes | Iterator[bytes], str], auth: str | None) -> None:
    headers = {} if auth is None else {"Authorization": auth}
    content = payload[0] if method != "GET" else None
    response, text = send(fuzzed, method, path, content, headers)
    check_answer(fuzzed, response, text, content)
    assert response.status_code in (401, 404, 405), (response.status_code, text[:300])
    if (path in ALLOWED_FIELDS and method == "POST") or (path == "/v1/models" and method == "GET"):
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
