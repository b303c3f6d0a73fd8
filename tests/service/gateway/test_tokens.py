"""Prompt tokens beside completion tokens, per alias and version (issue 22 item 7), from vLLM's usage: the final
chunk of a stream (the stand-in replica writes vLLM 0.32's layout byte for byte) and the body of an answer that is
not streamed."""

from __future__ import annotations

import httpx

from tests.support.gateway_replicas import ScriptedReplica, admin_key, gateway, metric, serving, settled, stand_in

LABELS = {"alias": "medical", "version": "medical-v1"}


def test_streamed_prompt_tokens_are_counted_per_alias_and_version() -> None:
    with stand_in() as upstream, gateway(upstream, admin_key()) as (gw, apps), httpx.Client(timeout=30) as client:
        for max_tokens in (3, 5):
            with client.stream("POST", f"{gw.public_url}/v1/completions",
                               json={"model": "medical", "prompt": "hi", "max_tokens": max_tokens, "stream": True}) as r:
                assert r.status_code == 200 and "".join(r.iter_text()).endswith("data: [DONE]\n\n")
        assert settled(apps)
        # The stand-in's usage chunk says 8 prompt tokens per request (benchmarks.sse_upstream.usage_event).
        assert metric(client, gw, "exaone_gateway_prompt_tokens_total", **LABELS) == 16
        assert metric(client, gw, "exaone_gateway_generated_tokens_total", **LABELS) == 8


def test_prompt_tokens_of_an_answer_that_is_not_streamed() -> None:
    replica = ScriptedReplica()
    with serving(replica.handle) as upstream, gateway(upstream, admin_key()) as (gw, _), \
            httpx.Client(timeout=30) as client:
        for model in ("medical", "exaone"):
            assert client.post(f"{gw.public_url}/v1/completions", json={"model": model, "prompt": "hi"}).status_code == 200
        assert metric(client, gw, "exaone_gateway_prompt_tokens_total", **LABELS) == 5
        assert metric(client, gw, "exaone_gateway_generated_tokens_total", **LABELS) == 2
        assert metric(client, gw, "exaone_gateway_prompt_tokens_total", alias="exaone", version="base") == 5
