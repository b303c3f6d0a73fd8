"""`exaone-lora adapters ...` through Typer's CliRunner, against Azurite."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from exaone_lora.checkpoints import Checkpoint
from exaone_lora.model_shape import EXAONE_TINY
from service.registry_cli import IdentityChoice, RegistryLocation, app, registry_command
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


def test_each_registry_option_reaches_its_own_location_field(tmp_path: Path) -> None:
    seen: list[RegistryLocation] = []
    probe = typer.Typer()

    @probe.command()
    @registry_command
    def show(name: str, location: RegistryLocation) -> None:
        seen.append(location)

    result = runner.invoke(probe, ["x", "--registry", "r", "--outputs", str(tmp_path / "o.json"), "--container", "c",
                                   "--identity", "host", "--client-id", "id", "--ca-file", str(tmp_path / "ca.pem"),
                                   "--registry-env-file", str(tmp_path / "e.env")])
    assert result.exit_code == 0, result.output
    assert seen == [RegistryLocation(registry="r", outputs=tmp_path / "o.json", container="c",
                                     identity=IdentityChoice.host, client_id="id", ca_file=tmp_path / "ca.pem",
                                     env_file=tmp_path / "e.env")]


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


@pytest.mark.azurite
def test_rollout_status_and_rollout_argument_errors(azurite_blob: Azurite, tiny_adapters: dict[str, Path]) -> None:
    from exaone_lora.canary import CanarySplit
    from service.registry import open_registry
    from service.rollout.record import RolloutRecord, WindowRecord, save

    env = {"EXAONE_LORA_REGISTRY": azurite_blob.connection_string, "COLUMNS": "250"}
    name = f"cli-{uuid.uuid4().hex[:10]}"
    registry = open_registry(azurite_blob.connection_string, name)
    registry.ensure_container()
    for adapter in (tiny_adapters["medical"], tiny_adapters["legal"]):
        registry.publish("medical", adapter, base_model_name=EXAONE_TINY.name, base_model_revision="0" * 40, max_rank=8)
    registry.set_alias("medical", 1)
    empty = runner.invoke(app, ["rollout-status", "medical", "--container", name], env=env)
    assert empty.exit_code == 0 and "medical -> medical-v1, no canary" in empty.output
    assert "no rollout recorded" in empty.output
    registry.set_canary("medical", CanarySplit(version=2, weight=10, shadow=5))
    save(registry, RolloutRecord(domain="medical", stable=1, candidate=2, settings={}, state="rolled_back",
                                 reason="at 10 %: candidate error rate 50.0% > 5.0%",
                                 windows=[WindowRecord(weight=10, at=0, verdict="fail", reason="error rate",
                                                       measurements={"candidate_requests": 30,
                                                                     "candidate_error_rate": 0.5})]))
    shown = runner.invoke(app, ["rollout-status", "medical", "--container", name], env=env)
    assert shown.exit_code == 0, shown.output
    assert "canary v2 at 10 % (shadow 5 %)" in shown.output and "rolled_back" in shown.output
    assert "50.0%" in shown.output and "candidate error rate 50.0% > 5.0%" in shown.output
    as_json = json.loads(runner.invoke(app, ["rollout-status", "medical", "--json", "--container", name], env=env).stdout)
    assert as_json["alias"]["canary"]["weight"] == 10 and as_json["rollout"]["state"] == "rolled_back"

    no_gateway = runner.invoke(app, ["rollout", "medical", "2", "--container", name], env=env)
    assert no_gateway.exit_code == 2 and "--gateway-admin" in no_gateway.output
    bad_interval = runner.invoke(app, ["rollout", "medical", "2", "--interval", "soon", "--gateway-admin",
                                       "http://127.0.0.1:1", "--engine", "http://127.0.0.1:2", "--container", name],
                                 env={**env, "EXAONE_GATEWAY_ADMIN_KEY": "k" * 24})
    assert bad_interval.exit_code == 2 and "'soon' is not a duration" in bad_interval.output
    help_text = runner.invoke(app, ["rollout", "--help"], env=env).output
    for option in ("--canary", "--step", "--interval", "--shadow", "--sticky-user", "--min-requests"):
        assert option in help_text
