"""Merged replicas in the stack spec: validation, the systemd unit systemd fills in, the gateway's upstreams."""

from __future__ import annotations

from typing import Any

import pytest

from exaone_lora.spec import DeploymentSpec, SpecError, build_spec, load_spec, read_config, stack_file
from provisioning.units import GATEWAY_UNIT, health_urls, rendered_units
from service.merged_replicas import merged_endpoints, merged_unit_name
from tests.support.processes import REPO

PIN = {"alias": "medical", "version": 3, "blobPath": "medical/v3", "sha256": "a" * 64}


def _poc(**updates: Any) -> DeploymentSpec:
    values = read_config(stack_file("poc", REPO)) | {"adapters": [PIN]} | updates
    return build_spec("poc", values, "Pulumi.poc.yaml")


def test_poc_with_a_merged_replica_renders_its_unit_and_gateway_upstream() -> None:
    spec = _poc(gpuMemoryUtilization=0.5, mergedReplicas=[{"alias": "medical", "gpuMemoryUtilization": 0.35}],
                serverArgs={"max-num-batched-tokens": 8192})
    units = rendered_units(spec)
    unit = units[merged_unit_name("medical")]
    assert "--served-model-name ${MERGED_VERSION} " in unit
    assert "--model /data/models/merged/${MERGED_VERSION} " in unit
    assert "--enable-lora" not in unit and "--lora-modules" not in unit
    assert "--gpu-memory-utilization 0.35 " in unit and "--port 8071 " in unit and "--host 127.0.0.1 " in unit
    assert "ConditionPathExists=/etc/exaone-lora/merged-medical.env" in unit
    assert "EnvironmentFile=/etc/exaone-lora/merged-medical.env" in unit
    assert "Environment=CUDA_VISIBLE_DEVICES=0" in unit
    # Its own compile caches: restarting it for every deploy never touches the LoRA replica's.
    assert "VLLM_CACHE_ROOT=/var/cache/exaone-lora/merged-medical/vllm" in unit
    assert "exaone-lora/merged-medical/vllm" in unit.split("CacheDirectory=")[1].splitlines()[0]
    # The same tuning flags as the LoRA replica.
    assert "--max-num-batched-tokens 8192" in unit
    assert "--upstream http://127.0.0.1:8081 --upstream http://127.0.0.1:8071" in units[GATEWAY_UNIT]
    assert [e.url for e in merged_endpoints(spec)] == ["http://127.0.0.1:8071"]
    # Deploys wait for the LoRA replica and the gateway only; the merged replica is a fast path.
    assert "http://127.0.0.1:8071/health" not in health_urls(spec)


@pytest.mark.parametrize(("merged", "message"), [
    ({"alias": "legal"}, "legal is not one of the pinned adapters"),
    ({"alias": "medical", "gpuMemoryUtilization": 0.5}, "GPU 0 would be 1.00 committed"),
    ({"alias": "medical", "port": 8081}, "already used by another listener"),
    ({"alias": "medical", "gpu": 1}, "the node has 1 GPU"),
])
def test_bad_merged_replicas_are_refused_with_the_key(merged: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message) as info:
        _poc(mergedReplicas=[merged])
    assert "mergedReplicas" in str(info.value)


def test_merged_replicas_need_a_vm_or_local_host_with_the_gateway() -> None:
    dev = read_config(stack_file("dev", REPO)) | {"adapters": [PIN | {"rank": 8}], "mergedReplicas": [{"alias": "medical"}]}
    with pytest.raises(SpecError, match="need target 'vm' \\(or 'local'\\) with the gateway enabled"):
        build_spec("dev", dev | {"gateway": {"enabled": False}}, "Pulumi.dev.yaml")
    with pytest.raises(SpecError, match="need target 'vm'"):
        _poc(target="aks", mergedReplicas=[{"alias": "medical"}])  # AKS has no gateway to route to them
    assert load_spec("poc", REPO).merged_replicas == ()
    # The local target (CPU vLLM on the systemd test host): a KV-cache size instead of a GPU share.
    unit = rendered_units(build_spec("dev", dev, "Pulumi.dev.yaml"))[merged_unit_name("medical")]
    assert "--gpu-memory-utilization" not in unit and "CUDA_VISIBLE_DEVICES" not in unit
    assert "Environment=VLLM_CPU_KVCACHE_SPACE=1" in unit and "merged replica of medical (CPU" in unit
