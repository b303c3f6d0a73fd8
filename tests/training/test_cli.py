"""The Typer CLI end to end: train-all over the four domains with one summary table, export refusals, quality matrix."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from exaone_lora.checkpoints import Checkpoint
from training import DOMAINS
from training.cli import app

WIDE = {"COLUMNS": "220"}


TRAINED = ("medical", "code")  # two of the four keep the test short; the matrix still covers all four domains


def test_train_all_then_quality_matrix(tiny_checkpoint: Checkpoint, corpora: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "all"
    domains = [arg for d in TRAINED for arg in ("--domain", d)]
    result = runner.invoke(app, ["train-all", str(tiny_checkpoint.path), str(corpora), str(out), *domains,
                                 "--rank", "4", "--alpha", "8", "--lr", "5e-3", "--micro-batch", "4", "--grad-accum", "1",
                                 "--max-steps", "6", "--max-rank", "8", "--packing", "--chunked-ce"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "train-all" in result.output and result.output.count("exported") == len(TRAINED)
    for domain in TRAINED:
        manifest = json.loads((out / "exports" / domain / "manifest.json").read_text())
        assert manifest["name"] == f"{domain}-v1" and manifest["rank"] == 4
        summary = json.loads((out / "runs" / domain / "training.json").read_text())
        assert summary["config"]["packing"] and summary["rows"] < summary["train_samples"]  # samples were packed

    adapters = [f"--adapter={d}={out / 'exports' / d}" for d in TRAINED]
    result = runner.invoke(app, ["quality", str(tiny_checkpoint.path), str(corpora), str(tmp_path / "q"), *adapters,
                                 "--eval-fraction", "0.2"], env=WIDE)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert report["models"] == ["base", *TRAINED] and sorted(report["domains"]) == sorted(DOMAINS)
    losses = report["eval_loss"]
    # Every adapter beats the untrained base on its own domain's held-out samples.
    for domain in TRAINED:
        assert losses[domain][domain] < losses["base"][domain], losses
    markdown = (tmp_path / "q" / "quality.md").read_text()
    assert "| model | " in markdown and markdown.count("\n| ") == 1 + 1 + len(TRAINED)


def test_export_cli_refuses_a_run_that_is_not_finished(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), str(tmp_path / "out"), "--domain", "legal"], env=WIDE)
    assert result.exit_code == 1
    assert "not a finished training run" in result.output


def test_sft_cli_refuses_bad_data_with_line_numbers(tiny_checkpoint: Checkpoint, tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}\n{oops\n')
    result = CliRunner().invoke(app, ["sft", str(tiny_checkpoint.path), str(data), str(tmp_path / "run")], env=WIDE)
    assert result.exit_code == 1
    assert "line 2: invalid JSON" in result.output and not (tmp_path / "run").exists()
