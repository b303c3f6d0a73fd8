"""Deploy and rollback the way an operator does it: publish to the Blob registry (Azurite), move the
alias there, and let the reconciler download, validate, load, warm up and switch through the gateway."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from exaone_lora.model_shape import EXAONE_TINY
from service.gateway import EngineClient, GatewayAdmin
from service.gateway.server import RunningGateway
from service.reconciler import Reconciler, RegistrySource, desired_from_registry
from service.registry import AdapterRegistry
from tests.support.processes import Azurite, RunningProcess
from tests.support.serving import GatewayFactory, unload_all

pytestmark = [pytest.mark.vllm, pytest.mark.azurite]


def _run(registry: AdapterRegistry, gw: RunningGateway, key: str, engine: str, cache: Path) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            reconciler = Reconciler([EngineClient(engine, client)], GatewayAdmin(gw.admin_url, key, client),
                                    RegistrySource(registry, cache, EXAONE_TINY, 8), max_cpu_loras=4)
            return await reconciler.reconcile(desired_from_registry(registry))

    return asyncio.run(go())


def test_registry_alias_drives_deploy_and_rollback(vllm: RunningProcess, azurite_blob: Azurite, tmp_path: Path,
                                                   tiny_adapters: dict[str, Path], gateway_factory: GatewayFactory,
                                                   admin_key: str) -> None:
    registry = AdapterRegistry.from_connection_string(azurite_blob.connection_string,
                                                      container=f"gw{secrets.token_hex(4)}")
    registry.ensure_container()
    for adapter in (tiny_adapters["medical"], tiny_adapters["legal"]):
        registry.publish("medical", adapter, base_model_name=EXAONE_TINY.name, base_model_revision="0" * 40, max_rank=8)
    registry.set_alias("medical", 1)
    auth = {"Authorization": f"Bearer {admin_key}"}
    try:
        with gateway_factory([vllm.url]) as gw:
            def ask() -> str:
                response = httpx.post(f"{gw.public_url}/v1/completions", timeout=60,
                                      json={"model": "medical", "prompt": "x", "max_tokens": 1})
                assert response.status_code == 200 and response.json()["model"] == "medical"
                return response.headers["x-exaone-adapter-version"]

            first = _run(registry, gw, admin_key, vllm.url, tmp_path)
            assert first["ok"], first
            assert (tmp_path / "medical-v1" / "adapter_model.safetensors").is_file()  # downloaded + verified
            assert ask() == "medical-v1"

            registry.set_alias("medical", 2)  # the deploy
            deploy = _run(registry, gw, admin_key, vllm.url, tmp_path)
            assert deploy["ok"] and deploy["keep"] == ["medical-v1"], deploy
            assert ask() == "medical-v2"

            assert registry.rollback("medical") == 1  # the rollback: no download, no load, just warm-up + switch
            rollback = _run(registry, gw, admin_key, vllm.url, tmp_path)
            assert rollback["ok"] and [a["kind"] for a in rollback["done"]] == ["warmup", "switch"], rollback
            assert ask() == "medical-v1"
            assert _run(registry, gw, admin_key, vllm.url, tmp_path)["planned"] == []
            state = httpx.get(f"{gw.admin_url}/admin/state", headers=auth).json()
            assert state["aliases"]["medical"]["version"] == 1
    finally:
        unload_all([vllm.url], ["medical-v1", "medical-v2"])


def test_a_corrupted_download_is_never_loaded(vllm: RunningProcess, azurite_blob: Azurite, tmp_path: Path,
                                              tiny_adapters: dict[str, Path], gateway_factory: GatewayFactory,
                                              admin_key: str) -> None:
    container = f"gw{secrets.token_hex(4)}"
    registry = AdapterRegistry.from_connection_string(azurite_blob.connection_string, container=container)
    registry.ensure_container()
    registry.publish("medical", tiny_adapters["medical"], base_model_name=EXAONE_TINY.name, base_model_revision="0" * 40,
                     max_rank=8)
    registry.set_alias("medical", 1)
    # Someone overwrites the weights in Blob behind the registry's back.
    registry.container.upload_blob("medical/v1/adapter_model.safetensors", b"garbage", overwrite=True)
    with gateway_factory([vllm.url]) as gw:
        report = _run(registry, gw, admin_key, vllm.url, tmp_path)
        assert not report["ok"]
        assert report["failed"][0]["kind"] == "fetch" and report["failed"][0]["name"] == "medical-v1"
        assert any(a["kind"] == "switch" for a in report["failed"])  # the switch was skipped
        assert "medical-v1" not in {m["id"] for m in httpx.get(f"{vllm.url}/v1/models").json()["data"]}
        gone = httpx.post(f"{gw.public_url}/v1/completions", json={"model": "medical", "prompt": "x", "max_tokens": 1})
        assert gone.status_code == 404
