"""Estimated hourly list price of a stack, from a small table kept in code (update it with the command below).

Prices are USD, pay-as-you-go, Linux, region eastus, as listed by the Azure Retail Prices API
(https://prices.azure.com/api/retail/prices). Korea Central and other regions differ (often 10-20% higher);
treat the figure as an order of magnitude, not a quote. Refresh a row with:

    curl -s "https://prices.azure.com/api/retail/prices?\\$filter=armSkuName eq 'Standard_NC40ads_H100_v5' \\
      and armRegionName eq 'koreacentral' and priceType eq 'Consumption'" | jq '.Items[] | [.productName, .retailPrice]'
"""

from __future__ import annotations

from dataclasses import dataclass

from exaone_lora.spec import DeploymentSpec
from infra.aks import SYSTEM_POOL_COUNT, SYSTEM_POOL_SIZE

PRICES_AS_OF = "2025-06-01"
PRICES_SOURCE = "Azure Retail Prices API (prices.azure.com), eastus, Linux pay-as-you-go, USD"
HOURS_PER_MONTH = 730

HOURLY_USD: dict[str, float] = {
    "Standard_NC40ads_H100_v5": 6.98,
    "Standard_NC80adis_H100_v5": 13.96,
    "Standard_D4ds_v5": 0.226,
    "public_ip_static_standard": 0.005,
    "load_balancer_standard": 0.025,  # first 5 rules; data processed is extra
    "aks_standard_tier": 0.10,  # uptime SLA per cluster
}
# Premium SSD managed disks are billed per month by size tier (P15 = 256 GiB, P20 = 512 GiB, P30 = 1 TiB).
PREMIUM_SSD_MONTHLY_USD: dict[int, float] = {256: 38.01, 512: 73.22, 1024: 135.17, 2048: 259.05, 4096: 495.57}


@dataclass(frozen=True)
class CostLine:
    item: str
    quantity: int
    unit_usd_per_hour: float

    @property
    def usd_per_hour(self) -> float:
        return self.quantity * self.unit_usd_per_hour


def premium_disk_hourly(size_gb: int) -> float:
    tier = min((t for t in PREMIUM_SSD_MONTHLY_USD if t >= size_gb), default=max(PREMIUM_SSD_MONTHLY_USD))
    return PREMIUM_SSD_MONTHLY_USD[tier] / HOURS_PER_MONTH


def cost_lines(spec: DeploymentSpec) -> list[CostLine]:
    """What the stack bills per hour while running (storage transactions and egress are left out)."""
    if spec.target == "local":
        return []
    lines = [CostLine(spec.vm_sku, spec.node_count, HOURLY_USD[spec.vm_sku]),
             CostLine(f"Premium SSD {spec.os_disk_gb} GiB", spec.node_count, premium_disk_hourly(spec.os_disk_gb))]
    if spec.target == "vm":
        lines.append(CostLine("Static public IP (Standard)", spec.node_count, HOURLY_USD["public_ip_static_standard"]))
        if spec.node_count > 1:
            lines.append(CostLine("Standard load balancer", 1, HOURLY_USD["load_balancer_standard"]))
    else:
        lines += [CostLine(f"AKS system pool {SYSTEM_POOL_SIZE}", SYSTEM_POOL_COUNT, HOURLY_USD[SYSTEM_POOL_SIZE]),
                  CostLine("AKS Standard tier", 1, HOURLY_USD["aks_standard_tier"]),
                  CostLine("Standard load balancer", 1, HOURLY_USD["load_balancer_standard"])]
    return lines


def hourly_cost(spec: DeploymentSpec) -> float:
    return round(sum(line.usd_per_hour for line in cost_lines(spec)), 3)
