"""How the gateway chooses among the replicas that serve a route: pure functions over what it knows of each.

Two policies (`exaone_lora.spec.RoutingPolicy`):

- `least-outstanding`: the gateway's own count of requests in flight on each replica, nothing else.
- `scored` (the default): the Gateway API Inference Extension's endpoint picker, in request units. A replica's
  cost is its load: requests vLLM has not scheduled yet (waiting) count whole, requests in the running batch
  (the larger of the gateway's own outstanding count and vLLM's running, so traffic from elsewhere is not
  hidden) count RUNNING_WEIGHT each; plus
  a penalty for a nearly full KV cache (vLLM preempts there); plus the cost of a LoRA slot swap when the route's
  adapter is not resident and every slot is taken (the request then waits until a slot frees, and another
  adapter is evicted). With adapters outnumbering GPU
  slots, affinity keeps each adapter on the replicas where it already sits instead of cycling every adapter
  through every replica's slots.

A merged replica of the version is first until it has `merged_spill_at` outstanding, under both policies; ties
go to the alias's home replica (its prefix cache). Metrics older than their time to live are ignored: the score
falls back to outstanding counts and the gateway's own memory of which adapters it sent where.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import get_args

from prometheus_client.parser import text_string_to_metric_families

from exaone_lora.spec import RoutingPolicy

POLICIES: tuple[str, ...] = get_args(RoutingPolicy)

# Costs in request units: how many waiting requests' worth of queue a condition weighs.
# A request in the running batch does not make a new one wait, but it slows every decode step. Measured
# (docs/routing-benchmarks.md): at 0.5 a hot adapter piled up on one replica (p50 +38 % against
# least-outstanding); at 1.0 it spills to a second replica sooner, with p50 even and still fewer slot loads.
RUNNING_WEIGHT = 1.0
# Waiting for a LoRA slot costs about a whole generation of the adapter in the slot, plus the swap itself; with
# short CPU requests that is a few queued requests. Large enough that an adapter stays put while the replica
# that holds it is no more than this many requests busier than the others.
SWAP_COST = 3.0
# Taking a free slot costs a copy of the weights into it (no waiting), but it uses up a slot another adapter could
# have had: a replica holding the adapter wins while it runs fewer than FREE_SLOT_COST / RUNNING_WEIGHT more requests.
FREE_SLOT_COST = 1.0
# KV cache: no cost below this share in use; above it, up to KV_COST at 100 % (preemption and recomputation).
KV_SAFE = 0.8
KV_COST = 8.0


class MetricsParseError(ValueError):
    """A replica's /metrics text that is not Prometheus exposition text, or lacks vLLM's scheduler gauges."""


@dataclass(frozen=True)
class EngineLoad:
    """One scrape of a replica's vLLM /metrics: what the scorer reads."""

    running: float
    waiting: float
    kv_cache_usage: float  # 0..1
    running_adapters: frozenset[str] = frozenset()
    waiting_adapters: frozenset[str] = frozenset()
    max_loras: int | None = None  # LoRA slots (vLLM's --max-loras); None when vLLM serves no LoRA
    read_at: float = 0.0  # monotonic seconds

    @property
    def active_adapters(self) -> frozenset[str]:
        return self.running_adapters | self.waiting_adapters


# vLLM 0.26 and the CPU build 0.32 export `vllm:kv_cache_usage_perc`; older v1 engines `vllm:gpu_cache_usage_perc`.
KV_METRICS = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


def _names(label: str | None) -> frozenset[str]:
    return frozenset(n for n in (label or "").split(",") if n)


def parse_vllm_metrics(text: str, read_at: float) -> EngineLoad:
    """vLLM's scheduler gauges from its /metrics text (summed over engines; the KV share is the fullest engine's).

    `vllm:lora_requests_info` is a gauge set to the current time under labels naming the running and waiting
    adapters, so every set of adapters seen leaves a series behind: the newest (largest value) is the present one.
    """
    gauges: dict[str, list[float]] = {}
    lora: tuple[float, dict[str, str]] | None = None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "vllm:lora_requests_info":
                    if lora is None or sample.value > lora[0]:
                        lora = (float(sample.value), dict(sample.labels))
                elif sample.name in ("vllm:num_requests_running", "vllm:num_requests_waiting", *KV_METRICS):
                    gauges.setdefault(sample.name, []).append(float(sample.value))
    except ValueError as exc:
        raise MetricsParseError(f"not Prometheus text: {exc}") from None
    missing = [n for n in ("vllm:num_requests_running", "vllm:num_requests_waiting") if n not in gauges]
    if missing:
        raise MetricsParseError(f"no {', '.join(missing)} in the replica's /metrics: is it a vLLM server?")
    kv = next((max(gauges[n]) for n in KV_METRICS if n in gauges), 0.0)
    max_loras: int | None = None
    running: frozenset[str] = frozenset()
    waiting: frozenset[str] = frozenset()
    if lora is not None:
        labels = lora[1]
        running, waiting = _names(labels.get("running_lora_adapters")), _names(labels.get("waiting_lora_adapters"))
        try:
            max_loras = int(labels.get("max_lora", ""))
        except ValueError:
            max_loras = None
    return EngineLoad(running=sum(gauges["vllm:num_requests_running"]), waiting=sum(gauges["vllm:num_requests_waiting"]),
                      kv_cache_usage=min(1.0, max(0.0, kv)), running_adapters=running, waiting_adapters=waiting,
                      max_loras=max_loras, read_at=read_at)


