"""What the public API reads and forwards: a bounded body, allow-listed fields only, and books that always close
(a replica's answer that is not JSON, or a body cut short, must not leave a request in flight for ever)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from service.gateway.body import ALLOWED_FIELDS
from tests.support.gateway_replicas import ScriptedReplica, admin_key, gateway, metric, serving, settled, stand_in

LIMIT = 16 * 1024

# Fields of vLLM 0.32's request models that reach its internals; none may pass the gateway.
INTERNAL_FIELDS = {"kv_transfer_params": {"remote_host": "10.0.0.9"}, "ec_transfer_params": {}, "vllm_xargs": {"a": 1},
                   "prompt_embeds": "AAAA", "chat_template": "{{ cycler.__init__.__globals__ }}",
                   "chat_template_kwargs": {"x": 1}, "priority": -100, "request_id": "mine", "cache_salt": "s",
                   "mm_processor_kwargs": {}, "media_io_kwargs": {}, "lora_request": {"lora_path": "/etc"}}


@pytest.fixture
def replica() -> ScriptedReplica:
    return ScriptedReplica()


def _post(client: httpx.Client, url: str, body: object, path: str = "/v1/completions") -> httpx.Response:
    return client.post(f"{url}{path}", json=body)


def test_a_body_over_the_limit_is_refused_with_413(replica: ScriptedReplica) -> None:
    key = admin_key()
    with serving(replica.handle) as upstream, gateway(upstream, key, max_body_bytes=LIMIT) as (gw, _), \
            httpx.Client(timeout=30) as client:
        big = {"model": "medical", "prompt": "x" * LIMIT}
        declared = _post(client, gw.public_url, big)
        assert declared.status_code == 413, declared.text
        assert declared.json()["error"]["code"] == "body_too_large" and str(LIMIT) in declared.json()["error"]["message"]

        def chunks() -> Iterator[bytes]:  # no content-length: the limit holds while the body arrives
            yield b'{"model": "medical", "prompt": "'
            for _ in range(LIMIT // 1024 + 2):
                yield b"x" * 1024
            yield b'"}'

        streamed = client.post(f"{gw.public_url}/v1/completions", content=chunks())
        assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "body_too_large"
        just_under = _post(client, gw.public_url, {"model": "medical", "prompt": "x" * (LIMIT - 100)})
        assert just_under.status_code == 200, just_under.text
    assert len(replica.completions()) == 1  # only the one within the limit was forwarded


@pytest.mark.parametrize("field", sorted(INTERNAL_FIELDS))
def test_fields_that_reach_vllm_internals_are_refused_by_name(replica: ScriptedReplica, field: str) -> None:
    with serving(replica.handle) as upstream, gateway(upstream, admin_key()) as (gw, _), httpx.Client(timeout=30) as c:
        for path in ALLOWED_FIELDS:
            body = {"model": "medical", "prompt": "hi", "messages": [{"role": "user", "content": "hi"}],
                    field: INTERNAL_FIELDS[field]}
            body = {k: v for k, v in body.items() if k in ALLOWED_FIELDS[path] or k == field}
            refused = _post(c, gw.public_url, body, path)
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert error["code"] == "unsupported_field" and f"`{field}`" in error["message"] and error["param"] == field
    assert replica.completions() == []


def test_allowed_fields_are_forwarded_unchanged_but_the_model(replica: ScriptedReplica) -> None:
    body = {"model": "medical", "prompt": "hi", "max_tokens": 2, "temperature": 0.5, "top_k": 3, "seed": 7,
            "stop": ["\n"], "logprobs": 1, "echo": True, "ignore_eos": True, "min_tokens": 2, "return_token_ids": True,
            "user": "u-1"}
    with serving(replica.handle) as upstream, gateway(upstream, admin_key()) as (gw, _), httpx.Client(timeout=30) as c:
        answer = _post(c, gw.public_url, body)
        assert answer.status_code == 200 and answer.json()["model"] == "medical"
        bad_options = _post(c, gw.public_url, {**body, "stream": True, "stream_options": {"include_usage": True,
                                                                                           "debug": True}})
        assert bad_options.status_code == 400 and "`debug`" in bad_options.json()["error"]["message"]
        not_bool = _post(c, gw.public_url, {**body, "stream": "yes"})
        assert not_bool.status_code == 400 and not_bool.json()["error"]["param"] == "stream"
    assert replica.completions() == [{**body, "model": "medical-v1"}]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'{"model": NaN}', b"\xff\xfe{", b"[" * 50_000 + b"]" * 50_000,
                                 b'{"model": 1' + b"0" * 5000 + b"}", b""])
def test_bodies_that_are_not_a_json_object_get_a_400(replica: ScriptedReplica, raw: bytes) -> None:
    with serving(replica.handle) as upstream, gateway(upstream, admin_key(), max_body_bytes=256 * 1024) as (gw, _), \
            httpx.Client(timeout=30) as client:
        answer = client.post(f"{gw.public_url}/v1/completions", content=raw, headers={"content-type": "application/json"})
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "invalid_json" and answer.headers["x-request-id"]


@pytest.mark.parametrize(("prompt", "status", "code"), [("not-json", 502, "upstream_bad_response"),
                                                        ("cut-error", 502, "upstream_unreachable"),
                                                        ("cut-ok", 502, "upstream_unreachable")])
def test_a_bad_upstream_answer_still_closes_the_books(replica: ScriptedReplica, prompt: str, status: int,
                                                      code: str) -> None:
    key = admin_key()
    auth = {"Authorization": f"Bearer {key}"}
    with serving(replica.handle) as upstream, gateway(upstream, key) as (gw, apps), httpx.Client(timeout=30) as c:
        answer = _post(c, gw.public_url, {"model": "medical", "prompt": prompt, "max_tokens": 2})
        assert answer.status_code == status and answer.json()["error"]["code"] == code, answer.text
        assert settled(apps, timeout=5), apps.core.snapshot()
        assert metric(c, gw, "exaone_gateway_in_flight_requests", alias="medical") == 0
        assert metric(c, gw, "exaone_gateway_request_errors_total", alias="medical", version="medical-v1",
                      reason=code) == 1
        # A later drain of that version returns at once instead of timing out on a request that ended long ago.
        assert c.delete(f"{gw.admin_url}/admin/aliases/medical", headers=auth).status_code == 200
        drained = c.post(f"{gw.admin_url}/admin/versions/medical-v1/drain", json={"timeout": 2}, headers=auth)
        assert drained.status_code == 200 and drained.json() == {"name": "medical-v1", "in_flight": 0}, drained.text


def test_a_client_that_leaves_mid_stream_is_counted_and_leaves_nothing_in_flight() -> None:
    # 200 tokens 20 ms apart: the stream is still running when the client goes.
    with stand_in(interval_s=0.02) as upstream, gateway(upstream, admin_key()) as (gw, apps), \
            httpx.Client(timeout=30) as client:
        for _ in range(3):
            with client.stream("POST", f"{gw.public_url}/v1/completions",
                               json={"model": "medical", "prompt": "x", "max_tokens": 200, "stream": True}) as response:
                assert next(response.iter_lines()).startswith("data: {")
            # Leaving the block closes the connection after one event.
        assert settled(apps), apps.core.snapshot()
        assert metric(client, gw, "exaone_gateway_request_errors_total", alias="medical", version="medical-v1",
                      reason="client_disconnected") == 3
