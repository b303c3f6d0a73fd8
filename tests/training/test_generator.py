"""The data generator against real HTTP servers: the session vLLM (structured output) and a flaky local one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.asgi import serve_in_thread
from tests.support.processes import RunningProcess
from training.data import content_hash, load_corpus
from training.generator import Endpoint, GenerationSettings, Generator, generate


class FlakyOpenAI:
    """An OpenAI-compatible chat endpoint that answers 429, then 500, then samples; every 4th sample repeats one."""

    def __init__(self, failures: tuple[int, ...] = (429, 500)):
        self.failures = list(failures)
        self.calls = 0
        self.served = 0
        self.bodies: list[dict[str, object]] = []

    async def chat(self, request: Request) -> JSONResponse:
        self.calls += 1
        self.bodies.append(await request.json())
        if self.failures:
            status = self.failures.pop(0)
            headers = {"retry-after": "0"} if status == 429 else {}
            return JSONResponse({"error": {"message": f"injected {status}"}}, status_code=status, headers=headers)
        self.served += 1
        n = 1 if self.served % 4 == 0 else self.served  # a duplicate of sample 1 now and then
        content = json.dumps({"question": f"Question number {n}?", "answer": f"Answer number {n}."})
        return JSONResponse({"id": f"c{self.calls}", "object": "chat.completion", "created": 0, "model": "flaky",
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": content}}]})


@pytest.fixture()
def flaky() -> Iterator[tuple[FlakyOpenAI, str]]:
    fake = FlakyOpenAI()
    app = Starlette(routes=[Route("/v1/chat/completions", fake.chat, methods=["POST"])])
    with serve_in_thread(app) as url:
        yield fake, f"{url}/v1"


def fast_settings(samples: int, concurrency: int = 1) -> GenerationSettings:
    return GenerationSettings(samples_per_domain=samples, concurrency=concurrency, max_retries=3, backoff_base_s=0.01)


def test_retries_on_429_and_500_then_resumes_without_duplicates(flaky: tuple[FlakyOpenAI, str], tmp_path: Path) -> None:
    fake, url = flaky
    endpoint = Endpoint(model="flaky", base_url=url)
    [first] = generate(endpoint, tmp_path, ["legal"], fast_settings(5), progress=False)
    assert first.retries == 2 and first.failed_requests == 0  # the 429 and the 500 were retried, not lost
    assert first.written == 5 and first.duplicates == 1  # sample 4 repeated sample 1 and was not written
    path = tmp_path / "legal.jsonl"
    assert len(load_corpus(path).conversations) == 5
    # Interrupted mid-write: a torn last line. The next run cuts it off and continues to the new target.
    path.write_bytes(path.read_bytes() + b'{"conversations": [{"from": "hu')
    [second] = generate(endpoint, tmp_path, ["legal"], fast_settings(8, concurrency=3), progress=False)
    assert second.repaired_tail and second.existing == 5 and second.written == 3 and second.total == 8
    corpus = load_corpus(path)
    hashes = [content_hash(c) for c in corpus.conversations]
    assert len(hashes) == len(set(hashes)) == 8
    # Nothing left to do: a third run asks for nothing.
    calls = fake.calls
    [third] = generate(endpoint, tmp_path, ["legal"], fast_settings(8), progress=False)
    assert third.written == 0 and fake.calls == calls
    assert fake.bodies[0]["response_format"]["type"] == "json_schema"  # type: ignore[index]


def test_gives_up_after_bounded_retries(flaky: tuple[FlakyOpenAI, str], tmp_path: Path) -> None:
    fake, url = flaky
    fake.failures = [503] * 50
    settings = GenerationSettings(samples_per_domain=2, concurrency=1, max_retries=2, backoff_base_s=0.01,
                                  max_requests_factor=1.0)
    [report] = generate(Endpoint(model="flaky", base_url=url), tmp_path, ["code"], settings, progress=False)
    assert report.written == 0 and report.failed_requests == 3 and report.retries == 6
    assert fake.calls == 9 and "503" in report.errors[0]


@pytest.mark.vllm
def test_generates_parseable_samples_from_the_real_vllm(vllm: RunningProcess, tmp_path: Path) -> None:
    """Random weights write garbage, but structured output (JSON schema) keeps every answer a valid sample."""
    settings = GenerationSettings(samples_per_domain=3, concurrency=3, max_retries=1, max_tokens=400,
                                  question_max_chars=40, answer_max_chars=60, max_requests_factor=4)
    endpoint = Endpoint(model="exaone", base_url=f"{vllm.url}/v1")
    reports = asyncio.run(Generator(endpoint, settings).generate(["medical", "code"], tmp_path, progress=True))
    for report in reports:
        assert report.failed_requests == 0, report.errors
        assert report.total == 3, (report, report.rejected)
        corpus = load_corpus(tmp_path / f"{report.domain}.jsonl")
        assert len(corpus.conversations) == 3
        assert [t.role for t in corpus.conversations[0].turns] == ["system", "user", "assistant"]


def test_endpoint_builds_azure_clients_with_key_or_entra_id(monkeypatch: pytest.MonkeyPatch) -> None:
    import openai

    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "test-key-not-a-secret")
    keyed = Endpoint(model="gpt-4o", azure_endpoint="https://example.openai.azure.com").client()
    assert isinstance(keyed, openai.AsyncAzureOpenAI) and keyed.api_key == "test-key-not-a-secret"
    assert keyed.max_retries == 0  # the generator's own retry loop is the only one
    entra = Endpoint(model="gpt-4o", azure_endpoint="https://example.openai.azure.com", use_entra_id=True).client()
    assert isinstance(entra, openai.AsyncAzureOpenAI) and entra._azure_ad_token_provider is not None
    plain = Endpoint(model="exaone", base_url="http://127.0.0.1:9/v1").client()
    assert type(plain) is openai.AsyncOpenAI
    with pytest.raises(ValueError, match="base_url"):
        Endpoint(model="x").client()
