"""The registry stack (infra/registry.py) under Pulumi's mock runtime: one protected, versioned, soft-deleting,
WORM adapter registry that only the publisher writes; its outputs are what serving stacks' StackReferences read."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from exaone_lora.spec import SpecError
from infra.mocks import SUBSCRIPTION, ProgramRun, run_under_mocks
from infra.preview import policy_verdict, rows, run_registry
from infra.registry import load_registry_config, registry_outputs
from infra.roles import STORAGE_BLOB_DATA_CONTRIBUTOR
from tests.support.processes import REPO

PUBLISHER = "11111111-2222-3333-4444-555555555555"
ACCOUNT = "azure-native:storage:StorageAccount"
CONTAINER = "azure-native:storage:BlobContainer"
SERVICE = "azure-native:storage:BlobServiceProperties"
WORM = "azure-native:storage:BlobContainerImmutabilityPolicy"
ROLE = "azure-native:authorization:RoleAssignment"


@pytest.fixture(scope="module")
def run() -> ProgramRun:
    return run_registry("registry", REPO, publisher_principal_id=PUBLISHER)


def registry_variant(tmp_path: Path, **overrides: Any) -> Path:
    document = yaml.safe_load((REPO / "Pulumi.registry.yaml").read_text())
    document["config"].update({f"exaone-lora:{k}": v for k, v in overrides.items()})
    (tmp_path / "Pulumi.registry.yaml").write_text(yaml.safe_dump(document))
    return tmp_path


def containers(run: ProgramRun) -> dict[str, Any]:
    return {c.inputs["containerName"]: c for c in run.of_type(CONTAINER)}


def test_outputs_are_what_serving_stacks_reference(run: ProgramRun) -> None:
    assert run.outputs == registry_outputs(load_registry_config("registry", REPO), SUBSCRIPTION)
    assert run.outputs["storageContainer"] == "adapters" and run.outputs["modelsContainer"] == "models"


def test_long_lived_resources_are_protected(run: ProgramRun) -> None:
    protected = {r.type for r in run.resources if r.protect}
    assert {"azure-native:resources:ResourceGroup", ACCOUNT, CONTAINER, WORM} <= protected
    assert all(c.protect for c in run.of_type(CONTAINER))


def test_versioning_soft_delete_and_worm_on_version_blobs(run: ProgramRun) -> None:
    service = run.one(SERVICE).inputs
    assert service["isVersioningEnabled"] is True and service["blobServicesName"] == "default"
    assert service["deleteRetentionPolicy"] == {"enabled": True, "days": 30}
    assert service["containerDeleteRetentionPolicy"] == {"enabled": True, "days": 30}
    account = run.one(ACCOUNT).inputs
    assert account["immutableStorageWithVersioning"] == {"enabled": True}
    adapters = containers(run)["adapters"].inputs
    assert adapters["immutableStorageWithVersioning"] == {"enabled": True} and adapters["publicAccess"] == "None"
    worm = run.one(WORM).inputs
    assert (worm["containerName"], worm["immutabilityPolicyName"]) == ("adapters", "default")
    assert worm["immutabilityPeriodSinceCreationInDays"] == 3650
    assert worm["allowProtectedAppendWrites"] is False and worm["allowProtectedAppendWritesAll"] is False


def test_network_and_keys(run: ProgramRun) -> None:
    account = run.one(ACCOUNT).inputs
    assert account["allowSharedKeyAccess"] is False and account["defaultToOAuthAuthentication"] is True
    assert account["publicNetworkAccess"] == "Disabled", "no publisher CIDR: reachable only through private endpoints"
    assert account["networkRuleSet"] == {"defaultAction": "Deny", "bypass": "None", "ipRules": []}
    assert account["allowBlobPublicAccess"] is False and account["minimumTlsVersion"] == "TLS1_2"
    assert policy_verdict(rows(run)).passed


def test_publisher_cidrs_open_only_the_firewall_to_them(tmp_path: Path) -> None:
    root = registry_variant(tmp_path, publisherCidrs=["198.51.100.7/32"])
    account = run_registry("registry", root).one(ACCOUNT).inputs
    assert account["publicNetworkAccess"] == "Enabled"
    assert account["networkRuleSet"] == {"defaultAction": "Deny", "bypass": "None",
                                         "ipRules": [{"iPAddressOrRange": "198.51.100.7/32", "action": "Allow"}]}


def test_only_the_publisher_writes(run: ProgramRun, tmp_path: Path) -> None:
    roles = run.of_type(ROLE)
    assert {r.inputs["scope"] for r in roles} == {run.outputs["containerId"], run.outputs["modelsContainerId"]}
    assert all(r.inputs["principalId"] == PUBLISHER and r.inputs["roleDefinitionId"].endswith(STORAGE_BLOB_DATA_CONTRIBUTOR)
               for r in roles)
    assert not run_registry("registry", REPO).of_type(ROLE), "no publisher configured, no writer"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"accountName": "Bad_Name"}, "exaone-lora:accountName: must be 3-24 lower-case"),
    ({"immutabilityDays": 0}, "exaone-lora:immutabilityDays:"),
    ({"publisherCidrs": ["0.0.0.0/1", "128.0.0.0/1"]}, "exaone-lora:publisherCidrs: sources cover the whole IPv4"),
    ({"role": "serving"}, "exaone-lora:role: must be 'registry'"),
    ({"typo": 1}, "exaone-lora:typo:"),
])
def test_bad_registry_config_is_refused_naming_the_key(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        load_registry_config("registry", registry_variant(tmp_path, **overrides))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=15), min_size=1, max_size=4))
def test_broad_publisher_networks_are_refused(prefixes: list[int]) -> None:
    from pydantic import ValidationError

    from infra.registry import RegistryConfig

    cidrs = [f"{(i * 37) % 223 + 1}.0.0.0/{p}" for i, p in enumerate(prefixes)]
    with pytest.raises(ValidationError, match="publisher"):
        RegistryConfig(stack="registry", account_name="exaoneloraregistry", publisher_cidrs=tuple(cidrs))


def test_pulumi_entry_point_builds_the_registry_for_the_registry_stack() -> None:
    run = run_under_mocks("exaone-lora", "registry", lambda: runpy.run_path(str(REPO / "infra" / "__main__.py")) and {})
    assert run.one(ACCOUNT).inputs["accountName"] == "exaoneloraregistry"
    assert not run.of_type("azure-native:compute:VirtualMachine")


def test_offline_preview_of_the_registry_stack() -> None:
    from typer.testing import CliRunner

    from infra.cli import app

    result = CliRunner().invoke(app, ["preview", "--stack", "registry", "--root", str(REPO)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "the adapter registry" in result.output and "retentionDays=3650" in result.output
    assert "publicNetwork=Disabled" in result.output and "policy pack: all rules pass" in result.output
