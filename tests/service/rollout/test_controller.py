"""The rollout controller's decisions and its interruptions, against the real registry (Azurite) and the gateway's
real metrics objects fed with simulated traffic (deterministic counts; the CPU vLLM runs are tests/service/
test_rollout.py): steps, promotion, rollback with its reason, Ctrl-C/SIGTERM back to stable, resumption."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from exaone_lora.canary import CanarySplit
from exaone_lora.model_shape import EXAONE_TINY
from service.gateway.metrics import GatewayMetrics
from service.registry import AdapterRegistry
from service.rollout.analysis import Thresholds
from service.rollout.controller import RolloutController, RolloutError, RolloutSettings
from service.rollout.record import RolloutRecord, load, save
from tests.support.processes import Azurite

pytestmark = pytest.mark.azurite


@dataclass
class SimulatedHosts:
    """100 requests per metrics read, split by the registry's canary weight; the candidate fails `fault` of its own."""

    registry: AdapterRegistry
    fault: float = 0.0
    metrics_: GatewayMetrics = field(default_factory=GatewayMetrics)
    applied: list[tuple[int | None, int]] = field(default_factory=list)  # (current, canary weight) at each apply

    async def apply(self) -> None:
        state = self.registry.alias("medical")
        self.applied.append((state.current, state.canary.weight if state.canary else 0))

    async def metrics(self) -> list[str]:
        state = self.registry.alias("medical")
        stable = f"medical-v{state.current}"
        if state.canary is not None:
            candidate, share = f"medical-v{state.canary.version}", state.canary.weight
            failed = round(share * self.fault)
            self.metrics_.requests.labels("medical", candidate, "200").inc(share - failed)
            self.metrics_.requests.labels("medical", candidate, "500").inc(failed)
            self.metrics_.requests.labels("medical", stable, "200").inc(100 - share)
        else:
            self.metrics_.requests.labels("medical", stable, "200").inc(100)
        return [self.metrics_.render().decode()]


@pytest.fixture
def registry(azurite_blob: Azurite, tiny_adapters: dict[str, Path]) -> AdapterRegistry:
    reg = AdapterRegistry.from_connection_string(azurite_blob.connection_string, container=f"rc{secrets.token_hex(4)}")
    reg.ensure_container()
    for name in ("medical", "legal"):
        reg.publish("medical", tiny_adapters[name], base_model_name=EXAONE_TINY.name, base_model_revision="0" * 40,
                    max_rank=8)
    reg.set_alias("medical", 1)
    return reg


SETTINGS = RolloutSettings(canary=10, step=25, interval_s=0.01, thresholds=Thresholds(min_requests=5))


def run(registry: AdapterRegistry, hosts: SimulatedHosts, settings: RolloutSettings = SETTINGS,
        sleep: object = None) -> RolloutRecord:
    controller = RolloutController(registry, "medical", 2, settings, hosts, say=lambda _: None)
    if sleep is not None:
        controller.sleep = sleep  # type: ignore[assignment]
    return asyncio.run(controller.run())


def test_a_candidate_that_holds_is_stepped_up_and_promoted(registry: AdapterRegistry) -> None:
    hosts = SimulatedHosts(registry)
    record = run(registry, hosts)
    assert record.state == "promoted" and [w.weight for w in record.windows] == [10, 35, 60, 85]
    assert hosts.applied == [(1, 10), (1, 35), (1, 60), (1, 85), (2, 0)]
    state = registry.alias("medical")
    assert (state.current, state.history, state.canary) == (2, [1, 2], None)
    assert load(registry, "medical") == record
    assert run(registry, hosts).state == "promoted"  # re-run: already current, nothing changes
    assert hosts.applied[-1] == (2, 0) and len(hosts.applied) == 5


def test_a_failing_candidate_is_rolled_back_with_the_reason(registry: AdapterRegistry) -> None:
    hosts = SimulatedHosts(registry, fault=0.5)
    record = run(registry, hosts)
    assert record.state == "rolled_back" and record.weight == 0
    assert record.reason == "at 10 %: candidate error rate 50.0% > 5.0%"
    assert record.windows[-1].measurements["candidate_error_rate"] == 0.5
    state = registry.alias("medical")
    assert (state.current, state.canary) == (1, None)
    assert hosts.applied[-1] == (1, 0)


def test_too_little_traffic_is_waited_out_then_rolled_back(registry: AdapterRegistry) -> None:
    hosts = SimulatedHosts(registry)
    settings = SETTINGS.model_copy(update={"thresholds": Thresholds(min_requests=50), "max_waits": 3})
    record = run(registry, hosts, settings)
    assert record.state == "rolled_back" and [w.verdict for w in record.windows] == ["wait"] * 3
    assert "not enough candidate traffic in 3 windows at 10 %" in record.reason


def test_an_interrupted_rollout_leaves_the_alias_on_stable(registry: AdapterRegistry) -> None:
    hosts = SimulatedHosts(registry)
    calls = 0

    async def interrupted(_: float) -> None:  # Ctrl-C / SIGTERM cancels the task during the second window
        nonlocal calls
        calls += 1
        if calls == 2:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        run(registry, hosts, sleep=interrupted)
    state = registry.alias("medical")
    assert (state.current, state.canary) == (1, None)
    record = load(registry, "medical")
    assert record is not None and record.state == "aborted" and record.weight == 0
    assert hosts.applied[-1] == (1, 0)


def test_a_rerun_resumes_from_the_registrys_weight_and_another_canary_is_refused(registry: AdapterRegistry) -> None:
    registry.set_canary("medical", CanarySplit(version=2, weight=60), expected_current=1)
    save(registry, RolloutRecord(domain="medical", stable=1, candidate=2, settings={}, weight=60))
    record = run(registry, SimulatedHosts(registry))
    assert record.state == "promoted" and [w.weight for w in record.windows] == [60, 85]

    registry.set_canary("medical", CanarySplit(version=1, weight=10), expected_current=2)
    with pytest.raises(RolloutError, match="a canary of medical-v1 is in progress"):
        asyncio.run(RolloutController(registry, "medical", 3, SETTINGS, SimulatedHosts(registry)).run())
