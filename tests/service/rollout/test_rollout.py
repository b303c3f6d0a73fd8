"""Canary rollouts against the real CPU vLLM under a bounded client loop: the registry (Azurite) holds the desired
state, the controller steps the candidate's weight through the reconciler and the gateway's admin API, and judges
each window on the gateway's own per-version metrics.

The bad candidate is a valid adapter (the validator accepts it) served through a fault-injecting stand-in in front
of the replica that answers 500 to that version's completions only: the gateway sees a replica failing for one
version, as it would for an adapter that breaks at inference. Its error rate is 100 %, so the verdict does not
depend on the machine's speed; windows without enough candidate traffic are waited out (bounded), not judged.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from exaone_lora.model_shape import EXAONE_TINY
from service.gateway import EngineClient, GatewayAdmin
from service.gateway.server import RunningGateway
from service.reconciler import Reconciler, RegistrySource
from service.registry import AdapterRegistry
from service.rollout.analysis import Thresholds
from service.rollout.controller import RolloutController, RolloutSettings
from service.rollout.hosts import GatewayHost, GatewayHosts
from service.rollout.record import RolloutRecord, load
from tests.support.asgi import serve_in_thread
from tests.support.processes import Azurite, RunningProcess
from tests.support.serving import GatewayFactory, TrafficLoop, unload_all

pytestmark = [pytest.mark.vllm, pytest.mark.azurite]


@contextmanager
def faulty_replica(upstream: str, broken: set[str]) -> Iterator[str]:
    """A pass-through to `upstream` that answers 500 to completions of the versions in `broken`."""
    async def forward(request: Request) -> Response:
        body = await request.body()
        if request.method == "POST" and request.url.path.endswith("completions"):
            model = (await request.json()).get("model")
            if model in broken:
                return JSONResponse({"error": {"message": "injected fault", "type": "server_error"}}, status_code=500)
        async with httpx.AsyncClient(timeout=120) as client:
            answer = await client.request(request.method, f"{upstream}{request.url.path}", content=body,
                                          headers={"content-type": request.headers.get("content-type", "")})
        return Response(answer.content, status_code=answer.status_code,
                        media_type=answer.headers.get("content-type"))

    app = Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])
    with serve_in_thread(app) as url:
        yield url


def _registry(azurite: Azurite, adapters: dict[str, Path]) -> AdapterRegistry:
    registry = AdapterRegistry.from_connection_string(azurite.connection_string, container=f"ro{secrets.token_hex(4)}")
    registry.ensure_container()
    for name in ("medical", "legal", "code"):  # v1, v2, v3: other weights each
        registry.publish("medical", adapters[name], base_model_name=EXAONE_TINY.name, base_model_revision="0" * 40,
                         max_rank=8)
    registry.set_alias("medical", 1)
    return registry


def _rollout(registry: AdapterRegistry, gw: RunningGateway, key: str, engine: str, cache: Path, version: int | None,
             settings: RolloutSettings, lines: list[str]) -> RolloutRecord | None:
    """Reconcile the hosts to the registry (version None: the stable version, as a deploy leaves it), or run a
    rollout of `version` through them."""
    async def go() -> RolloutRecord | None:
        async with httpx.AsyncClient() as client:
            admin = GatewayAdmin(gw.admin_url, key, client)
            reconciler = Reconciler([EngineClient(engine, client)], admin, RegistrySource(registry, cache, EXAONE_TINY, 8),
                                    max_cpu_loras=4)
            hosts = GatewayHosts(registry, [GatewayHost(admin, reconciler)])
            if version is None:
                await hosts.apply()
                return None
            return await RolloutController(registry, "medical", version, settings, hosts, say=lines.append).run()

    return asyncio.run(go())


def _shadow_answers(gw: RunningGateway, version: str) -> float:
    text = httpx.get(f"{gw.admin_url}/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "exaone_gateway_shadow_requests_total" and s.labels.get("version") == version
               and s.labels.get("status") == "200")


# Short windows; latency is not what these tests decide on (the unit tests cover it), so its bounds are wide.
SETTINGS = dict(interval_s=3.0, max_waits=20,
                thresholds=Thresholds(min_requests=4, max_latency_ratio=20.0, latency_slack_s=5.0))


def test_a_good_candidate_is_promoted_with_no_failed_request(
        vllm: RunningProcess, azurite_blob: Azurite, tmp_path: Path, tiny_adapters: dict[str, Path],
        gateway_factory: GatewayFactory, admin_key: str) -> None:
    registry = _registry(azurite_blob, tiny_adapters)
    lines: list[str] = []
    try:
        with gateway_factory([vllm.url]) as gw:
            settings = RolloutSettings(canary=30, step=35, shadow=50, **SETTINGS)  # type: ignore[arg-type]
            _rollout(registry, gw, admin_key, vllm.url, tmp_path, None, settings, lines)
            loop = TrafficLoop(gw.public_url, "medical", workers=3, max_requests=600, max_seconds=240)
            with loop.running():
                result = _rollout(registry, gw, admin_key, vllm.url, tmp_path, 2, settings, lines)
                loop.wait_for(5)  # requests after the promotion
            state = httpx.get(f"{gw.admin_url}/admin/state", headers={"Authorization": f"Bearer {admin_key}"}).json()
            shadow_ok = _shadow_answers(gw, "medical-v2")
        assert result is not None, lines
        assert result.state == "promoted", (result.reason, lines)
        assert [w.weight for w in result.windows if w.verdict == "pass"] == [30, 65]
        assert loop.failures == [] and set(loop.statuses) == {200}, loop.failures[:5]
        assert loop.versions["medical-v1"] > 0 and loop.versions["medical-v2"] > 0
        alias = registry.alias("medical")
        assert (alias.current, alias.canary) == (2, None)
        assert state["aliases"]["medical"]["name"] == "medical-v2" and state["canaries"] == {}
        assert shadow_ok > 0  # stable requests were mirrored to the candidate and answered
        saved = load(registry, "medical")
        assert saved is not None and saved.state == "promoted" and len(saved.windows) >= 2
    finally:
        unload_all([vllm.url], ["medical-v1", "medical-v2", "medical-v3"])


def test_a_failing_candidate_is_rolled_back_and_stable_never_stops_serving(
        vllm: RunningProcess, azurite_blob: Azurite, tmp_path: Path, tiny_adapters: dict[str, Path],
        gateway_factory: GatewayFactory, admin_key: str) -> None:
    registry = _registry(azurite_blob, tiny_adapters)
    lines: list[str] = []
    try:
        with faulty_replica(vllm.url, {"medical-v3"}) as replica, gateway_factory([replica]) as gw:
            settings = RolloutSettings(canary=30, step=35, **SETTINGS)  # type: ignore[arg-type]
            _rollout(registry, gw, admin_key, vllm.url, tmp_path, None, settings, lines)
            loop = TrafficLoop(gw.public_url, "medical", workers=3, max_requests=600, max_seconds=240)
            with loop.running():
                result = _rollout(registry, gw, admin_key, vllm.url, tmp_path, 3, settings, lines)
                loop.wait_for(10)  # after the rollback: every request on the stable version
            after = dict(loop.outcomes)
            state = httpx.get(f"{gw.admin_url}/admin/state", headers={"Authorization": f"Bearer {admin_key}"}).json()
        assert result is not None, lines
        assert result.state == "rolled_back", (result.reason, lines)
        assert "error rate" in result.reason and "at 30 %" in result.reason
        assert {v for v, status in after if status != 200} <= {"medical-v3"}  # only the candidate ever failed
        assert after.get(("medical-v1", 200), 0) > 0 and not any(v == "medical-v1" and s != 200 for v, s in after)
        alias = registry.alias("medical")
        assert (alias.current, alias.canary) == (1, None)
        assert state["aliases"]["medical"]["name"] == "medical-v1" and state["canaries"] == {}
        saved = load(registry, "medical")
        assert saved is not None and saved.state == "rolled_back" and saved.windows[-1].verdict == "fail"
    finally:
        unload_all([vllm.url], ["medical-v1", "medical-v2", "medical-v3"])
