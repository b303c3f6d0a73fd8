"""The capacity planner against numbers known from the model card and from vLLM on an H100."""

from __future__ import annotations

import pytest

from exaone_lora.capacity import GIB, CapacityError, plan_capacity
from exaone_lora.model_shape import ALL_LINEAR_MODULES, EXAONE_3_5_2_4B
from exaone_lora.spec import build_spec, load_spec, read_config, stack_file
from exaone_lora.tiers import H100_80GB_HBM3
from tests.support.processes import REPO


def test_model_and_adapter_sizes_match_the_published_numbers() -> None:
    assert EXAONE_3_5_2_4B.parameter_count() == 2_405_327_360
    assert EXAONE_3_5_2_4B.lora_parameter_count(32, ALL_LINEAR_MODULES) == 43_991_040
    # 168 MB per adapter in fp32, as the reference design lists it.
    assert round(EXAONE_3_5_2_4B.lora_bytes(32, ALL_LINEAR_MODULES, dtype_bytes=4) / 2**20) == 168
    assert EXAONE_3_5_2_4B.kv_bytes_per_token() == 76_800
    assert EXAONE_3_5_2_4B.lora_parameter_count(32, ("q_proj", "v_proj")) == 32 * (5120 + 3200) * 30


def test_kv_cache_matches_what_vllm_reported_on_an_h100() -> None:
    spec = load_spec("poc", REPO).model_copy(update={"gpu_memory_utilization": 0.9, "max_loras": 4})
    plan = plan_capacity(spec, gpu=H100_80GB_HBM3)
    assert plan.kv_cache_bytes / GIB == pytest.approx(65.5, abs=0.1)
    assert plan.kv_tokens_per_gpu == pytest.approx(916_224, rel=0.01)


def test_concurrency_is_kv_tokens_over_context_per_replica() -> None:
    spec = load_spec("prod", REPO)
    plan = plan_capacity(spec, context_len=8192)
    assert plan.replicas == 2
    assert plan.concurrent_requests_per_gpu == min(spec.max_num_seqs, plan.kv_tokens_per_gpu // 8192)
    assert plan.concurrent_requests == 2 * plan.concurrent_requests_per_gpu


@pytest.mark.parametrize("stack", ["poc", "pilot", "prod"])
def test_shipped_stacks_fit(stack: str) -> None:
    assert plan_capacity(load_spec(stack, REPO)).check().kv_tokens_per_gpu > 100_000


def variant(**changes: object) -> object:
    return build_spec("poc", read_config(stack_file("poc", REPO)) | changes, "Pulumi.poc.yaml")


def test_refuses_a_context_longer_than_the_kv_cache() -> None:
    plan = plan_capacity(variant(gpuMemoryUtilization=0.08, maxModelLen=131072))  # type: ignore[arg-type]
    with pytest.raises(CapacityError, match="maxModelLen 131072 is longer than the KV cache"):
        plan.check()


def test_refuses_too_many_gpu_adapters() -> None:
    plan = plan_capacity(variant(maxLoras=64, maxCpuLoras=64, maxLoraRank=256, gpuMemoryUtilization=0.3))  # type: ignore[arg-type]
    with pytest.raises(CapacityError, match=r"maxLoras 64 at rank 256 needs .* GiB of GPU memory"):
        plan.check()


def test_refuses_weights_that_do_not_fit() -> None:
    with pytest.raises(CapacityError, match=r"weights \(4.5 GiB\) and runtime reserve do not fit"):
        plan_capacity(variant(gpuMemoryUtilization=0.05)).check()  # type: ignore[arg-type]


def test_refuses_more_pinned_adapters_than_the_cpu_cache_holds() -> None:
    pins = [{"alias": f"d{i}", "version": 1, "blobPath": f"d{i}/v1/", "sha256": "b" * 64} for i in range(9)]
    with pytest.raises(CapacityError, match="9 adapters are pinned but maxCpuLoras is 8"):
        plan_capacity(variant(adapters=pins)).check()  # type: ignore[arg-type]
