"""A merged replica behind the gateway: one real CPU vLLM serving `medical-v1` with the adapter folded into the
weights, next to the session's multi-LoRA vLLM. The gateway routes by what each replica's /v1/models says."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from exaone_lora.checkpoints import Checkpoint
from service.gateway import VERSION_HEADER
from service.merge import merge_adapter
from tests.support.completions import max_difference, prompt_logprobs
from tests.support.processes import RunningProcess, cpu_slot, stop_process_group, vllm_server
from tests.support.serving import GatewayFactory, unload_all

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _routes(url: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("exaone_gateway_routed_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split("{", 1)[1].rstrip("}")] = float(value)
    return out


def _wait(predicate: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def test_gateway_prefers_the_merged_replica_and_falls_back_to_lora(
        vllm: RunningProcess, tiny_checkpoint: Checkpoint, medical_versions: dict[str, Path], logs_dir: Path,
        gateway_factory: GatewayFactory, admin_key: str, tmp_path: Path) -> None:
    merged = merge_adapter(tiny_checkpoint.path, medical_versions["medical-v1"], tmp_path / "medical-v1",
                           version_name="medical-v1", max_rank=8)
    for name in ("medical-v1", "medical-v2"):
        r = httpx.post(f"{vllm.url}/v1/load_lora_adapter", timeout=120,
                       json={"lora_name": name, "lora_path": str(medical_versions[name])})
        assert r.status_code == 200 or "already been loaded" in r.text
    auth = {"Authorization": f"Bearer {admin_key}"}
    try:
        with vllm_server(merged.path, logs_dir / "vllm-merged.log", served_name="medical-v1", lora=False,
                         cpu=cpu_slot(1)) as fast, \
                gateway_factory([vllm.url, fast.url]) as gw:
            _wait(lambda: any(r["kind"] == "merged" and r["healthy"]
                              for r in httpx.get(f"{gw.admin_url}/admin/state", headers=auth).json()["replicas"]))
            switched = httpx.put(f"{gw.admin_url}/admin/aliases/medical", json={"name": "medical-v1"}, headers=auth,
                                 timeout=120)
            assert switched.status_code == 200, switched.text  # the merged replica does not block a switch

            # Same version, two ways: folded weights and LoRA at run time give the same numbers; the base does not.
            via_gateway = prompt_logprobs(gw.public_url, "medical")
            lora = prompt_logprobs(vllm.url, "medical-v1")
            base = prompt_logprobs(vllm.url, "exaone")
            assert max_difference(via_gateway, lora) < 0.02
            assert max_difference(via_gateway, base) > 0.1
            for _ in range(4):
                r = httpx.post(f"{gw.public_url}/v1/completions", timeout=60,
                               json={"model": "medical", "prompt": "Hi", "max_tokens": 2})
                assert r.status_code == 200 and r.json()["model"] == "medical"
                assert r.headers[VERSION_HEADER] == "medical-v1"
            assert httpx.post(f"{gw.public_url}/v1/completions", timeout=60,
                              json={"model": "exaone", "prompt": "Hi", "max_tokens": 2}).status_code == 200
            routes = _routes(gw.admin_url)
            assert routes.get('alias="medical",path="merged"') == 5
            assert 'alias="medical",path="lora"' not in routes
            assert routes.get('alias="exaone",path="base"') == 1  # the base never goes to a merged replica

            # A deploy switches the alias to v2: the merged replica still serves v1, so v2 goes to LoRA.
            assert httpx.put(f"{gw.admin_url}/admin/aliases/medical", json={"name": "medical-v2"}, headers=auth,
                             timeout=120).status_code == 200
            r = httpx.post(f"{gw.public_url}/v1/completions", json={"model": "medical", "prompt": "Hi", "max_tokens": 2},
                           timeout=60)
            assert r.status_code == 200 and r.headers[VERSION_HEADER] == "medical-v2"
            assert _routes(gw.admin_url).get('alias="medical",path="lora"') == 1

            # Back to v1, then the merged replica goes away: nothing fails, LoRA takes over at once.
            assert httpx.put(f"{gw.admin_url}/admin/aliases/medical", json={"name": "medical-v1"}, headers=auth,
                             timeout=120).status_code == 200
            stop_process_group(fast.process)
            for _ in range(3):
                r = httpx.post(f"{gw.public_url}/v1/completions", timeout=60,
                               json={"model": "medical", "prompt": "Hi", "max_tokens": 2})
                assert r.status_code == 200 and r.headers[VERSION_HEADER] == "medical-v1"
            assert _routes(gw.admin_url).get('alias="medical",path="lora"') == 4
            assert httpx.get(f"{gw.public_url}/health").status_code == 200
    finally:
        unload_all([vllm.url], ["medical-v1", "medical-v2"])
