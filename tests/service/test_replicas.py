"""Issue 11 on CPUs: per-GPU unit rendering, and two real vLLM replicas kept identical behind the gateway."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from exaone_lora.spec import MergedReplicaSpec, load_spec
from service.reconciler import desired_from_mapping
from service.replicas import TARGET, kubernetes_replicas, replica_endpoints, replica_units, replica_urls, upstream_urls
from service.vllm_config import kubernetes_container
from tests.support.processes import REPO, RunningProcess, cpu_slot, vllm_server
from tests.support.serving import GatewayFactory, TrafficLoop, reconcile, unload_all


def test_prod_small_renders_one_unit_per_gpu() -> None:
    spec = load_spec("prod", root=REPO)
    assert spec.gpus_per_node == 2
    units = replica_units(spec)
    assert list(units) == ["exaone-vllm@0.service", "exaone-vllm@1.service", TARGET]
    for gpu in (0, 1):
        text = units[f"exaone-vllm@{gpu}.service"]
        assert f"Environment=CUDA_VISIBLE_DEVICES={gpu}\n" in text
        assert f"--port {8081 + 10 * gpu} " in text and "--host 127.0.0.1" in text
        assert f"PartOf={TARGET}" in text and "Restart=always" in text
        assert "--tensor-parallel-size" not in text  # replicas, not tensor parallelism
    assert "Wants=exaone-vllm@0.service exaone-vllm@1.service" in units[TARGET]
    endpoints = replica_endpoints(spec)
    assert [e.url for e in endpoints] == ["http://127.0.0.1:8081", "http://127.0.0.1:8091"]
    assert [e.cuda_visible_devices for e in endpoints] == ["0", "1"]
    # AKS: one single-GPU pod per GPU.
    assert kubernetes_replicas(spec) == 2
    assert kubernetes_container(spec)["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_single_gpu_and_local_stacks_render_one_replica() -> None:
    for stack in ("pilot", "dev"):
        spec = load_spec(stack, root=REPO)
        units = replica_units(spec)
        assert list(units) == ["exaone-vllm@0.service", TARGET], stack
        assert "CUDA_VISIBLE_DEVICES" not in units["exaone-vllm@0.service"]


def test_replica_ports_must_not_collide() -> None:
    spec = load_spec("prod", root=REPO)
    clashing = spec.model_copy(update={"port": 8091})
    with pytest.raises(ValueError, match="collide"):
        replica_endpoints(clashing)


def test_replica_and_upstream_urls_come_from_one_topology() -> None:
    spec = load_spec("prod", root=REPO)
    assert replica_urls(spec) == ["http://127.0.0.1:8081", "http://127.0.0.1:8091"]
    merged = spec.model_copy(update={"merged_replicas": [MergedReplicaSpec(alias="medical", port=8071)]})
    assert upstream_urls(merged) == ["http://127.0.0.1:8081", "http://127.0.0.1:8091", "http://127.0.0.1:8071"]
    # Without the gateway, clients talk to vLLM directly: replica 0 takes the public port.
    direct = spec.model_copy(update={"gateway": spec.gateway.model_copy(update={"enabled": False})})
    assert replica_urls(direct) == [f"http://127.0.0.1:{spec.port}", f"http://127.0.0.1:{spec.port + 10}"]


@pytest.mark.vllm
@pytest.mark.slow
def test_two_replicas_reconciled_identically_and_switched_without_failures(
        vllm: RunningProcess, tiny_checkpoint: object, logs_dir: Path, gateway_factory: GatewayFactory, admin_key: str,
        medical_versions: dict[str, Path]) -> None:
    second_log = logs_dir / "vllm-replica-2.log"
    with vllm_server(tiny_checkpoint.path, second_log, max_loras=2, max_cpu_loras=4,  # type: ignore[attr-defined]
                     cpu=cpu_slot(1)) as second:
        upstreams = [vllm.url, second.url]
        assert f"core ids=[{cpu_slot(1)}]" in second_log.read_text()  # its own core, not the first server's
        try:
            # Drift before the run: replica 2 already has v2 (a crash half-way through an earlier run).
            httpx.post(f"{second.url}/v1/load_lora_adapter", timeout=60,
                       json={"lora_name": "medical-v2", "lora_path": str(medical_versions["medical-v2"])})
            with gateway_factory(upstreams) as gw:
                first = reconcile(gw, admin_key, upstreams, medical_versions, desired_from_mapping({"medical": 1}))
                assert first["ok"], first
                sets = [_medical(u) for u in upstreams]
                assert sets[0] == sets[1] == {"medical-v1", "medical-v2"}, sets  # v2 kept (capacity), now on both
                traffic = TrafficLoop(gw.public_url, "medical", workers=4, max_requests=2000, max_seconds=120)
                with traffic.running():
                    traffic.wait_for(20)
                    switch = reconcile(gw, admin_key, upstreams, medical_versions, desired_from_mapping({"medical": 2}))
                    assert switch["ok"], switch
                    assert [a["kind"] for a in switch["done"]] == ["warmup", "warmup", "switch"]
                    traffic.wait_for(20)
                    # Requests keep flowing after the switch until one was answered by v2 (bounded in time).
                    deadline = time.monotonic() + 60
                    while "medical-v2" not in traffic.versions and time.monotonic() < deadline:
                        time.sleep(0.1)
                assert traffic.failures == [] and set(traffic.statuses) == {200}
                assert {"medical-v1", "medical-v2"} <= set(traffic.versions), (traffic.versions, traffic.sent, switch)
                served_by = [r["outstanding"] for r in httpx.get(
                    f"{gw.admin_url}/admin/state", headers={"Authorization": f"Bearer {admin_key}"}).json()["replicas"]]
                assert served_by == [0, 0]
                assert _medical(vllm.url) == _medical(second.url) == {"medical-v1", "medical-v2"}
                again = reconcile(gw, admin_key, upstreams, medical_versions, desired_from_mapping({"medical": 2}))
                assert again["planned"] == []
                # Both replicas took traffic (least outstanding requests spreads concurrent clients).
                assert _requests_seen(second.url) > 0
        finally:
            unload_all(upstreams, ["medical-v1", "medical-v2"])


def _medical(url: str) -> set[str]:
    return {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"] if m["id"].startswith("medical-")}


def _requests_seen(url: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("vllm:request_success_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total
