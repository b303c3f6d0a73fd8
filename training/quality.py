"""Domain-quality check: eval loss of every adapter (and the base) on held-out samples of every domain.

The seed compared 4 prompts × 5 models by eye; this computes the same matrix as numbers: each adapter
should have its lowest loss on its own domain, and beat the base model there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.data import Conversation, collate, load_corpus, single_rows, split_eval, tokenize_all

BASE = "base"


@dataclass(frozen=True)
class QualityReport:
    domains: list[str]
    models: list[str]  # "base" then one per adapter
    loss: dict[str, dict[str, float]]  # model -> domain -> mean token loss
    samples: dict[str, int]

    def own_domain_best(self) -> dict[str, bool]:
        """For each adapter: is its own domain the one where it has the lowest loss, and below the base there?"""
        out = {}
        for model in self.models:
            if model == BASE or model not in self.domains:
                continue
            row = self.loss[model]
            out[model] = min(row, key=row.__getitem__) == model and row[model] < self.loss[BASE][model]
        return out

    def to_json(self) -> dict[str, Any]:
        return {"domains": self.domains, "models": self.models, "eval_loss": self.loss, "held_out_samples": self.samples,
                "own_domain_best": self.own_domain_best()}

    def to_markdown(self) -> str:
        head = "| model | " + " | ".join(self.domains) + " |"
        rule = "|---|" + "---|" * len(self.domains)
        lines = ["# Domain quality: held-out eval loss (lower is better)", "",
                 "Rows are models, columns the domain of the held-out samples; **bold** marks each column's best.", "",
                 head, rule]
        best = {d: min(self.models, key=lambda m: self.loss[m][d]) for d in self.domains}
        for model in self.models:
            cells = [f"**{self.loss[model][d]:.4f}**" if best[d] == model else f"{self.loss[model][d]:.4f}" for d in self.domains]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines += ["", "Held-out samples: " + ", ".join(f"{d} {n}" for d, n in self.samples.items()), ""]
        verdicts = self.own_domain_best()
        if verdicts:
            lines.append("Own domain best and better than base: " +
                         ", ".join(f"{m} {'yes' if ok else 'NO'}" for m, ok in verdicts.items()))
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path | str) -> tuple[Path, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        md, js = out / "quality.md", out / "quality.json"
        md.write_text(self.to_markdown())
        js.write_text(json.dumps(self.to_json(), indent=2))
        return md, js


def held_out(data: Mapping[str, Path | str], eval_fraction: float, seed: int) -> dict[str, list[Conversation]]:
    """The same held-out split `sft` used (same fraction and seed), per domain."""
    return {d: split_eval(load_corpus(p).conversations, eval_fraction, seed)[1] for d, p in data.items()}


def evaluate_matrix(base_path: Path | str, adapters: Mapping[str, Path | str], data: Mapping[str, Path | str], *,
                    eval_fraction: float = 0.1, seed: int = 42, max_length: int = 1024, micro_batch: int = 4,
                    device: str | None = None) -> QualityReport:
    import torch
    from peft import PeftModel

    from training.loss import loss_sum
    from training.sft import load_base_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    base, tokenizer = load_base_model(base_path, dtype=dtype, device=device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    held = held_out(data, eval_fraction, seed)
    rows = {d: single_rows(tokenize_all(tokenizer, convs, max_length)[0]) for d, convs in held.items()}
    names = list(adapters)
    model: Any = base
    if names:
        model = PeftModel.from_pretrained(base, str(adapters[names[0]]), adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(str(adapters[name]), adapter_name=name)
    model.eval()

    def mean_loss(domain: str) -> float:
        total, count = 0.0, 0
        for start in range(0, len(rows[domain]), micro_batch):
            batch = {k: v.to(device) for k, v in collate(rows[domain][start:start + micro_batch], pad_id).items()}
            loss, n = loss_sum(model, batch, chunked=True)
            total, count = total + float(loss), count + n
        return total / max(count, 1)

    losses: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        if names:
            with model.disable_adapter():
                losses[BASE] = {d: mean_loss(d) for d in data}
            for name in names:
                model.set_adapter(name)
                losses[name] = {d: mean_loss(d) for d in data}
        else:
            losses[BASE] = {d: mean_loss(d) for d in data}
    return QualityReport(list(data), [BASE, *names], losses, {d: len(r) for d, r in rows.items()})