@dataclass
class SlotMemory:
    """The adapters the gateway last sent to one replica, most recent last: vLLM keeps the most recently used
    adapters in its GPU slots (LRU), so the last `slots` distinct ones sent are the ones resident there."""

    recent: OrderedDict[str, None] = field(default_factory=OrderedDict)
    limit: int = 64  # distinct names kept, whatever the slot count (bounded memory)

    def touch(self, name: str) -> None:
        self.recent.pop(name, None)
        self.recent[name] = None
        while len(self.recent) > self.limit:
            self.recent.popitem(last=False)

    def keep_only(self, names: set[str]) -> None:
        for name in [n for n in self.recent if n not in names]:
            del self.recent[name]


@dataclass(frozen=True)
class Candidate:
    """What the scorer knows of one replica for one request."""

    url: str
    outstanding: int
    order: int  # distance from the alias's home replica: the tie-break
    fast: bool = False  # a merged replica of the version with room left: first whatever the score
    load: EngineLoad | None = None  # None, or ignored when older than the time to live
    remembered: tuple[str, ...] = ()  # the adapters the gateway last sent here, oldest first
    slots: int | None = None  # vLLM's --max-loras, from any scrape (a setting: it does not go stale)


@dataclass(frozen=True)
class Score:
    """A candidate's cost split by term (what `/admin/state` and the tests show)."""

    url: str
    fast: bool
    queue: float
    kv: float
    affinity: float
    order: int

    @property
    def total(self) -> float:
        return self.queue + self.kv + self.affinity

    def key(self) -> tuple[int, float, int]:
        return (0 if self.fast else 1, self.total, self.order)


def fresh(load: EngineLoad | None, now: float, ttl: float) -> EngineLoad | None:
    return load if load is not None and now - load.read_at <= ttl else None


def affinity_cost(adapter: str | None, candidate: Candidate, load: EngineLoad | None) -> float:
    """0 when the adapter is resident; FREE_SLOT_COST when a slot is free; SWAP_COST when all are taken.

    Resident: among the last `slots` distinct adapters the gateway sent there (vLLM's slots are an LRU), or
    running or waiting there by a fresh scrape (requests the gateway did not send, a restarted gateway)."""
    if adapter is None:  # the base model: no adapter to place
        return 0.0
    slots = candidate.slots or 1  # unknown until a first scrape: assume the fewest
    resident = set(candidate.remembered[-slots:])
    if load is not None:
        resident |= load.active_adapters
    if adapter in resident:
        return 0.0
    return FREE_SLOT_COST if len(resident) < slots else SWAP_COST


def score(candidate: Candidate, adapter: str | None, policy: str, now: float, ttl: float) -> Score:
    if policy == "least-outstanding":
        return Score(candidate.url, candidate.fast, float(candidate.outstanding), 0.0, 0.0, candidate.order)
    if policy != "scored":
        raise ValueError(f"unknown routing policy {policy!r}: one of {', '.join(POLICIES)}")
    load = fresh(candidate.load, now, ttl)
    queue = RUNNING_WEIGHT * candidate.outstanding  # without a fresh scrape: the gateway's own count only
    kv = 0.0
    if load is not None:
        queue = RUNNING_WEIGHT * max(candidate.outstanding, load.running) + load.waiting
        kv = KV_COST * max(0.0, load.kv_cache_usage - KV_SAFE) / (1.0 - KV_SAFE)
    return Score(candidate.url, candidate.fast, queue, kv, affinity_cost(adapter, candidate, load),
                 candidate.order)


def choose(candidates: list[Candidate], adapter: str | None, policy: str, now: float, ttl: float) -> Candidate:
    """The candidate with the lowest (fast path first, cost, distance from home); `adapter` None for the base model.

    `candidates` are the replicas allowed for the request (healthy, serving the route, not excluded): the caller
    filters, this only orders, so no policy can place a request where the filter would not.
    """
    if not candidates:
        raise ValueError("no candidate replica to choose from")
    scores = {c.url: score(c, adapter, policy, now, ttl) for c in candidates}
    return min(candidates, key=lambda c: scores[c.url].key())
