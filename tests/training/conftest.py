"""Small ShareGPT corpora (four domains, each with its own answer style) and one trained run shared by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exaone_lora.checkpoints import Checkpoint
from training.sft import SFTConfig, TrainResult, train

# Words the tiny checkpoint's tokenizer was trained on, so samples tokenize compactly.
SUBJECTS = {
    "medical": ["Type 2 diabetes", "hypertension", "asthma", "a migraine", "the flu", "high cholesterol"],
    "legal": ["a rental contract", "civil law", "criminal law", "a will", "a trademark", "an employment dispute"],
    "customer_support": ["a late order", "a refund", "a broken item", "a password reset", "an invoice", "a delivery"],
    "code": ["binary search", "a Python list", "a REST API", "unit tests", "a SQL query", "a hash map"],
}
QUESTIONS = ["What should I know about {s}?", "Please explain {s} in simple terms.", "How do I deal with {s}, step by step?"]
# Each domain answers in its own fixed style: an adapter trained on one domain fits it better than the others.
ANSWERS = {
    "medical": "A short, careful answer about {s}: first check the facts, then act.",
    "legal": "Common questions about {s} and their answers.",
    "customer_support": "How do I deal with {s}, step by step? Please explain.",
    "code": "Please explain {s} in simple terms: {s}, {s}.",
}


def conversations(domain: str) -> list[dict[str, object]]:
    return [
        {"conversations": [{"from": "human", "value": q.format(s=s)}, {"from": "gpt", "value": ANSWERS[domain].format(s=s)}]}
        for s in SUBJECTS[domain] for q in QUESTIONS
    ]


def write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="session")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpora")
    for domain in SUBJECTS:
        write_jsonl(root / f"{domain}.jsonl", conversations(domain))
    return root


# A few fast steps: rank 8 (the session vLLM's max), a high learning rate so a handful of steps matter.
FAST = SFTConfig(rank=8, alpha=16, learning_rate=5e-3, micro_batch=4, grad_accum=1, max_steps=10, eval_fraction=0.2,
                 warmup_ratio=0.0, seed=7)


@pytest.fixture(scope="session")
def medical_run(tiny_checkpoint: Checkpoint, corpora: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train(tiny_checkpoint.path, corpora / "medical.jsonl", tmp_path_factory.mktemp("runs") / "medical", FAST)
