"""Quota preflight, cost table and the offline preview command."""

from __future__ import annotations

from typer.testing import CliRunner

from exaone_lora.spec import load_spec
from infra.cli import app
from infra.costs import HOURLY_USD, PRICES_AS_OF, hourly_cost
from infra.preview import policy_verdict, preview_stack
from infra.quota import quota_needs
from tests.infra.conftest import variant
from tests.support.processes import REPO


def test_quota_per_tier() -> None:
    assert [(n.family, n.vcpus) for n in quota_needs(load_spec("poc", REPO))] == [("StandardNCadsH100v5Family", 40)]
    assert [(n.family, n.vcpus) for n in quota_needs(load_spec("prod", REPO))] == [("StandardNCadsH100v5Family", 80)]
    assert [(n.family, n.vcpus) for n in quota_needs(variant("prod", tier="prod-large", nodeCount=3))] == [
        ("StandardNCadsH100v5Family", 240)]
    assert quota_needs(load_spec("dev", REPO)) == []


def test_cli_quota_prints_az_commands() -> None:
    result = CliRunner().invoke(app, ["quota", "--stack", "pilot", "--root", str(REPO)])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "StandardNCadsH100v5Family" in flat and "40" in flat
    assert "az vm list-usage --location koreacentral" in flat
    assert "az quota update --resource-name StandardNCadsH100v5Family" in flat


def test_costs_table() -> None:
    assert hourly_cost(load_spec("prod", REPO)) > HOURLY_USD["Standard_NC80adis_H100_v5"]
    assert hourly_cost(load_spec("dev", REPO)) == 0
    result = CliRunner().invoke(app, ["costs", "--stack", "poc", "--root", str(REPO)])
    assert result.exit_code == 0 and PRICES_AS_OF in result.output and "Standard_NC40ads_H100_v5" in result.output


def test_preview_library_and_cli() -> None:
    table = preview_stack("poc", REPO)
    assert {"azure-native:compute:VirtualMachine", "azure-native:network:NetworkSecurityGroup"} <= {r.type for r in table}
    vm = next(r for r in table if r.type == "azure-native:compute:VirtualMachine")
    assert vm.settings["size"] == "Standard_NC40ads_H100_v5" and vm.settings["encryptionAtHost"] == "True"
    assert policy_verdict(table, load_spec("poc", REPO)).passed
    result = CliRunner().invoke(app, ["preview", "--stack", "poc", "--root", str(REPO)])
    assert result.exit_code == 0 and "all rules pass" in result.output and "VirtualMachine" in result.output


def test_cli_preview_refuses_a_bad_stack_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = (REPO / "Pulumi.poc.yaml").read_text() + "  exaone-lora:operatorCidr: 0.0.0.0/0\n"
    (tmp_path / "Pulumi.poc.yaml").write_text(text)
    result = CliRunner().invoke(app, ["preview", "--stack", "poc", "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert "0.0.0.0/0 would open SSH to the whole Internet" in " ".join(result.output.split())


def test_cli_preview_says_what_blocks_pulumi_up() -> None:
    """The shipped poc file previews (offline), and names every setting `pulumi up` will still refuse without."""
    result = CliRunner().invoke(app, ["preview", "--stack", "poc", "--root", str(REPO)], env={"COLUMNS": "400"})
    text = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "`pulumi up -s poc` will refuse until these are set" in text
    for key in ("operatorCidr: not set", "sshPublicKey: not set", "acceptModelLicense exaone-3.5-nc"):
        assert key in text, key
