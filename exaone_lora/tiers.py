"""Capacity tiers and Azure GPU SKUs as data (DESIGN.md's tier table); the spec loader fills defaults from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Tier = Literal["poc", "pilot", "prod-small", "prod-large"]
TIERS: tuple[Tier, ...] = ("poc", "pilot", "prod-small", "prod-large")


@dataclass(frozen=True)
class GpuSku:
    """An Azure VM size with NVIDIA GPUs; memory is what the CUDA driver reports as total, in GiB."""

    name: str
    gpu_model: str
    gpus: int
    gpu_memory_gib: float
    vcpus: int
    quota_family: str


SKUS: dict[str, GpuSku] = {
    s.name: s
    for s in (
        # H100 NVL 94 GB: the driver reports 95,830 MiB (reference design, nvidia-smi).
        GpuSku("Standard_NC40ads_H100_v5", "H100 NVL", 1, 95_830 / 1024, 40, "StandardNCadsH100v5Family"),
        GpuSku("Standard_NC80adis_H100_v5", "H100 NVL", 2, 95_830 / 1024, 80, "StandardNCadsH100v5Family"),
    )
}

# Not an Azure SKU: the lent benchmark machine (H100 80 GB HBM3, 81,559 MiB), for checking the planner
# against what vLLM reported there.
H100_80GB_HBM3 = GpuSku("H100-80GB-HBM3", "H100 80GB HBM3", 1, 81_559 / 1024, 16, "")


@dataclass(frozen=True)
class TierDefaults:
    vm_sku: str
    allowed_skus: tuple[str, ...]
    node_count: int
    gpu_memory_utilization: float
    max_loras: int
    max_cpu_loras: int
    max_num_seqs: int
    users: str
    adapters: str
    # /data (model, adapters, compile caches) lives on a managed Premium SSD data disk of this size.
    data_disk_gb: int = 256
    # The adapter registry is reached only through a private endpoint in the stack's VNet (issue 20 item 9).
    registry_private_only: bool = True


# GPU LoRA slots (max_loras) per tier: the slot count that served the tier's expected number of distinct adapters
# fastest in the adapter-scaling benchmark (docs/benchmarks.md, issue 23): vLLM runs requests of at most that many
# adapters in one decode step, so fewer slots than busy adapters queues the rest; more costs ~90 MB of GPU memory
# per slot and some speed at few adapters. poc keeps 4, the seed design's four domains.
TIER_DEFAULTS: dict[Tier, TierDefaults] = {
    "poc": TierDefaults("Standard_NC40ads_H100_v5", ("Standard_NC40ads_H100_v5",), 1, 0.5, 4, 8, 64,
                        "1-5", "4-8", registry_private_only=False),
    "pilot": TierDefaults("Standard_NC40ads_H100_v5", ("Standard_NC40ads_H100_v5",), 1, 0.75, 16, 32, 128,
                          "10-50", "4-16"),
    "prod-small": TierDefaults("Standard_NC80adis_H100_v5", ("Standard_NC80adis_H100_v5",), 1, 0.85, 16, 32,
                               256, "50-200", "4-16", data_disk_gb=512),
    "prod-large": TierDefaults("Standard_NC80adis_H100_v5", ("Standard_NC80adis_H100_v5",), 2, 0.9, 64, 128,
                               256, "200+", "16+", data_disk_gb=512),
}
