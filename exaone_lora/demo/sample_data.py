"""Small, deterministic ShareGPT data per domain for the demo (production generates it: `exaone-lora train generate`)."""

from __future__ import annotations

import json
import random
from pathlib import Path

TOPICS = {
    "medical": (["Type 2 diabetes", "hypertension", "asthma", "migraine", "high cholesterol", "the flu"],
                "Clinical summary for {t}: symptoms, first-line treatment, monitoring. Consult a clinician."),
    "legal": (["a rental contract", "civil law", "criminal law", "a will", "a trademark", "an employment dispute"],
              "Legal overview of {t}: the governing statute, the key case law, the next procedural step."),
    "customer_support": (["a late order", "a refund", "a broken item", "a password reset", "an invoice", "a delivery"],
                         "Sorry about {t}. Ticket opened, escalated to the right team, resolved within 48 hours."),
    "code": (["binary search", "a Python list", "a REST API", "unit tests", "a SQL query", "a hash map"],
             "def solve(data: list[int]) -> int:  # {t}: typed, documented, tested; avoid the linear anti-pattern"),
}
QUESTIONS = ["What should I know about {t}?", "Explain {t} briefly.", "How do I handle {t}?", "Give me the key facts on {t}."]


def write_domain(domain: str, path: Path, samples: int, seed: int = 0) -> Path:
    """`samples` conversations for `domain`, each a system turn, a question and the domain's answer style."""
    topics, answer = TOPICS[domain]
    rng = random.Random(f"{domain}-{seed}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for i in range(samples):
            topic = topics[i % len(topics)]
            question = rng.choice(QUESTIONS).format(t=topic)
            record = {"conversations": [
                {"from": "system", "value": f"You are a {domain.replace('_', ' ')} assistant."},
                {"from": "human", "value": question},
                {"from": "gpt", "value": answer.format(t=topic)},
            ]}
            out.write(json.dumps(record) + "\n")
    return path
