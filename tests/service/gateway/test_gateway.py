"""The gateway against the real CPU vLLM: aliases, zero-loss deploy and rollback, admin auth, metrics."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.gateway import create_gateway
from service.gateway.server import gateway_in_thread
from service.reconciler import desired_from_mapping
from tests.support.processes import RunningProcess, free_port
from tests.support.serving import GatewayFactory, TrafficLoop, reconcile, unload_all

pytestmark = pytest.mark.vllm

MEDICAL = ["medical-v1", "medical-v2", "medical-v3"]


def sample(text: str, name: str, labels: dict[str, str]) -> float:
    values = [s.value for family in text_string_to_metric_families(text) for s in family.samples
              if s.name == name and s.labels == labels]
    assert len(values) == 1, f"{name}{labels}: {values}"
    return float(values[0])


def test_deploy_and_rollback_lose_no_request(vllm: RunningProcess, gateway_factory: GatewayFactory, admin_key: str,
                                             medical_versions: dict[str, Path]) -> None:
    upstreams = [vllm.url]
    try:
        with gateway_factory(upstreams) as gw:
            first = reconcile(gw, admin_key, upstreams, medical_versions, desired_from_mapping({"medical": 1}))
            assert first["ok"], first
            # A budget far beyond what the phases need, so that traffic spans all of them on a fast machine too.
            traffic = TrafficLoop(gw.public_url, "medical", workers=4, max_requests=2000, max_seconds=120)
            with traffic.running():
                traffic.wait_for(15)
                deploy = reconcile(gw, admin_key, upstreams, medical_versions, desired_from_mapping({"medical": 2}),
                                   max_cpu_loras=2)
                assert deploy["ok"], deploy
                assert deploy["keep"] == ["medical-v1"]  # the rollback target stays loaded
                traffic.wait_for(15)
                rollback = reconcile(gw, admin_key, upstreams, medical_versions, desired_from_mapping({"medical": 1}),
                                     max_cpu_loras=2)
                assert rollback["ok"], rollback
                assert [a["kind"] for a in rollback["done"]] == ["warmup", "switch"]  # no load: v1 was kept
                traffic.wait_for(15)
                # A third version with room for one rollback target: v2 is drained and unloaded under traffic.
                third = reconcile(gw, admin_key, upstreams, medical_versions, desired_from_mapping({"medical": 3}),
                                  max_cpu_loras=2)
                assert third["ok"], third
                assert third["evict"] == ["medical-v2"]
                traffic.wait_for(15)
            assert traffic.failures == []
            assert set(traffic.statuses) == {200}
            assert {"medical-v1", "medical-v2", "medical-v3"} <= set(traffic.versions), traffic.versions
            assert sum(traffic.statuses.values()) >= 60
            again = reconcile(gw, admin_key, upstreams, medical_versions, desired_from_mapping({"medical": 3}),
                              max_cpu_loras=2)
            assert again["planned"] == [] and again["ok"]  # idempotent
            models = httpx.get(f"{vllm.url}/v1/models").json()["data"]
            assert {m["id"] for m in models if m.get("parent")} & set(MEDICAL) == {"medical-v1", "medical-v3"}
    finally:
        unload_all(upstreams, MEDICAL)


def test_public_app_routes_aliases_and_hides_engine_admin(vllm: RunningProcess, gateway_factory: GatewayFactory,
                                                          admin_key: str, medical_versions: dict[str, Path]) -> None:
    upstreams = [vllm.url]
    try:
        with gateway_factory(upstreams) as gw:
            assert reconcile(gw, admin_key, upstreams, medical_versions, desired_from_mapping({"medical": 1}))["ok"]
            pub = gw.public_url
            models = httpx.get(f"{pub}/v1/models").json()
            assert [m["id"] for m in models["data"]] == ["exaone", "medical"]  # aliases only, never version names
            chat = httpx.post(f"{pub}/v1/chat/completions", timeout=60, json={
                "model": "medical", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            assert chat.status_code == 200 and chat.json()["model"] == "medical"
            assert chat.headers["x-exaone-adapter-version"] == "medical-v1"
            base = httpx.post(f"{pub}/v1/completions", json={"model": "exaone", "prompt": "hi", "max_tokens": 2}, timeout=60)
            assert base.status_code == 200 and base.json()["model"] == "exaone"

            unknown = httpx.post(f"{pub}/v1/completions", json={"model": "cardiology", "prompt": "x", "max_tokens": 1})
            assert unknown.status_code == 404
            assert unknown.json()["error"]["code"] == "model_not_found"
            assert "cardiology" in unknown.json()["error"]["message"]
            # The immutable name is not a public model name either: clients only use aliases.
            assert httpx.post(f"{pub}/v1/completions", json={"model": "medical-v1", "prompt": "x"}).status_code == 404

            for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/admin/state", "/admin/versions"):
                response = httpx.post(f"{pub}{path}", json={"lora_name": "x", "lora_path": "/tmp"})
                assert response.status_code in (404, 405), path
            # The gateway's metrics are on the admin listener (loopback), not on the public one.
            assert httpx.get(f"{pub}/metrics").status_code == 404
            metrics = httpx.get(f"{gw.admin_url}/metrics").text
            assert "exaone_gateway_requests_total" in metrics
            assert "vllm:" not in metrics  # vLLM's own metrics are never exposed through the gateway
            bad = httpx.post(f"{pub}/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
            assert bad.status_code == 400
    finally:
        unload_all(upstreams, ["medical-v1"])


def test_admin_listener_requires_the_key(vllm: RunningProcess, gateway_factory: GatewayFactory, admin_key: str) -> None:
    with gateway_factory([vllm.url]) as gw:
        adm = gw.admin_url
        assert gw.admin_url.startswith("http://127.0.0.1:")
        calls = [("GET", "/admin/state", None), ("POST", "/admin/versions", {"name": "medical-v9", "path": "/tmp"}),
                 ("DELETE", "/admin/versions/medical-v9", None), ("PUT", "/admin/aliases/medical", {"version": 9})]
        for method, path, body in calls:
            for headers in ({}, {"Authorization": "Bearer wrong-key-wrong-key-wrong"}, {"Authorization": admin_key}):
                response = httpx.request(method, f"{adm}{path}", json=body, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
        ok = httpx.get(f"{adm}/admin/state", headers={"Authorization": f"Bearer {admin_key}"})
        assert ok.status_code == 200 and ok.json()["replicas"][0]["url"] == vllm.url
        # With the key, a switch to a version that is not loaded is refused and nothing changes.
        refused = httpx.put(f"{adm}/admin/aliases/medical", json={"version": 9, "warmup": False},
                            headers={"Authorization": f"Bearer {admin_key}"})
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "version_not_loaded"
        assert httpx.get(f"{adm}/admin/state", headers={"Authorization": f"Bearer {admin_key}"}).json()["aliases"] == {}


def test_per_alias_metrics_after_requests(vllm: RunningProcess, admin_key: str, medical_versions: dict[str, Path],
                                          tmp_path: Path) -> None:
    upstreams = [vllm.url]
    auth = {"Authorization": f"Bearer {admin_key}"}
    # The admin API loads versions only from under the gateway's adapter root, from a folder named after the version.
    root = tmp_path / "lora-adapters"
    shutil.copytree(medical_versions["medical-v2"], root / "medical-v2")
    apps = create_gateway(upstreams, admin_key=admin_key, refresh_seconds=1.0, adapter_root=str(root))
    try:
        with gateway_in_thread(apps, ("127.0.0.1", free_port()), ("127.0.0.1", free_port())) as gw:
            # Admin API path: load then switch (with warm-up), as an operator would by hand.
            loaded = httpx.post(f"{gw.admin_url}/admin/versions", headers=auth, timeout=60, json={"name": "medical-v2"})
            assert loaded.status_code == 200, loaded.text
            assert {m["id"]: m["root"] for m in httpx.get(f"{vllm.url}/v1/models").json()["data"]}["medical-v2"] \
                == str(root / "medical-v2")
            switched = httpx.put(f"{gw.admin_url}/admin/aliases/medical", json={"version": 2}, headers=auth, timeout=60)
            assert switched.status_code == 200 and switched.json()["current"] == "medical-v2"
            body = {"model": "medical", "prompt": "hello", "max_tokens": 3, "stream": True}
            with httpx.stream("POST", f"{gw.public_url}/v1/completions", json=body, timeout=60) as response:
                lines = [line for line in response.iter_lines() if line.startswith("data:")]
            assert lines[-1] == "data: [DONE]"
            assert all('"usage"' not in line for line in lines)  # the injected usage chunk is not passed on
            plain = httpx.post(f"{gw.public_url}/v1/completions", json={"model": "medical", "prompt": "x", "max_tokens": 2},
                               timeout=60)
            httpx.post(f"{gw.public_url}/v1/completions", json={"model": "nope", "prompt": "x", "max_tokens": 2})
            text = httpx.get(f"{gw.admin_url}/metrics").text
            labels = {"alias": "medical", "version": "medical-v2"}
            assert sample(text, "exaone_gateway_requests_total", {**labels, "status": "200"}) == 2
            assert sample(text, "exaone_gateway_ttft_seconds_count", labels) == 1
            assert sample(text, "exaone_gateway_request_duration_seconds_count", labels) == 2
            assert sample(text, "exaone_gateway_generated_tokens_total", labels) == 5  # 3 streamed + 2
            # vLLM's own count of the prompts: "hello" streamed, then "x" (its usage in the plain answer).
            streamed_prompt = sample(text, "exaone_gateway_prompt_tokens_total", labels) - plain.json()["usage"]["prompt_tokens"]
            assert streamed_prompt >= 1 and plain.json()["usage"]["prompt_tokens"] >= 1
            assert sample(text, "exaone_gateway_in_flight_requests", {"alias": "medical"}) == 0
            assert sample(text, "exaone_gateway_alias_version", {"alias": "medical"}) == 2
            assert sample(text, "exaone_gateway_alias_switch_timestamp_seconds", {"alias": "medical"}) > 1.7e9
            unknown = {"alias": "unknown", "version": "none", "reason": "model_not_found"}
            assert sample(text, "exaone_gateway_request_errors_total", unknown) == 1
            # Unloading a version an alias points to is refused.
            busy = httpx.delete(f"{gw.admin_url}/admin/versions/medical-v2", headers=auth)
            assert busy.status_code == 409
    finally:
        unload_all(upstreams, ["medical-v2"])
