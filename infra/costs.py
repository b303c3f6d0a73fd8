"""What a stack costs per hour at list price, and per million output tokens at its tier's concurrency.

Prices: USD, pay-as-you-go, Linux, from the Azure Retail Prices API, one dated table per region (a region's
prices differ, so a stack is only priced from its own region's table; a region or item without a row is
refused, never filled from another region). Refresh or add a region's VM row with `refresh_command`:

    curl -sG https://prices.azure.com/api/retail/prices --data-urlencode \\
      "\\$filter=armRegionName eq 'koreacentral' and armSkuName eq 'Standard_NC40ads_H100_v5' and priceType eq 'Consumption'" \\
      | jq -r '.Items[] | [.armRegionName, .armSkuName, .skuName, .productName, .retailPrice, .unitOfMeasure] | @tsv'

Take the Linux row (productName without "Windows", skuName without "Spot" or "Low Priority").

Throughput: the aggregate output tokens/s one vLLM replica sustained in the saturation suite of the latest
benchmark (`evidence/<stack>/benchmark-*.json` recorded by a benchmark run, else the newest
`benchmarks/results/*.json`), at the highest measured concurrency not above the tier's `maxNumSeqs`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exaone_lora.evidence import evidence_records, pins_fingerprint
from exaone_lora.spec import DeploymentSpec
from infra.aks import SYSTEM_POOL_COUNT, SYSTEM_POOL_SIZE
from service.replicas import replica_count

HOURS_PER_MONTH = 730
RETAIL_PRICES_API = "https://prices.azure.com/api/retail/prices"
RESULTS_DIR = Path("benchmarks") / "results"
MODES = ("mixed_adapters", "base_only")

PUBLIC_IP = "public_ip_static_standard"
LOAD_BALANCER = "load_balancer_standard"  # first 5 rules; data processed is extra
AKS_TIER = "aks_standard_tier"  # uptime SLA per cluster


@dataclass(frozen=True)
class RegionPrices:
    region: str
    as_of: str
    source: str
    hourly_usd: Mapping[str, float]
    # Premium SSD managed disks are billed per month by size tier (P15 = 256 GiB, P20 = 512 GiB, P30 = 1 TiB).
    premium_ssd_monthly_usd: Mapping[int, float] = field(default_factory=dict)


PRICES: dict[str, RegionPrices] = {
    "eastus": RegionPrices(
        "eastus", "2025-06-01", "Azure Retail Prices API (prices.azure.com), eastus, Linux pay-as-you-go, USD",
        {"Standard_NC40ads_H100_v5": 6.98, "Standard_NC80adis_H100_v5": 13.96, "Standard_D4ds_v5": 0.226,
         PUBLIC_IP: 0.005, LOAD_BALANCER: 0.025, AKS_TIER: 0.10},
        {256: 38.01, 512: 73.22, 1024: 135.17, 2048: 259.05, 4096: 495.57},
    ),
}


class NoListPrice(ValueError):
    """The price table has no row for what the stack runs in its region."""


def refresh_command(region: str, sku: str) -> str:
    """The Retail Prices API call that lists a VM size's pay-as-you-go prices in one region."""
    query = f"armRegionName eq '{region}' and armSkuName eq '{sku}' and priceType eq 'Consumption'"
    return f'curl -sG {RETAIL_PRICES_API} --data-urlencode "\\$filter={query}"'


@dataclass(frozen=True)
class CostLine:
    item: str
    quantity: int
    unit_usd_per_hour: float

    @property
    def usd_per_hour(self) -> float:
        return self.quantity * self.unit_usd_per_hour


def region_prices(spec: DeploymentSpec) -> RegionPrices:
    table = PRICES.get(spec.region)
    if table is None:
        raise NoListPrice(f"stack {spec.stack}: no list prices for region {spec.region} (the table has "
                          f"{', '.join(sorted(PRICES))}); add a RegionPrices row to infra/costs.py from "
                          f"{refresh_command(spec.region, spec.vm_sku)}")
    return table


def cost_lines(spec: DeploymentSpec) -> list[CostLine]:
    """What the stack bills per hour while running (storage transactions and egress are left out)."""
    if spec.target == "local":
        return []
    prices = region_prices(spec)
    wanted = [(spec.vm_sku, spec.vm_sku, spec.node_count)]
    if spec.target == "vm":
        wanted.append(("Static public IP (Standard)", PUBLIC_IP, spec.node_count))
        if spec.node_count > 1:
            wanted.append(("Standard load balancer", LOAD_BALANCER, 1))
    else:
        wanted += [(f"AKS system pool {SYSTEM_POOL_SIZE}", SYSTEM_POOL_SIZE, SYSTEM_POOL_COUNT),
                   ("AKS Standard tier", AKS_TIER, 1), ("Standard load balancer", LOAD_BALANCER, 1)]
    missing = [key for _, key, _ in wanted if key not in prices.hourly_usd]
    if missing or not prices.premium_ssd_monthly_usd:
        raise NoListPrice(f"stack {spec.stack}: the {spec.region} price table (as of {prices.as_of}) has no row for "
                          f"{', '.join(missing or ['Premium SSD'])}; refresh it with "
                          f"{refresh_command(spec.region, missing[0] if missing else spec.vm_sku)}")
    lines = [CostLine(item, qty, prices.hourly_usd[key]) for item, key, qty in wanted]
    lines.insert(1, CostLine(f"Premium SSD {spec.os_disk_gb} GiB", spec.node_count,
                             premium_disk_hourly(prices, spec.os_disk_gb)))
    return lines


