"""The Pulumi program of one stack: `build(spec, options)` creates the components and returns the stack outputs.

Importable (no side effects at import time) so the tests and `exaone-lora infra preview` run it under Pulumi's
mock runtime; `infra/__main__.py` is the thin entry point the Pulumi CLI runs.
"""

from __future__ import annotations

from typing import Any

import pulumi

from exaone_lora.spec import DeploymentSpec
from infra.aks import AksCluster, check_aks_stack
from infra.common import InfraOptions, subscription_id
from infra.costs import PRICES, estimated_hourly_cost
from infra.gpu_vm import GpuVms
from infra.network import Network
from infra.storage import RegistryAccess


def tier_summary(spec: DeploymentSpec) -> str:
    return (f"{spec.tier}: {spec.node_count} x {spec.vm_sku} ({spec.total_gpus} x {spec.sku.gpu_model}), "
            f"target {spec.target}, gpu_memory_utilization {spec.gpu_memory_utilization}, "
            f"max_loras {spec.max_loras}, {len(spec.adapters)} pinned adapters")


def build(spec: DeploymentSpec, options: InfraOptions | None = None) -> dict[str, Any]:
    """Create the stack's resources; returns the outputs (also exported by __main__)."""
    options = options or InfraOptions()
    if spec.target == "local":
        # The embedded stack runs on this machine (systemd test host, Azurite): nothing to create in Azure.
        return {"target": "local", "apiUrl": f"http://127.0.0.1:{spec.port}", "tierSummary": tier_summary(spec),
                "estimatedHourlyCostUsd": 0.0}
    if spec.target == "aks":
        check_aks_stack(spec, options)  # before anything is registered: a refused stack creates nothing
    sub = subscription_id()
    net = Network("network", spec)
    rg = net.resource_group.name
    # The adapter registry is the registry stack's (infra/registry.py); this stack only reads it.
    store = RegistryAccess("storage", spec, resource_group_name=rg, subscription_id=sub, subnet_id=net.subnet.id,
                           vnet_id=net.vnet.id, reads_models=spec.target == "aks")
    outputs: dict[str, Any] = {
        "target": spec.target,
        "resourceGroup": rg,
        "storageAccount": store.account_name,
        "storageContainer": store.container_name,
        "storageBlobUrl": store.blob_url,
        "identityClientId": store.identity.client_id,
        "identityId": store.identity.id,
        "tierSummary": tier_summary(spec),
        # None when infra/costs.py has no list prices for the stack's region (never another region's).
        "estimatedHourlyCostUsd": estimated_hourly_cost(spec),
        "pricesAsOf": PRICES[spec.region].as_of if spec.region in PRICES else None,
    }
    if options.api_key is not None:
        # Shown only with `pulumi stack output --show-secrets`; Fabric writes it to the host (mode 0600).
        outputs["apiKey"] = pulumi.Output.secret(options.api_key)
    if spec.target == "vm":
        vms = GpuVms("gpu", spec, resource_group_name=rg, subnet_id=net.subnet.id, nsg_id=net.nsg.id,
                     identity_id=store.identity.id, subscription_id=sub,
                     opts=pulumi.ResourceOptions(depends_on=store.ready))
        ips = pulumi.Output.all(*[ip.ip_address for ip in vms.public_ips])
        fqdns = pulumi.Output.all(*[ip.dns_settings.apply(lambda d: (d.fqdn if d else None) or "") for ip in vms.public_ips])
        api_host = vms.lb_ip if vms.lb_ip is not None else ips.apply(lambda v: v[0] or "")
        outputs |= {
            "hostIps": ips,
            "hostFqdns": fqdns,
            "vmNames": [vm.name for vm in vms.vms],
            "sshUser": spec.admin_username,
            # Private API: reach it through an SSH tunnel (docs/azure.md) or from inside the VNet.
            "apiUrl": api_host.apply(lambda h: f"http://{h}:{spec.port}"),
        }
    else:
        aks = AksCluster("aks", spec, resource_group_name=rg, subnet_id=net.subnet.id, identity=store.identity,
                         storage_account=store.account_name, options=options, subscription_id=sub)
        outputs |= {
            "clusterName": aks.cluster.name,
            # Its address is assigned by the Gateway controller: `kubectl -n exaone-lora get gateway inference-gateway`.
            "apiGateway": f"exaone-lora/inference-gateway (port {spec.port})",
        }
    return outputs
