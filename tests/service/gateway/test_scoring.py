"""The replica scorer alone (no I/O): generated metric snapshots, and vLLM's real /metrics text from the CPU build."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.gateway.core import METRICS_TTL_S, GatewayCore, RoutingError
from service.gateway.engine import EngineClient
from service.gateway.scoring import (
    FREE_SLOT_COST,
    POLICIES,
    RUNNING_WEIGHT,
    SWAP_COST,
    Candidate,
    EngineLoad,
    MetricsParseError,
    choose,
    parse_vllm_metrics,
    score,
)
from service.gateway.state import AliasTable, Replica, Route

FIXTURES = Path(__file__).parent / "fixtures"
ADAPTERS = [f"a{i}-v1" for i in range(6)]
NOW = 1000.0
DETERMINISTIC = settings(max_examples=150, deadline=None, derandomize=True)

names = st.frozensets(st.sampled_from(ADAPTERS), max_size=3)
loads = st.one_of(st.none(), st.builds(
    EngineLoad, running=st.integers(0, 40).map(float), waiting=st.integers(0, 40).map(float),
    kv_cache_usage=st.floats(0, 1), running_adapters=names, waiting_adapters=names,
    max_loras=st.sampled_from([None, 1, 2, 4]), read_at=st.sampled_from([NOW, NOW - 1, NOW - 10 * METRICS_TTL_S])))
candidates = st.builds(Candidate, url=st.just(""), outstanding=st.integers(0, 40), order=st.integers(0, 7),
                       fast=st.booleans(), load=loads,
                       remembered=st.lists(st.sampled_from(ADAPTERS), max_size=4, unique=True).map(tuple),
                       slots=st.sampled_from([None, 1, 2, 4]))


def _numbered(cands: list[Candidate]) -> list[Candidate]:
    return [Candidate(f"http://127.0.0.1:{8000 + i}", c.outstanding, c.order, c.fast, c.load, c.remembered, c.slots)
            for i, c in enumerate(cands)]


def _core(n: int, routing: str) -> GatewayCore:
    client = httpx.AsyncClient()
    replicas = [Replica(EngineClient(f"http://127.0.0.1:{9000 + i}", client), base=("exaone",)) for i in range(n)]
    core = GatewayCore("exaone", replicas, client, aliases=AliasTable(), routing=routing)
    for r in replicas:
        r.loaded = set(ADAPTERS)
    return core


@DETERMINISTIC
@given(st.lists(candidates, min_size=1, max_size=5), st.sampled_from(POLICIES),
       st.sets(st.integers(0, 4)), st.sets(st.integers(0, 4)), st.sampled_from([*ADAPTERS, None]))
def test_pick_never_places_on_an_unhealthy_or_excluded_replica(cands: list[Candidate], policy: str, sick: set[int],
                                                              excluded: set[int], adapter: str | None) -> None:
    core = _core(len(cands), policy)
    for i, (r, c) in enumerate(zip(core.replicas, cands, strict=True)):
        r.outstanding, r.load, r.slots, r.healthy = c.outstanding, c.load, c.slots, i not in sick
        for name in c.remembered:
            r.sent.touch(name)
    exclude = {core.replicas[i].url for i in excluded if i < len(cands)}
    allowed = {r.url for r in core.replicas if r.healthy and r.url not in exclude}
    route = Route("exaone", "exaone", "base") if adapter is None else Route(adapter[:2], adapter, adapter)
    if not allowed:
        with pytest.raises(RoutingError):
            core.pick(route, exclude=exclude)
        return
    chosen = core.pick(route, exclude=exclude)
    assert chosen.url in allowed
    if adapter is not None:
        assert next(reversed(chosen.sent.recent)) == adapter  # the gateway remembers where it sent the adapter


@DETERMINISTIC
@given(candidates, st.sampled_from(ADAPTERS))
def test_resident_adapter_wins_when_loads_are_equal(base: Candidate, adapter: str) -> None:
    others = [a for a in ADAPTERS if a != adapter]
    # Equal queues and KV caches; one replica holds the adapter, the other has every slot taken by others.
    load = EngineLoad(running=base.outstanding, waiting=0, kv_cache_usage=0.1, max_loras=2, read_at=NOW)
    holder = Candidate("http://127.0.0.1:1", base.outstanding, order=1, load=load, remembered=(others[0], adapter),
                       slots=2)
    full = Candidate("http://127.0.0.1:2", base.outstanding, order=0, load=load, remembered=(others[0], others[1]),
                     slots=2)
    assert choose([full, holder], adapter, "scored", NOW, METRICS_TTL_S).url == holder.url
    # A replica with a free slot still loses to the holder (a copy into the slot), and beats the full one.
    free = Candidate("http://127.0.0.1:3", base.outstanding, order=0, load=load, remembered=(others[0],), slots=2)
    assert choose([free, holder], adapter, "scored", NOW, METRICS_TTL_S).url == holder.url
    assert choose([full, free], adapter, "scored", NOW, METRICS_TTL_S).url == free.url
    # Least-outstanding knows nothing of adapters: the tie goes to the home replica (order 0).
    assert choose([full, holder], adapter, "least-outstanding", NOW, METRICS_TTL_S).url == full.url


@DETERMINISTIC
@given(st.integers(0, 30), st.integers(1, 30), st.sampled_from([*ADAPTERS, None]), st.booleans(),
       st.sampled_from([NOW, NOW - 10 * METRICS_TTL_S]))
def test_lower_queue_wins_when_affinity_is_equal(queue: int, more: int, adapter: str | None, resident: bool,
                                                 read_at: float) -> None:
    remembered = (adapter,) if resident and adapter else ()

    def replica(url: str, waiting: int, order: int) -> Candidate:
        load = EngineLoad(running=0, waiting=waiting, kv_cache_usage=0.2, max_loras=2, read_at=read_at)
        # The gateway's own count mirrors vLLM's queue: a fresh scrape and its fallback agree on the order.
        return Candidate(url, waiting, order, load=load, remembered=remembered, slots=2)
    busy, idle = replica("http://127.0.0.1:1", queue + more, 0), replica("http://127.0.0.1:2", queue, 1)
    for policy in POLICIES:
        assert choose([busy, idle], adapter, policy, NOW, METRICS_TTL_S).url == idle.url


def test_stale_metrics_fall_back_to_outstanding_counts() -> None:
    stale = EngineLoad(running=0, waiting=0, kv_cache_usage=0.0, max_loras=2, read_at=NOW - 2 * METRICS_TTL_S)
    queued = EngineLoad(running=9, waiting=30, kv_cache_usage=0.99, max_loras=2, read_at=NOW - 2 * METRICS_TTL_S)
    a = Candidate("http://127.0.0.1:1", outstanding=3, order=0, load=stale, slots=2)
    b = Candidate("http://127.0.0.1:2", outstanding=1, order=1, load=queued, slots=2)
    assert [score(c, None, "scored", NOW, METRICS_TTL_S).total for c in (a, b)] == [3 * RUNNING_WEIGHT, RUNNING_WEIGHT]
    assert choose([a, b], None, "scored", NOW, METRICS_TTL_S).url == b.url
    # The same scrapes, fresh: b's 39 queued requests and full KV cache count now.
    fresh_b = Candidate(b.url, 1, 1, load=EngineLoad(9, 30, 0.99, max_loras=2, read_at=NOW), slots=2)
    assert choose([a, fresh_b], None, "scored", NOW, METRICS_TTL_S).url == a.url


def test_affinity_costs_are_ordered() -> None:
    load = EngineLoad(running=0, waiting=0, kv_cache_usage=0.0, running_adapters=frozenset({"a1-v1"}), max_loras=2,
                      read_at=NOW)
    c = Candidate("http://127.0.0.1:1", 0, 0, load=load, remembered=("a0-v1",), slots=2)
    assert score(c, "a1-v1", "scored", NOW, METRICS_TTL_S).affinity == 0  # running there by vLLM's own metrics
    assert score(c, "a0-v1", "scored", NOW, METRICS_TTL_S).affinity == 0  # sent there last by this gateway
    assert score(c, "a2-v1", "scored", NOW, METRICS_TTL_S).affinity == SWAP_COST  # both slots taken
    one = Candidate("http://127.0.0.1:1", 0, 0, remembered=("a0-v1",), slots=2)
    assert score(one, "a2-v1", "scored", NOW, METRICS_TTL_S).affinity == FREE_SLOT_COST
    # A free slot weighs at least one running request; a swap more than a free slot and a waiting request.
    assert 0 < RUNNING_WEIGHT <= FREE_SLOT_COST < SWAP_COST and SWAP_COST > 1


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown routing policy 'random'"):
        _core(1, "random")


def test_parses_real_vllm_metrics_from_the_cpu_build() -> None:
    busy = parse_vllm_metrics((FIXTURES / "vllm-0.32-cpu-metrics-busy.txt").read_text(), read_at=5.0)
    assert (busy.running, busy.waiting, busy.max_loras, busy.read_at) == (3.0, 0.0, 2, 5.0)
    assert 0 < busy.kv_cache_usage < 0.01
    # The newest of vLLM's lora_requests_info series (it sets the gauge to the time): two adapters in use.
    assert busy.running_adapters == busy.active_adapters == {"legal-v1", "code-v1"}
    idle = parse_vllm_metrics((FIXTURES / "vllm-0.32-cpu-metrics-idle.txt").read_text(), read_at=6.0)
    assert (idle.running, idle.waiting, idle.kv_cache_usage, idle.max_loras) == (0.0, 0.0, 0.0, 2)
    assert idle.active_adapters == frozenset()  # the newest series is the empty one once requests ended


def test_older_vllm_kv_name_and_bad_text() -> None:
    text = ('vllm:num_requests_running{engine="0"} 1.0\nvllm:num_requests_running{engine="1"} 2.0\n'
            'vllm:num_requests_waiting{engine="0"} 4.0\nvllm:gpu_cache_usage_perc{engine="0"} 0.5\n')
    load = parse_vllm_metrics(text, 0.0)
    assert (load.running, load.waiting, load.kv_cache_usage, load.max_loras) == (3.0, 4.0, 0.5, None)
    with pytest.raises(MetricsParseError, match="vllm:num_requests_running, vllm:num_requests_waiting"):
        parse_vllm_metrics("process_cpu_seconds_total 1.0\n", 0.0)
    with pytest.raises(MetricsParseError, match="not Prometheus text"):
        parse_vllm_metrics("vllm:num_requests_running{engine=0 1\n", 0.0)
