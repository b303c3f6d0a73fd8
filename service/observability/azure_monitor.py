"""Settings for the optional export to Azure Monitor managed Prometheus (off unless `monitoring.azureMonitor`).

A pure function of the spec; the infra program turns it into resources. Each section's keys are the
keyword arguments of the pulumi-azure-native v3 class named in `resource`, so infra can pass them through
(`monitor.AzureMonitorWorkspace(resource_group_name=rg.name, **s["workspace"]["args"])`). Values that only
exist once resources do (the workspace id, the VM id, the endpoint URL) are listed under `wire`: infra fills them.

Paths: AKS turns on the managed Prometheus add-on (`azureMonitorProfile.metrics`) and the cluster's agent
scrapes the PodMonitor from `prometheus.pod_monitor`. VMs keep their local Prometheus (alerts work offline)
and remote-write to the data collection rule's ingestion endpoint with the VM's managed identity; that
`azuread` block needs Prometheus >= 2.45 (Ubuntu 24.04's package), so provisioning merges `remote_write`
into prometheus.yml only when the host's Prometheus supports it.
"""

from __future__ import annotations

from typing import Any

from exaone_lora.spec import DeploymentSpec

PROMETHEUS_STREAM = "Microsoft-PrometheusMetrics"
DESTINATION = "MonitoringAccount1"
# Built-in role that may write metrics to a data collection rule (fixed id across Azure clouds).
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"
INGESTION_API_VERSION = "2023-04-24"


def _name(spec: DeploymentSpec, kind: str) -> str:
    return f"{kind}-{spec.project}-{spec.stack}"


def azure_monitor_settings(spec: DeploymentSpec) -> dict[str, Any]:
    """Everything infra needs for the Azure Monitor export; `{"enabled": False}` when the stack keeps it off."""
    if not spec.monitoring.azure_monitor:
        return {"enabled": False}
    if spec.target == "local":
        raise ValueError(f"stack {spec.stack}: monitoring.azureMonitor needs an Azure target (vm or aks), not 'local'")
    tags = spec.resource_tags()
    common = {"location": spec.region, "tags": tags}
    settings: dict[str, Any] = {
        "enabled": True,
        "target": spec.target,
        "scrape_interval_seconds": spec.monitoring.scrape_interval_seconds,
        "workspace": {
            "resource": "azure-native:monitor:AzureMonitorWorkspace",
            "args": {"azure_monitor_workspace_name": _name(spec, "amw"), **common},
        },
        "data_collection_endpoint": {
            "resource": "azure-native:monitor:DataCollectionEndpoint",
            "args": {"data_collection_endpoint_name": _name(spec, "dce"), "kind": "Linux",
                     "description": f"Prometheus metrics ingestion for {spec.project} stack {spec.stack}", **common},
        },
        "data_collection_rule": {
            "resource": "azure-native:monitor:DataCollectionRule",
            "args": {
                "data_collection_rule_name": _name(spec, "dcr"),
                "kind": "Linux",
                "description": "vLLM and gateway metrics to Azure Monitor managed Prometheus",
                "data_sources": {"prometheus_forwarder": [
                    {"name": "PrometheusDataSource", "streams": [PROMETHEUS_STREAM], "label_include_filter": {}},
                ]},
                "destinations": {"monitoring_accounts": [{"name": DESTINATION}]},
                "data_flows": [{"streams": [PROMETHEUS_STREAM], "destinations": [DESTINATION]}],
                **common,
            },
            "wire": {
                "data_collection_endpoint_id": "data_collection_endpoint.id",
                "destinations.monitoring_accounts[0].account_resource_id": "workspace.id",
            },
        },
        "rule_association": {
            "resource": "azure-native:monitor:DataCollectionRuleAssociation",
            "args": {"association_name": _name(spec, "dcra"),
                     "description": "Scraped Prometheus metrics of this stack go to its data collection rule"},
            "wire": {"resource_uri": "vm.id" if spec.target == "vm" else "aks.id",
                     "data_collection_rule_id": "data_collection_rule.id"},
        },
        "publisher_role": {
            "resource": "azure-native:authorization:RoleAssignment",
            "role_definition_guid": MONITORING_METRICS_PUBLISHER,
            "args": {"principal_type": "ServicePrincipal"},
            "wire": {"scope": "data_collection_rule.id",
                     "principal_id": "vm identity principal id" if spec.target == "vm" else "AKS monitoring add-on identity",
                     "role_definition_id": f"/providers/Microsoft.Authorization/roleDefinitions/{MONITORING_METRICS_PUBLISHER}"},
        },
    }
    if spec.target == "vm":
        settings["remote_write"] = {
            # Merged into prometheus.yml by provisioning; {ingestion_endpoint}, {dcr_immutable_id} and {client_id}
            # come from the data collection endpoint, the rule and the VM's user-assigned identity.
            "url_template": ("{ingestion_endpoint}/dataCollectionRules/{dcr_immutable_id}/streams/"
                             f"{PROMETHEUS_STREAM}/api/v1/write?api-version={INGESTION_API_VERSION}"),
            "azuread": {"cloud": "AzurePublic", "managed_identity": {"client_id": "{client_id}"}},
            "min_prometheus_version": "2.45.0",
        }
    else:
        settings["aks_addon"] = {
            # ManagedCluster args: azure_monitor_profile turns on managed Prometheus for the cluster.
            "azure_monitor_profile": {"metrics": {"enabled": True, "kube_state_metrics": {
                "metric_labels_allowlist": "pods=[app.kubernetes.io/part-of,app.kubernetes.io/component]",
                "metric_annotations_allow_list": "",
            }}},
        }
    return settings


def remote_write_config(settings: dict[str, Any], *, ingestion_endpoint: str, dcr_immutable_id: str,
                        client_id: str) -> dict[str, Any]:
    """The `remote_write` entry for prometheus.yml, once infra knows the endpoint, rule id and identity."""
    if not settings.get("enabled") or "remote_write" not in settings:
        raise ValueError("remote write applies to the VM path with monitoring.azureMonitor on")
    rw = settings["remote_write"]
    url = rw["url_template"].format(ingestion_endpoint=ingestion_endpoint.rstrip("/"), dcr_immutable_id=dcr_immutable_id)
    return {"url": url, "azuread": {"cloud": rw["azuread"]["cloud"], "managed_identity": {"client_id": client_id}}}
