"""Synthetic ShareGPT data from an OpenAI-compatible endpoint: bounded concurrency, retries, resumable, deduplicated.

Production uses Azure OpenAI through the `openai` SDK (`AzureOpenAI` with a key or an Entra ID token);
anything OpenAI-compatible works otherwise (e.g. the project's own vLLM). Each request asks for one
question/answer pair as JSON under a JSON schema (structured output), so even a weak model yields
parseable samples. Output is appended line by line to `{out_dir}/{domain}.jsonl`; re-running reads what
is there, skips content already present (normalised content hash) and only asks for what is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training import DOMAINS
from training.data import DataError, LineProblem, content_hash, parse_line

DOMAIN_BRIEFS: dict[str, tuple[str, tuple[str, ...]]] = {
    "medical": ("a careful medical information assistant (general information, always suggests seeing a doctor)",
                ("diabetes", "hypertension", "asthma", "migraine", "influenza", "cholesterol", "sleep", "nutrition")),
    "legal": ("a legal information assistant (general information, not legal advice)",
              ("rental contracts", "employment disputes", "wills", "trademarks", "consumer rights", "small claims")),
    "customer_support": ("a polite e-commerce customer support agent",
                         ("late orders", "refunds", "broken items", "password resets", "invoices", "deliveries")),
    "code": ("a senior software engineer who answers with short, correct code",
             ("binary search", "Python lists", "REST APIs", "unit tests", "SQL queries", "hash maps", "regular expressions")),
}


def sample_schema(question_max_chars: int, answer_max_chars: int) -> dict[str, Any]:
    """The JSON schema every answer must follow (bounded lengths keep a rambling model inside max_tokens)."""
    return {
        "type": "object",
        "properties": {
            "question": {"type": "string", "minLength": 1, "maxLength": question_max_chars},
            "answer": {"type": "string", "minLength": 1, "maxLength": answer_max_chars},
        },
        "required": ["question", "answer"],
        "additionalProperties": False,
    }


AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"


@dataclass(frozen=True)
class Endpoint:
    """Where to generate. Azure when `azure_endpoint` is set (key, else Entra ID), plain OpenAI-compatible otherwise."""

    model: str
    base_url: str | None = None
    api_key: str | None = None
    azure_endpoint: str | None = None
    api_version: str = "2024-10-21"
    use_entra_id: bool = False
    timeout_s: float = 120.0

    def client(self) -> Any:
        import openai

        # The SDK's own retries are off: `Generator` retries itself so backoff and counts are visible and tested.
        if self.azure_endpoint:
            key = self.api_key or os.environ.get("AZURE_OPENAI_API_KEY")
            if self.use_entra_id or not key:
                from azure.identity import DefaultAzureCredential, get_bearer_token_provider

                provider = get_bearer_token_provider(DefaultAzureCredential(), AZURE_SCOPE)
                return openai.AsyncAzureOpenAI(azure_endpoint=self.azure_endpoint, api_version=self.api_version,
                                               azure_ad_token_provider=provider, max_retries=0, timeout=self.timeout_s)
            return openai.AsyncAzureOpenAI(azure_endpoint=self.azure_endpoint, api_version=self.api_version,
                                           api_key=key, max_retries=0, timeout=self.timeout_s)
        if not self.base_url:
            raise ValueError("set either base_url (any OpenAI-compatible server) or azure_endpoint (Azure OpenAI)")
        key = self.api_key or os.environ.get("OPENAI_API_KEY") or "not-needed"
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=self.timeout_s)


@dataclass(frozen=True)
class GenerationSettings:
    samples_per_domain: int = 80
    concurrency: int = 8
    max_retries: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    max_tokens: int = 1024
    question_max_chars: int = 600
    answer_max_chars: int = 2400
    temperature: float = 1.0
    # Bound on requests per domain (duplicates and unusable answers cost requests): never loop forever.
    max_requests_factor: float = 3.0


@dataclass
class DomainReport:
    domain: str
    path: Path
    existing: int = 0
    written: int = 0
    duplicates: int = 0
    unusable: int = 0
    retries: int = 0
    failed_requests: int = 0
    repaired_tail: bool = False
    errors: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # unusable answers (first 20), for diagnosis

    @property
    def total(self) -> int:
        return self.existing + self.written


class GenerationError(RuntimeError):
    pass


def retryable(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError, openai.APITimeoutError)):
        return True
    return isinstance(exc, openai.APIStatusError) and (exc.status_code == 429 or exc.status_code >= 500)


def retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def read_existing(path: Path) -> tuple[set[str], int, bool]:
    """Hashes of the samples already written, their count, and whether a torn last line was cut off.

    A last line without its newline is what an interrupted append leaves: it is removed. Any other bad
    line is refused (DataError) rather than silently rewritten.
    """
    if not path.exists():
        return set(), 0, False
    data = path.read_bytes()
    repaired = False
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        path.write_bytes(data)
        repaired = True
    hashes: set[str] = set()
    problems: list[LineProblem] = []
    count = 0
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        try:
            conversation = parse_line(line, number)
        except ValueError as exc:
            problems.append(LineProblem(number, str(exc)))
            continue
        hashes.add(content_hash(conversation))
        count += 1
    if problems:
        raise DataError(path, problems)
    return hashes, count, repaired


def build_messages(domain: str, index: int) -> list[dict[str, str]]:
    persona, topics = DOMAIN_BRIEFS[domain]
    topic = topics[index % len(topics)]
    system = (f"You write training data for {persona}. Reply with only a JSON object with the keys "
              "'question' (what a real user would ask) and 'answer' (the assistant's helpful, accurate reply).")
    user = f"Write sample #{index + 1}: a realistic question about {topic}, and the answer. Vary wording and detail."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def to_sharegpt(domain: str, question: str, answer: str) -> dict[str, Any]:
    persona, _ = DOMAIN_BRIEFS[domain]
    return {"conversations": [{"from": "system", "value": f"You are {persona}."},
                              {"from": "human", "value": question.strip()},
                              {"from": "gpt", "value": answer.strip()}]}


class Generator:
    def __init__(self, endpoint: Endpoint, settings: GenerationSettings | None = None, *, client: Any = None,
                 sleep: Callable[[float], Any] = asyncio.sleep):
        self.endpoint = endpoint
        self.settings = settings or GenerationSettings()
        self._client = client
        self._sleep = sleep

    async def _request(self, client: Any, domain: str, index: int, report: DomainReport) -> dict[str, Any] | None:
        s = self.settings
        # OpenAI's structured output; vLLM maps it onto its own grammar-constrained decoding.
        schema = sample_schema(s.question_max_chars, s.answer_max_chars)
        response_format = {"type": "json_schema", "json_schema": {"name": "sample", "strict": True, "schema": schema}}
        for attempt in range(s.max_retries + 1):
            try:
                response = await client.chat.completions.create(
                    model=self.endpoint.model, messages=build_messages(domain, index), max_tokens=s.max_tokens,
                    temperature=s.temperature, response_format=response_format)
            except Exception as exc:
                if not retryable(exc) or attempt == s.max_retries:
                    report.failed_requests += 1
                    report.errors.append(f"request {index}: {type(exc).__name__}: {exc}"[:300])
                    return None
                report.retries += 1
                delay = retry_after(exc)
                if delay is None:
                    delay = s.backoff_base_s * 2**attempt * (0.5 + random.random() / 2)
                await self._sleep(min(delay, s.backoff_max_s))
                continue
            text = response.choices[0].message.content or ""
            try:
                # strict=False: raw control characters inside strings are legal for the schema grammar.
                payload = json.loads(text, strict=False)
                record = to_sharegpt(domain, str(payload["question"]), str(payload["answer"]))
                parse_line(json.dumps(record), 0)
            except (ValueError, KeyError, TypeError) as exc:
                report.unusable += 1
                if len(report.rejected) < 20:
                    finish = response.choices[0].finish_reason
                    report.rejected.append(f"request {index} ({finish}): {exc}: {text[:160]!r}")
                return None
            return record
        return None

    async def generate_domain(self, domain: str, out_dir: Path, on_sample: Callable[[str, int], None] | None = None
                              ) -> DomainReport:
        if domain not in DOMAIN_BRIEFS:
            raise ValueError(f"unknown domain {domain!r} (known: {', '.join(DOMAIN_BRIEFS)})")
        path = out_dir / f"{domain}.jsonl"
        out_dir.mkdir(parents=True, exist_ok=True)
        hashes, existing, repaired = read_existing(path)
        report = DomainReport(domain, path, existing=existing, repaired_tail=repaired)
        target = self.settings.samples_per_domain
        budget = int(target * self.settings.max_requests_factor) + self.settings.concurrency
        client = self._client or self.endpoint.client()
        lock = asyncio.Lock()
        next_index = existing  # later samples ask for new numbers, so a resumed run does not repeat prompts
        requests = 0

        async def worker(handle: Any) -> None:
            nonlocal next_index, requests
            while True:
                async with lock:
                    if report.total >= target or requests >= budget:
                        return
                    index, requests = next_index, requests + 1
                    next_index += 1
                record = await self._request(client, domain, index, report)
                if record is None:
                    continue
                async with lock:
                    key = content_hash(record)
                    if key in hashes:
                        report.duplicates += 1
                        continue
                    if report.total >= target:
                        return
                    hashes.add(key)
                    # One line per write, flushed: an interruption loses at most the line being written.
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                    handle.flush()
                    report.written += 1
                    if on_sample is not None:
                        on_sample(domain, report.total)

        with path.open("a", encoding="utf-8") as handle:
            await asyncio.gather(*(worker(handle) for _ in range(max(1, self.settings.concurrency))))
        return report

    async def generate(self, domains: Sequence[str], out_dir: Path | str, *, progress: bool = True) -> list[DomainReport]:
        out = Path(out_dir)
        owned = self._client is None
        if owned:
            self._client = self.endpoint.client()
        try:
            return await self._generate(domains, out, progress)
        finally:
            if owned:
                await self._client.close()
                self._client = None

    async def _generate(self, domains: Sequence[str], out: Path, progress: bool) -> list[DomainReport]:
        if not progress:
            return [await self.generate_domain(d, out) for d in domains]
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
            tasks = {d: bar.add_task(d, total=self.settings.samples_per_domain) for d in domains}
            reports = []
            for domain in domains:
                report = await self.generate_domain(
                    domain, out, on_sample=lambda name, done: bar.update(tasks[name], completed=done))
                bar.update(tasks[domain], completed=report.total)
                reports.append(report)
            return reports


def generate(endpoint: Endpoint, out_dir: Path | str, domains: Sequence[str] = DOMAINS,
             settings: GenerationSettings | None = None, *, progress: bool = True) -> list[DomainReport]:
    """Synchronous entry point (the CLI's): generate missing samples for each domain."""
    return asyncio.run(Generator(endpoint, settings).generate(domains, out_dir, progress=progress))
