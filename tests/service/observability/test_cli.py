"""`exaone-lora obs ...`: render writes a checked set of files; bad input fails clearly."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from service.observability.cli import app
from tests.support.processes import REPO

runner = CliRunner()


def test_render_writes_and_checks_every_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["render", "prod", "--root", str(REPO), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "promtool: config and rules are valid" in result.output
    assert "amtool: alertmanager.yml is valid" in result.output
    for name in ("prometheus.yml", "alerts.yml", "prometheus.defaults", "alertmanager.yml", "alertmanager.defaults",
                 "grafana/exaone-lora.json",
                 "grafana/provisioning/dashboards/exaone-lora.yml", "grafana/provisioning/datasources/prometheus.yml"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "grafana/exaone-lora.json").read_text())["uid"] == "exaone-lora"


def test_targets_lists_each_replica(tmp_path: Path) -> None:
    result = runner.invoke(app, ["targets", "prod", "--root", str(REPO)])
    assert result.exit_code == 0, result.output
    assert "127.0.0.1:8081" in result.output and "127.0.0.1:8091" in result.output and "exaone-gateway" in result.output


def test_unknown_stack_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["render", "staging", "--root", str(REPO), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "Pulumi.staging.yaml" in result.output and "no such stack file" in result.output
    assert not (tmp_path / "out").exists()
