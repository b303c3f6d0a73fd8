"""Optional Azure Monitor export (spec.monitoring.azure_monitor, off by default): a managed-Prometheus workspace,
a data collection endpoint + rule that forward Prometheus metrics, associated with each GPU VM or the cluster."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
from pulumi_azure_native import monitor

from exaone_lora.spec import DeploymentSpec
from infra.common import COMPONENT_PREFIX


class Monitoring(pulumi.ComponentResource):
    workspace: monitor.AzureMonitorWorkspace
    rule: monitor.DataCollectionRule

    def __init__(self, name: str, spec: DeploymentSpec, *, resource_group_name: pulumi.Input[str],
                 targets: Sequence[pulumi.Input[str]], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{COMPONENT_PREFIX}:infra:Monitoring", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = spec.resource_tags()
        rg = resource_group_name
        self.workspace = monitor.AzureMonitorWorkspace(
            "prometheus", resource_group_name=rg, location=spec.region, tags=tags, opts=child)
        endpoint = monitor.DataCollectionEndpoint(
            "dce", resource_group_name=rg, location=spec.region, tags=tags, opts=child)
        self.rule = monitor.DataCollectionRule(
            "dcr-prometheus", resource_group_name=rg, location=spec.region, tags=tags,
            data_collection_endpoint_id=endpoint.id,
            data_sources=monitor.DataCollectionRuleDataSourcesArgs(prometheus_forwarder=[
                monitor.PrometheusForwarderDataSourceArgs(name="PrometheusDataSource", streams=["Microsoft-PrometheusMetrics"])]),
            destinations=monitor.DataCollectionRuleDestinationsArgs(monitoring_accounts=[
                monitor.MonitoringAccountDestinationArgs(name="workspace", account_resource_id=self.workspace.id)]),
            data_flows=[monitor.DataFlowArgs(streams=["Microsoft-PrometheusMetrics"], destinations=["workspace"])],
            opts=child)
        for i, target in enumerate(targets):
            monitor.DataCollectionRuleAssociation(
                f"dcra-{i}", resource_uri=target, data_collection_rule_id=self.rule.id, opts=child)
        self.register_outputs({"workspace": self.workspace.name})
