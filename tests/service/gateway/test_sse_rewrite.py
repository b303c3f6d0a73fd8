"""The gateway's per-chunk rewrite, on chunks exactly as vLLM 0.32 streams them (captured from the CPU server)."""

from __future__ import annotations

import json

from service.gateway.proxy import rewrite_chunk

TOKEN = ('{"id":"cmpl-b6be240b1c3dff87","object":"text_completion","created":1795560747,"model":"medical-v3",'
         '"choices":[{"index":0,"text":"\\"model\\":\\"medical-v3\\"","logprobs":null,"finish_reason":null,'
         '"stop_reason":null,"token_ids":[3559]}]}')
USAGE = ('{"id":"chatcmpl-a68f850ce365f66c","object":"chat.completion.chunk","created":1795560747,"model":"medical-v3",'
         '"choices":[],"usage":{"prompt_tokens":8,"total_tokens":16,"completion_tokens":8},'
         '"system_fingerprint":"vllm-0.32.0-158e42ab"}')


def test_token_chunks_get_the_alias_and_keep_everything_else() -> None:
    chunk = rewrite_chunk(TOKEN, "medical-v3", "medical", client_wants_usage=False)
    assert chunk.has_choices and chunk.tokens == 0 and chunk.out is not None
    out, original = json.loads(chunk.out), json.loads(TOKEN)
    assert out["model"] == "medical"
    # Generated text that happens to contain the version name is the model's output: left alone.
    assert out["choices"] == original["choices"]
    assert {k: v for k, v in out.items() if k != "model"} == {k: v for k, v in original.items() if k != "model"}


def test_the_usage_chunk_is_counted_and_dropped_unless_the_client_asked() -> None:
    dropped = rewrite_chunk(USAGE, "medical-v3", "medical", client_wants_usage=False)
    assert (dropped.out, dropped.tokens, dropped.has_choices, dropped.prompt_tokens) == (None, 8, False, 8)
    kept = rewrite_chunk(USAGE, "medical-v3", "medical", client_wants_usage=True)
    assert (kept.tokens, kept.prompt_tokens) == (8, 8) and kept.out is not None
    assert json.loads(kept.out)["model"] == "medical" and json.loads(kept.out)["usage"]["completion_tokens"] == 8


def test_unexpected_layout_falls_back_to_parsing() -> None:
    spaced = json.dumps(json.loads(TOKEN))  # `"model": "medical-v3"` with a space: the fast path does not match
    chunk = rewrite_chunk(spaced, "medical-v3", "medical", client_wants_usage=False)
    assert chunk.out is not None and json.loads(chunk.out)["model"] == "medical" and chunk.has_choices


def test_prompt_and_completion_tokens_are_read_apart() -> None:
    usage = json.loads(USAGE)
    usage["usage"] = {"prompt_tokens": 21, "total_tokens": 24, "completion_tokens": 3}
    chunk = rewrite_chunk(json.dumps(usage, separators=(",", ":")), "medical-v3", "medical", client_wants_usage=False)
    assert (chunk.prompt_tokens, chunk.tokens) == (21, 3)
    # A usage value that is not a count is not counted (and does not end the stream).
    usage["usage"] = {"prompt_tokens": "21", "completion_tokens": -3}
    odd = rewrite_chunk(json.dumps(usage, separators=(",", ":")), "medical-v3", "medical", client_wants_usage=False)
    assert (odd.prompt_tokens, odd.tokens) == (0, 0)
