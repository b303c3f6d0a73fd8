"""The capacity plan as a Rich table: what `exaone-lora plan` and the demo print (the app layer's view of
`exaone_lora.capacity`, kept apart from the CLI so the demo does not import the CLI that launches it)."""

from __future__ import annotations

from rich.table import Table

from exaone_lora.capacity import GIB, CapacityPlan


def _gib(value: float) -> str:
    return f"{value / GIB:,.2f} GiB"


def capacity_table(plan: CapacityPlan, title: str) -> Table:
    table = Table(title=title)
    table.add_column("per GPU (one vLLM replica)")
    table.add_column("value", justify="right")
    rows = [
        ("GPU memory", f"{plan.gpu.gpu_memory_gib:,.2f} GiB ({plan.gpu.gpu_model})"),
        (f"budget at utilization {plan.gpu_memory_utilization}", _gib(plan.budget_bytes)),
        (f"weights ({plan.model.parameter_count():,} params, bf16)", _gib(plan.weight_bytes)),
        (f"LoRA slots ({plan.max_loras} x rank {plan.max_lora_rank}, {plan.adapter_params:,} params each)",
         _gib(plan.lora_slot_bytes)),
        ("runtime reserve (activations, graphs)", _gib(plan.reserve_bytes)),
        ("KV cache", _gib(plan.kv_cache_bytes)),
        ("KV bytes per token", f"{plan.kv_bytes_per_token:,} B"),
        ("KV tokens", f"{plan.kv_tokens_per_gpu:,}"),
        (f"concurrent requests at {plan.context_len} tokens", f"{plan.concurrent_requests_per_gpu:,}"),
        (f"CPU adapter cache ({plan.max_cpu_loras} adapters, host RAM)", _gib(plan.cpu_cache_bytes)),
        ("replicas / concurrent requests in total", f"{plan.replicas} / {plan.concurrent_requests:,}"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table
