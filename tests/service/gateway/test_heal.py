"""A replica that restarts loses its runtime-loaded adapters; the gateway loads the alias targets back."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx

from service.gateway import create_gateway
from service.gateway.server import gateway_in_thread
from tests.support.processes import RunningProcess, free_port
from tests.support.serving import unload_all


def test_gateway_reloads_an_alias_target_a_replica_lost(vllm: RunningProcess, admin_key: str,
                                                        medical_versions: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "lora-adapters"
    shutil.copytree(medical_versions["medical-v1"], root / "healme-v1")
    auth = {"Authorization": f"Bearer {admin_key}"}
    apps = create_gateway([vllm.url], admin_key=admin_key, refresh_seconds=0.5, adapter_root=str(root))
    try:
        with gateway_in_thread(apps, ("127.0.0.1", free_port()), ("127.0.0.1", free_port())) as gw:
            loaded = httpx.post(f"{gw.admin_url}/admin/versions", json={"name": "healme-v1", "path": str(root / "healme-v1")},
                                headers=auth, timeout=60)
            assert loaded.status_code == 200, loaded.text
            switched = httpx.put(f"{gw.admin_url}/admin/aliases/healme", json={"version": 1, "warmup": False}, headers=auth)
            assert switched.status_code == 200, switched.text
            # What a restart does to vLLM's runtime adapters, done behind the gateway's back.
            unload_all([vllm.url], ["healme-v1"])
            assert "healme-v1" not in {m["id"] for m in httpx.get(f"{vllm.url}/v1/models").json()["data"]}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if "healme-v1" in {m["id"] for m in httpx.get(f"{vllm.url}/v1/models").json()["data"]}:
                    break
                time.sleep(0.25)
            else:
                raise AssertionError("the gateway did not load healme-v1 back within 30 s")
            reply = httpx.post(f"{gw.public_url}/v1/completions", json={"model": "healme", "prompt": "hi", "max_tokens": 2},
                               timeout=60)
            assert reply.status_code == 200 and reply.json()["model"] == "healme"
            assert 'exaone_gateway_healed_loads_total{version="healme-v1"} 1.0' in httpx.get(f"{gw.admin_url}/metrics").text
    finally:
        unload_all([vllm.url], ["healme-v1"])


def test_without_an_adapter_root_nothing_is_loaded_behind_the_operators_back(vllm: RunningProcess, admin_key: str) -> None:
    apps = create_gateway([vllm.url], admin_key=admin_key)
    assert apps.core.adapter_root is None
