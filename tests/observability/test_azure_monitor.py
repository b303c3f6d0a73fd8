"""Azure Monitor export settings: off by default, and when on, arguments the real Pulumi classes accept."""

from __future__ import annotations

import pytest
from pulumi_azure_native import monitor

from exaone_lora.spec import DeploymentSpec, build_spec, load_spec, read_config, stack_file
from service.observability.azure_monitor import azure_monitor_settings, remote_write_config
from tests.support.processes import REPO


def _spec(stack: str, **overrides: object) -> DeploymentSpec:
    return build_spec(stack, {**read_config(stack_file(stack, REPO)), **overrides}, f"Pulumi.{stack}.yaml")


@pytest.mark.parametrize("stack", ["dev", "poc", "pilot", "prod"])
def test_export_is_off_by_default(stack: str) -> None:
    assert azure_monitor_settings(load_spec(stack, REPO)) == {"enabled": False}


def test_vm_settings_build_real_pulumi_args() -> None:
    spec = _spec("prod", monitoring={"azureMonitor": True})
    s = azure_monitor_settings(spec)
    assert s["enabled"] and s["target"] == "vm"
    # Keyword names are checked by the SDK's own constructors (a typo raises TypeError).
    monitor.AzureMonitorWorkspaceArgs(resource_group_name="rg", **s["workspace"]["args"])
    monitor.DataCollectionEndpointArgs(resource_group_name="rg", **s["data_collection_endpoint"]["args"])
    monitor.DataCollectionRuleArgs(resource_group_name="rg", **s["data_collection_rule"]["args"])
    monitor.DataCollectionRuleAssociationArgs(resource_uri="/subscriptions/x/vm", **s["rule_association"]["args"])
    rule = s["data_collection_rule"]["args"]
    assert rule["data_sources"]["prometheus_forwarder"][0]["streams"] == ["Microsoft-PrometheusMetrics"]
    assert rule["data_flows"][0]["destinations"] == [rule["destinations"]["monitoring_accounts"][0]["name"]]
    assert rule["tags"]["stack"] == "prod" and rule["location"] == spec.region
    assert "aks_addon" not in s


def test_remote_write_entry_uses_the_managed_identity() -> None:
    s = azure_monitor_settings(_spec("poc", monitoring={"azureMonitor": True}))
    entry = remote_write_config(s, ingestion_endpoint="https://dce-x.koreacentral-1.metrics.ingest.monitor.azure.com/",
                                dcr_immutable_id="dcr-0123", client_id="11111111-2222-3333-4444-555555555555")
    assert entry["url"] == ("https://dce-x.koreacentral-1.metrics.ingest.monitor.azure.com/dataCollectionRules/dcr-0123/"
                            "streams/Microsoft-PrometheusMetrics/api/v1/write?api-version=2023-04-24")
    assert entry["azuread"]["managed_identity"]["client_id"] == "11111111-2222-3333-4444-555555555555"


def test_aks_turns_on_the_managed_prometheus_addon() -> None:
    s = azure_monitor_settings(_spec("poc", target="aks", monitoring={"azureMonitor": True}))
    assert s["aks_addon"]["azure_monitor_profile"]["metrics"]["enabled"] is True
    assert "remote_write" not in s
    with pytest.raises(ValueError, match="VM path"):
        remote_write_config(s, ingestion_endpoint="https://x", dcr_immutable_id="d", client_id="c")


def test_local_target_cannot_export() -> None:
    with pytest.raises(ValueError, match="needs an Azure target"):
        azure_monitor_settings(_spec("dev", monitoring={"azureMonitor": True}))