def premium_disk_hourly(prices: RegionPrices, size_gb: int) -> float:
    tiers = prices.premium_ssd_monthly_usd
    tier = min((t for t in tiers if t >= size_gb), default=max(tiers))
    return tiers[tier] / HOURS_PER_MONTH


def hourly_cost(spec: DeploymentSpec) -> float:
    """Total list price per hour; raises NoListPrice when the stack's region or an item has no price."""
    return round(sum(line.usd_per_hour for line in cost_lines(spec)), 3)


def estimated_hourly_cost(spec: DeploymentSpec) -> float | None:
    """`hourly_cost`, or None when the table cannot price the stack (for outputs that must not fail)."""
    try:
        return hourly_cost(spec)
    except NoListPrice:
        return None


class NoThroughput(ValueError):
    """No benchmark result holds a saturation measurement usable for the stack."""


@dataclass(frozen=True)
class Throughput:
    source: Path
    origin: str  # "evidence" or "benchmarks/results (no evidence for the stack)"
    recorded_at: str
    gpu: str
    mode: str
    concurrency: int  # the measured level used, per replica
    tokens_per_second: float  # aggregate output tokens/s of one replica at that level
    pins_match: bool | None  # evidence only: recorded with the stack's current pins


def _saturation(document: Mapping[str, Any]) -> Mapping[str, Any] | None:
    # Benchmark result files keep the suites at the top; an evidence record keeps the result under `details`.
    for holder in (document, document.get("details")):
        suites = holder.get("suites") if isinstance(holder, Mapping) else None
        saturation = suites.get("saturation") if isinstance(suites, Mapping) else None
        if isinstance(saturation, Mapping) and isinstance(saturation.get("modes"), Mapping):
            return saturation
    return None


def _meta(document: Mapping[str, Any]) -> Mapping[str, Any]:
    holder = document.get("details") if isinstance(document.get("details"), Mapping) else document
    meta = holder.get("meta") if isinstance(holder, Mapping) else None
    return meta if isinstance(meta, Mapping) else {}


def _measured(run: Any) -> tuple[int, float] | None:
    """(concurrency, output tokens/s) of one error-free saturation run; None for anything else."""
    if not isinstance(run, Mapping) or run.get("errors"):
        return None
    level, tok_s = run.get("concurrency"), run.get("aggregate_tok_s")
    if isinstance(level, bool) or not isinstance(level, int) or level < 1:
        return None
    if isinstance(tok_s, bool) or not isinstance(tok_s, int | float) or not 0 < tok_s < float("inf"):
        return None
    return level, float(tok_s)


def _level(saturation: Mapping[str, Any], mode: str, concurrency: int, source: Path) -> tuple[int, float]:
    runs = saturation["modes"].get(mode)
    if not isinstance(runs, list):
        raise NoThroughput(f"{source}: saturation has no {mode!r} runs (has {', '.join(map(str, saturation['modes']))})")
    clean = [m for m in map(_measured, runs) if m is not None]
    usable = [m for m in clean if m[0] <= concurrency]
    if not usable:
        levels = sorted(level for level, _ in clean)
        raise NoThroughput(f"{source}: no error-free {mode} run at concurrency <= {concurrency} (measured: {levels})")
    return max(usable)


def latest_throughput(spec: DeploymentSpec, root: Path, *, mode: str = "mixed_adapters") -> Throughput:
    """Per-replica output tokens/s at the tier's concurrency (`maxNumSeqs`), from the newest benchmark."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)} (got {mode!r})")
    for path, record in reversed(evidence_records(root, spec.stack, "benchmark")):
        if not isinstance(record, Mapping):
            continue
        saturation = _saturation(record)
        if record.get("passed") is True and saturation is not None:
            level, tok_s = _level(saturation, mode, spec.max_num_seqs, path)
            return Throughput(path, "evidence", str(record.get("recorded_at", "")), str(_meta(record).get("gpu", "?")),
                              mode, level, tok_s, record.get("fingerprint") == pins_fingerprint(spec))
    results: list[tuple[str, Path, Mapping[str, Any]]] = []
    for path in sorted((root / RESULTS_DIR).glob("*.json")):
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(document, Mapping) and _saturation(document) is not None:
            results.append((str(_meta(document).get("utc", "")), path, document))
    if not results:
        raise NoThroughput(f"no benchmark with a saturation suite: neither evidence/{spec.stack}/benchmark-*.json "
                           f"nor {RESULTS_DIR}/*.json under {root}")
    recorded, path, document = max(results, key=lambda item: (item[0], item[1].name))
    saturation = _saturation(document)
    assert saturation is not None
    level, tok_s = _level(saturation, mode, spec.max_num_seqs, path)
    return Throughput(path, f"{RESULTS_DIR} (no evidence/{spec.stack}/ benchmark record)", recorded,
                      str(_meta(document).get("gpu", "?")), mode, level, tok_s, None)


@dataclass(frozen=True)
class TokenCost:
    usd_per_hour: float
    replicas: int
    stack_tokens_per_second: float
    throughput: Throughput

    @property
    def usd_per_million_output_tokens(self) -> float:
        return self.usd_per_hour / (self.stack_tokens_per_second * 3600) * 1_000_000


def token_cost(spec: DeploymentSpec, root: Path, *, mode: str = "mixed_adapters") -> TokenCost:
    """Cost per 1M output tokens with every replica of the stack busy at the tier's concurrency."""
    if spec.target == "local":
        raise NoListPrice(f"stack {spec.stack} runs locally: no Azure list price")
    usd = hourly_cost(spec)
    throughput = latest_throughput(spec, root, mode=mode)
    replicas = replica_count(spec) * spec.node_count
    return TokenCost(usd, replicas, throughput.tokens_per_second * replicas, throughput)
