"""Quota preflight: which vCPU family and how many vCPUs a stack needs, and the `az` commands to check/request."""

from __future__ import annotations

from dataclasses import dataclass

from exaone_lora.spec import DeploymentSpec
from exaone_lora.tiers import SKUS

# The AKS system pool's family (Standard_D4ds_v5: 4 vCPUs each).
SYSTEM_POOL_FAMILY = "standardDDSv5Family"
SYSTEM_POOL_VCPUS = 4


@dataclass(frozen=True)
class QuotaNeed:
    family: str
    vcpus: int
    reason: str


def quota_needs(spec: DeploymentSpec) -> list[QuotaNeed]:
    if spec.target == "local":
        return []
    sku = SKUS[spec.vm_sku]
    needs = [QuotaNeed(sku.quota_family, sku.vcpus * spec.node_count,
                       f"{spec.node_count} x {spec.vm_sku} ({sku.vcpus} vCPUs each)")]
    if spec.target == "aks":
        from infra.aks import SYSTEM_POOL_COUNT

        needs.append(QuotaNeed(SYSTEM_POOL_FAMILY, SYSTEM_POOL_VCPUS * SYSTEM_POOL_COUNT,
                               f"AKS system pool, {SYSTEM_POOL_COUNT} x Standard_D4ds_v5"))
    return needs


def check_command(spec: DeploymentSpec, family: str) -> str:
    return (f"az vm list-usage --location {spec.region} "
            f"--query \"[?name.value=='{family}'].{{family:name.value, used:currentValue, limit:limit}}\" -o table")


def request_command(spec: DeploymentSpec, need: QuotaNeed) -> str:
    # `az quota` is an extension: `az extension add --name quota`. The new limit is the total, not an increment.
    return (f"az quota update --resource-name {need.family} --scope "
            f"/subscriptions/$(az account show --query id -o tsv)/providers/Microsoft.Compute/locations/{spec.region} "
            f"--limit-object value={need.vcpus} --resource-type dedicated")
