"""`exaone-lora plan`: the README's first command."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from exaone_lora.cli import app
from tests.support.processes import REPO

runner = CliRunner()


def test_plan_prints_the_spec_and_vram_table() -> None:
    result = runner.invoke(app, ["plan", "--stack", "poc", "--root", str(REPO)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in ("Standard_NC40ads_H100_v5", "2,405,327,360", "43,991,040", "76,800 B", "KV cache", "fits"):
        assert text in result.output


def test_plan_all_compares_every_tier() -> None:
    result = runner.invoke(app, ["plan", "--stack", "poc", "--all", "--root", str(REPO)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for tier in ("poc", "pilot", "prod-small", "prod-large"):
        assert tier in result.output


def test_plan_reports_a_bad_stack_file_and_exits_non_zero(tmp_path: Path) -> None:
    document = yaml.safe_load((REPO / "Pulumi.poc.yaml").read_text())
    document["config"]["exaone-lora:gpuMemoryUtilization"] = 1.5
    (tmp_path / "Pulumi.poc.yaml").write_text(yaml.safe_dump(document))
    result = runner.invoke(app, ["plan", "--stack", "poc", "--root", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "Pulumi.poc.yaml: exaone-lora:gpuMemoryUtilization: must be in (0, 0.95]" in result.output


def test_plan_exits_1_when_the_stack_cannot_fit(tmp_path: Path) -> None:
    document = yaml.safe_load((REPO / "Pulumi.poc.yaml").read_text())
    document["config"]["exaone-lora:gpuMemoryUtilization"] = 0.05
    (tmp_path / "Pulumi.poc.yaml").write_text(yaml.safe_dump(document))
    result = runner.invoke(app, ["plan", "--stack", "poc", "--root", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "does not fit" in result.output
