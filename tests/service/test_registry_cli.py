"""`exaone-lora adapters ...` through Typer's CliRunner, against Azurite."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exaone_lora.checkpoints import Checkpoint
from exaone_lora.model_shape import EXAONE_TINY
from service.registry_cli import app
from tests.support.corpus import build_corpus
from tests.support.processes import Azurite

runner = CliRunner()


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for command in ("publish", "list", "show", "alias", "rollback", "validate", "download"):
        assert command in result.output
    publish_help = runner.invoke(app, ["publish", "--help"], env={"COLUMNS": "250"})
    assert publish_help.exit_code == 0
    for option in ("EXAONE_LORA_REGISTRY", "--outputs", "--identity", "--client-id", "--ca-file"):
        assert option in publish_help.output


def test_commands_need_a_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXAONE_LORA_REGISTRY", raising=False)
    result = runner.invoke(app, ["list"], env={"COLUMNS": "250"})
    assert result.exit_code == 2
    assert "no registry: give --registry" in result.output and "EXAONE_LORA_REGISTRY" in result.output
    keyed = runner.invoke(app, ["list", "--registry", "AccountName=adapters01;AccountKey=AAAA"], env={"COLUMNS": "250"})
    assert keyed.exit_code == 2 and "loopback" in keyed.output


@pytest.mark.azurite
def test_publish_list_alias_rollback_download(azurite_blob: Azurite, tiny_adapters: dict[str, Path],
                                              tiny_checkpoint: Checkpoint, tmp_path: Path) -> None:
    env = {"EXAONE_LORA_REGISTRY": azurite_blob.connection_string}
    container = ["--container", f"cli-{uuid.uuid4().hex[:10]}"]
    publish = ["publish", "medical", str(tiny_adapters["medical"]), "--base-model-name", EXAONE_TINY.name,
               "--base-model-revision", "0" * 40, "--max-rank", "8", *container]
    first = runner.invoke(app, [*publish, "--json", "--activate"], env=env)
    assert first.exit_code == 0, first.output
    published = json.loads(first.stdout)
    assert published["name"] == "medical-v1" and published["alias"]["current"] == 1
    second = runner.invoke(app, publish, env=env)
    assert second.exit_code == 0 and "medical-v2" in second.output

    listing = runner.invoke(app, ["list", *container, "--json"], env=env)
    assert listing.exit_code == 0, listing.output
    assert json.loads(listing.stdout) == [{"domain": "medical", "current": 1, "versions": [1, 2]}]
    table = runner.invoke(app, ["list", "medical", *container], env=env)
    assert table.exit_code == 0 and "medical-v2" in table.output

    switched = runner.invoke(app, ["alias", "medical", "2", *container, "--json"], env=env)
    assert json.loads(switched.stdout) == {"domain": "medical", "current": 2, "history": [1, 2]}
    conflict = runner.invoke(app, ["alias", "medical", "1", "--expected-current", "1", *container], env=env)
    assert conflict.exit_code == 1 and "alias-conflict" in conflict.output
    rolled = runner.invoke(app, ["rollback", "medical", *container, "--json"], env=env)
    assert json.loads(rolled.stdout)["current"] == 1

    shown = runner.invoke(app, ["show", "medical", "2", *container], env=env)
    assert shown.exit_code == 0 and json.loads(shown.stdout)["name"] == "medical-v2"
    dest = tmp_path / "medical-v2"
    downloaded = runner.invoke(app, ["download", "medical", "2", str(dest), "--base-config", str(tiny_checkpoint.path),
                                     "--max-rank", "8", *container], env=env)
    assert downloaded.exit_code == 0, downloaded.output
    assert (dest / "manifest.json").is_file()

    refused = runner.invoke(app, ["publish", "../medical", *publish[2:]], env=env)
    assert refused.exit_code == 2 and "bad-name" in refused.output


def test_validate_command(tmp_path: Path) -> None:
    corpus = build_corpus(tmp_path, EXAONE_TINY)
    ok = runner.invoke(app, ["validate", str(corpus["valid"].path), "--base-model-name", EXAONE_TINY.name,
                             "--max-rank", "8", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["valid"] is True
    bad = runner.invoke(app, ["validate", str(corpus["nan_weights"].path), "--base-model-name", EXAONE_TINY.name,
                              "--max-rank", "8", "--json"])
    assert bad.exit_code == 2
    report = json.loads(bad.stdout)
    assert report["code"] == "nan-weights" and "c_proj" in report["tensor"]
