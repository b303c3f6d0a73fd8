"""Capacity planner: what fits on a tier's GPUs, and a refusal for a spec that cannot fit.

One vLLM replica runs per GPU (a 2.4B model gains nothing from tensor parallelism), so memory is
planned per GPU and concurrency is multiplied by the number of replicas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exaone_lora.model_shape import ALL_LINEAR_MODULES, EXAONE_3_5_2_4B, ModelShape
from exaone_lora.spec import DeploymentSpec
from exaone_lora.tiers import GpuSku

GIB = 1024**3
BF16 = 2
# Memory vLLM keeps besides weights, LoRA slots and KV cache (activation peak of the profiling run,
# sampler buffers, CUDA graphs). Calibrated on vLLM 0.26.0, H100 80GB HBM3 (81,559 MiB), utilization
# 0.9, 4 rank-32 LoRA slots, max-model-len 4096: it reported 65.5 GiB of KV cache (916,224 tokens).
RUNTIME_RESERVE_GIB = 1.37
# LoRA slots may take at most this share of what is left for the KV cache.
MAX_LORA_SHARE = 0.5


class CapacityError(ValueError):
    """A spec whose server cannot fit on its GPUs."""


@dataclass(frozen=True)
class CapacityPlan:
    model: ModelShape
    gpu: GpuSku
    replicas: int
    gpu_memory_utilization: float
    max_loras: int
    max_cpu_loras: int
    max_lora_rank: int
    max_model_len: int
    max_num_seqs: int
    context_len: int
    problems: tuple[str, ...] = field(default=())

    @property
    def budget_bytes(self) -> float:
        return self.gpu.gpu_memory_gib * GIB * self.gpu_memory_utilization

    @property
    def weight_bytes(self) -> int:
        return self.model.weight_bytes(BF16)

    @property
    def kv_bytes_per_token(self) -> int:
        return self.model.kv_bytes_per_token(BF16)

    @property
    def adapter_params(self) -> int:
        return self.model.lora_parameter_count(self.max_lora_rank, ALL_LINEAR_MODULES)

    @property
    def adapter_bytes(self) -> int:
        """One adapter slot at the server's max rank over all seven modules, in bf16 (as vLLM allocates it)."""
        return self.adapter_params * BF16

    @property
    def lora_slot_bytes(self) -> int:
        return self.max_loras * self.adapter_bytes

    @property
    def cpu_cache_bytes(self) -> int:
        return self.max_cpu_loras * self.adapter_bytes

    @property
    def reserve_bytes(self) -> float:
        return RUNTIME_RESERVE_GIB * GIB

    @property
    def kv_cache_bytes(self) -> float:
        return max(0.0, self.budget_bytes - self.weight_bytes - self.lora_slot_bytes - self.reserve_bytes)

    @property
    def kv_tokens_per_gpu(self) -> int:
        return int(self.kv_cache_bytes // self.kv_bytes_per_token)

    @property
    def concurrent_requests_per_gpu(self) -> int:
        return min(self.max_num_seqs, self.kv_tokens_per_gpu // self.context_len)

    @property
    def concurrent_requests(self) -> int:
        return self.concurrent_requests_per_gpu * self.replicas

    def check(self) -> CapacityPlan:
        if self.problems:
            raise CapacityError("; ".join(self.problems))
        return self


def plan_capacity(
    spec: DeploymentSpec, model: ModelShape = EXAONE_3_5_2_4B, gpu: GpuSku | None = None,
    context_len: int | None = None,
) -> CapacityPlan:
    """Plan one spec; `gpu` overrides the SKU's GPU (e.g. to compare with a benchmark machine)."""
    plan = CapacityPlan(
        model=model,
        gpu=gpu or spec.sku,
        replicas=spec.total_gpus,
        gpu_memory_utilization=spec.gpu_memory_utilization,
        max_loras=spec.max_loras,
        max_cpu_loras=spec.max_cpu_loras,
        max_lora_rank=spec.max_lora_rank,
        max_model_len=spec.max_model_len,
        max_num_seqs=spec.max_num_seqs,
        context_len=context_len or spec.max_model_len,
    )
    return CapacityPlan(**{**plan.__dict__, "problems": tuple(_problems(plan, len(spec.adapters)))})


def _problems(plan: CapacityPlan, pinned_adapters: int) -> list[str]:
    problems: list[str] = []
    free_for_kv = plan.budget_bytes - plan.weight_bytes - plan.reserve_bytes
    if free_for_kv <= 0:
        problems.append(
            f"weights ({plan.weight_bytes / GIB:.1f} GiB) and runtime reserve do not fit in "
            f"{plan.budget_bytes / GIB:.1f} GiB (gpuMemoryUtilization {plan.gpu_memory_utilization}); raise it"
        )
        return problems
    if plan.lora_slot_bytes > MAX_LORA_SHARE * free_for_kv:
        problems.append(
            f"maxLoras {plan.max_loras} at rank {plan.max_lora_rank} needs {plan.lora_slot_bytes / GIB:.2f} GiB of "
            f"GPU memory, more than {MAX_LORA_SHARE:.0%} of the {free_for_kv / GIB:.1f} GiB left for the KV cache; "
            "lower maxLoras or maxLoraRank"
        )
    if plan.kv_tokens_per_gpu < plan.max_model_len:
        problems.append(
            f"maxModelLen {plan.max_model_len} is longer than the KV cache ({plan.kv_tokens_per_gpu} tokens); "
            "lower maxModelLen or raise gpuMemoryUtilization"
        )
    if pinned_adapters > plan.max_cpu_loras:
        problems.append(
            f"{pinned_adapters} adapters are pinned but maxCpuLoras is {plan.max_cpu_loras}; "
            "every pinned adapter must fit the CPU cache tier"
        )
    return problems
