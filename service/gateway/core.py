"""The gateway's brain: resolve a client's model name, pick a replica, account for traffic.

Kept apart from the HTTP layer so the admin app, the public app and the reconciler's in-process use
share one object per gateway (no module-level state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import zlib
from dataclasses import dataclass, field

import aiohttp
import httpx
from pydantic import ValidationError

from exaone_lora.canary import CanarySplit, takes_candidate, takes_shadow
from service.gateway.engine import EngineClient, EngineError
from service.gateway.guards import GuardError, check_alias_target
from service.gateway.metrics import GatewayMetrics
from service.gateway.names import parse_version_name
from service.gateway.scoring import POLICIES, Candidate, MetricsParseError, choose, parse_vllm_metrics
from service.gateway.state import AliasTable, Replica, Route, Split, Traffic

log = logging.getLogger("service.gateway")


class RoutingError(Exception):
    """A request the gateway cannot place; `status`/`code` become the OpenAI-style error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# Connections the gateway keeps to its replicas at most: one per stream in flight (HTTP/1.1), past vLLM's max_num_seqs.
MAX_UPSTREAM_CONNECTIONS = 512
# vLLM (uvicorn) closes a keep-alive connection idle for 5 s (VLLM_HTTP_TIMEOUT_KEEP_ALIVE); the gateway drops its
# idle ones sooner, so it does not send a request on a connection the replica is closing at that moment.
UPSTREAM_KEEPALIVE_S = 3.0
# The `scored` policy reads each replica's /metrics this often, waits this long for an answer, and trusts a scrape
# this long: a queue changes within a request's life (seconds on a GPU), and a scrape of vLLM costs it ~1 ms.
METRICS_INTERVAL_S = 0.5
METRICS_TIMEOUT_S = 1.0
METRICS_TTL_S = 2.0


@dataclass
class GatewayCore:
    served_name: str
    replicas: list[Replica]
    client: httpx.AsyncClient
    aliases: AliasTable = field(default_factory=AliasTable)
    traffic: Traffic = field(default_factory=Traffic)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    # Where deployed versions live on this host (`<root>/<domain>-vN`, validated when deployed). When set, a
    # replica that restarted without an alias's target version gets it loaded again on the next refresh.
    adapter_root: str | None = None
    # A merged replica takes its version's requests until this many are outstanding on it; beyond that the
    # overflow goes to the LoRA replicas (a merged replica is one GPU share, not the whole fleet).
    merged_spill_at: int = 64
    # How `pick` orders the replicas that may take a request (service.gateway.scoring).
    routing: str = "scored"
    # Draws the canary and shadow choices of requests without a sticky key (seeded in tests).
    rng: random.Random = field(default_factory=random.Random)
    # Shadow requests in flight at most; beyond it a request is not mirrored (counted as skipped), so a slow
    # candidate can never pile work up behind the clients' own requests.
    max_shadow_in_flight: int = 8
    shadow_in_flight: int = 0
    # Inference requests (every streamed token) go through aiohttp; `client` (httpx) makes the few admin calls.
    _inference: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.routing not in POLICIES:
            raise ValueError(f"unknown routing policy {self.routing!r}: one of {', '.join(POLICIES)}")

    @classmethod
    def for_upstreams(cls, served_name: str, upstreams: list[str], *, engine_api_key: str | None = None,
                      client: httpx.AsyncClient | None = None, routing: str = "scored") -> GatewayCore:
        if not upstreams:
            raise ValueError("the gateway needs at least one vLLM upstream URL")
        http = client or httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))
        replicas = [Replica(EngineClient(url, http, api_key=engine_api_key)) for url in upstreams]
        return cls(served_name=served_name, replicas=replicas, client=http, routing=routing)

    def inference_session(self) -> aiohttp.ClientSession:
        """The pooled session inference requests are forwarded on, made on first use (it binds to the running
        event loop). aiohttp rather than httpx on this path: every token passes through it, and httpcore 1.0.9
        scans its whole pool at each request start and end (quadratic in open connections) and, with a
        keep-alive limit below the connection limit, closes each connection a finished request leaves idle
        once more than that many are open (encode/httpcore#1000), so from ~64 streams each request paid a new
        TCP connection too (benchmarks/gateway_cpu.py, docs/gateway-benchmarks.md). No read timeout: streams of
        long generations must not be cut by the gateway."""
        if self._inference is None or self._inference.closed:
            connector = aiohttp.TCPConnector(limit=MAX_UPSTREAM_CONNECTIONS, limit_per_host=0,
                                             keepalive_timeout=UPSTREAM_KEEPALIVE_S)
            self._inference = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        return self._inference

    async def aclose(self) -> None:
        await self.client.aclose()
        if self._inference is not None:
            await self._inference.close()

    # -- routing -------------------------------------------------------------------------------
    def resolve(self, model: object, user: object = None) -> Route:
        """The version one request is served by, decided once on arrival (in-flight requests keep it): the alias's
        version, or its canary's candidate for the canary's share (by the request's `user` when the split is
        sticky on it). A request that stays on the alias's version may be mirrored to the candidate (`shadow`)."""
        if not isinstance(model, str) or not model:
            raise RoutingError(400, "invalid_request", "the request needs a `model` (an adapter alias or the base model)")
        if model == self.served_name:
            return Route(alias=model, upstream_model=model, label="base")
        target = self.aliases.get(model)
        if target is None:
            known = sorted([self.served_name, *self.aliases.targets()])
            shown = model if len(model) <= 64 else f"{model[:64]}..."
            raise RoutingError(404, "model_not_found", f"The model `{shown}` does not exist. Available: {', '.join(known)}")
        split = self.aliases.split(model)
        if split is None or split.name == target.name:
            return Route(alias=model, upstream_model=target.name, label=target.name)
        key = user if split.sticky == "user" and isinstance(user, str) and user else None
        if takes_candidate(model, split.weight, key, self.rng):
            return Route(alias=model, upstream_model=split.name, label=split.name)
        shadow = split.name if takes_shadow(split.shadow, self.rng) else None
        return Route(alias=model, upstream_model=target.name, label=target.name, shadow=shadow)

    def lora_replicas(self) -> list[Replica]:
        """Healthy multi-LoRA replicas: the ones versions are loaded into, warmed on and switched across."""
        return [r for r in self.replicas if r.healthy and r.serves_base(self.served_name)]

    def serves(self, replica: Replica, route: Route) -> bool:
        if route.label == "base":
            return replica.serves_base(self.served_name)
        return route.upstream_model in replica.loaded or replica.merged_for(route.upstream_model)

    def pick(self, route: Route, exclude: set[str] | frozenset[str] = frozenset()) -> Replica:
        """A healthy replica serving the route: a merged replica of the version first (until it has
        `merged_spill_at` outstanding), then the lowest cost under the routing policy (sticky by alias on ties)."""
        candidates = [r for r in self.replicas if r.healthy and r.url not in exclude and self.serves(r, route)]
        if not candidates:
            raise RoutingError(503, "no_replica", f"no healthy replica serves `{route.alias}` ({route.label}) right now")
        # Ties go to the alias's "home" replica, so its prompts keep hitting the same prefix cache.
        home = zlib.crc32(route.alias.encode()) % len(self.replicas)
        order = {r.url: (i - home) % len(self.replicas) for i, r in enumerate(self.replicas)}
        by_url = {r.url: r for r in candidates}
        adapter = None if route.label == "base" else route.upstream_model

        def candidate(r: Replica) -> Candidate:
            merged = adapter is not None and r.merged_for(adapter)
            return Candidate(url=r.url, outstanding=r.outstanding, order=order[r.url],
                             fast=merged and r.outstanding < self.merged_spill_at, load=r.load,
                             remembered=tuple(r.sent.recent), slots=r.slots)
        chosen = by_url[choose([candidate(r) for r in candidates], adapter, self.routing, time.monotonic(),
                               METRICS_TTL_S).url]
        if adapter is not None and not chosen.merged_for(adapter):
            chosen.sent.touch(adapter)  # it now sits in one of that replica's LoRA slots
        return chosen

    def path_of(self, replica: Replica, route: Route) -> str:
        if route.label == "base":
            return "base"
        return "merged" if replica.merged_for(route.upstream_model) else "lora"

    # -- state from the replicas ---------------------------------------------------------------
    async def refresh(self) -> None:
        """Re-read every replica's /v1/models: the only source of truth for what is loaded."""
        async def one(replica: Replica) -> None:
            try:
                models = await replica.engine.models()
            except (httpx.HTTPError, EngineError):
                replica.healthy = False
                return
            replica.loaded = set(models.adapters)
            replica.sent.keep_only(replica.loaded)  # an unloaded adapter left its slot too
            replica.base = models.base
            replica.healthy = True
            if replica.serves_base(self.served_name):
                await self._heal(replica)
        await asyncio.gather(*(one(r) for r in self.replicas))

    async def read_loads(self) -> None:
        """Scrape every replica's vLLM /metrics once (bounded by METRICS_TIMEOUT_S). A replica that does not answer
        keeps its last scrape, which the scorer stops trusting after METRICS_TTL_S: routing then falls back to the
        gateway's own outstanding counts. Health stays /v1/models' business (`refresh`)."""
        async def one(replica: Replica) -> None:
            try:
                text = await replica.engine.metrics_text(METRICS_TIMEOUT_S)
                load = parse_vllm_metrics(text, time.monotonic())
            except (httpx.HTTPError, EngineError, MetricsParseError) as exc:
                log.debug("metrics of %s not read: %s", replica.url, exc)
                return
            replica.load = load
            replica.slots = load.max_loras or replica.slots
        await asyncio.gather(*(one(r) for r in self.replicas))

    async def _heal(self, replica: Replica) -> None:
        """Load alias targets a restarted replica lost (runtime-loaded adapters do not survive a restart)."""
        if self.adapter_root is None:
            return
        for name in sorted(self.aliases.pointed_names() - replica.loaded):
            try:
                if await replica.engine.load(name, f"{self.adapter_root.rstrip('/')}/{name}"):
                    replica.loaded.add(name)
                    self.metrics.healed.labels(name).inc()
            except (httpx.HTTPError, EngineError):
                continue  # the next refresh tries again; routing avoids this replica for `name` meanwhile

    def switch_alias(self, alias: str, name: str) -> dict[str, object]:
        if parse_version_name(name) is None:
            raise RoutingError(400, "bad_version_name", f"`{name}` is not an immutable version name (`domain-vN`)")
        if alias == self.served_name:
            raise RoutingError(400, "reserved_alias", f"`{alias}` is the base model's name and cannot be an alias")
        try:
            # `medical` -> `medical-vN` only: an alias pointed at another domain's weights would answer legal
            # questions with a medical adapter (or the reverse) while every metric says `medical`.
            number = check_alias_target(alias, name)
        except GuardError as exc:
            raise RoutingError(400, "alias_domain_mismatch", str(exc)) from None
        # Merged replicas serve one fixed version each and are not part of a switch: until one serving `name`
        # is up, `name`'s traffic goes to the LoRA replicas.
        lora = self.lora_replicas()
        missing = [r.url for r in lora if name not in r.loaded]
        if missing or not lora:
            raise RoutingError(409, "version_not_loaded", f"`{name}` is not loaded on every healthy replica: {missing}")
        split = self.aliases.split(alias)
        previous = self.aliases.switch(alias, name, number)
        if split is not None and split.name == name:
            self._end_split(alias, split, "promoted")
        self.metrics.alias_version.labels(alias).set(number)
        self.metrics.alias_switched.labels(alias).set(time.time())
        return {"alias": alias, "current": name, "previous": previous.name if previous else None}

    def set_split(self, alias: str, name: str, weight: int, shadow: int = 0, sticky: str | None = None
                  ) -> dict[str, object]:
        """Send `weight` percent of `alias` to `name` (mirror `shadow` percent of the rest). Like a switch, only to a
        version of the alias's own domain that every LoRA replica has loaded; the alias must exist already."""
        try:
            number = check_alias_target(alias, name)
            CanarySplit(version=number, weight=weight, shadow=shadow, sticky=sticky)  # type: ignore[arg-type]
        except GuardError as exc:
            raise RoutingError(400, "alias_domain_mismatch", str(exc)) from None
        except ValidationError as exc:
            raise RoutingError(400, "bad_split", f"canary of `{alias}`: {exc.errors()[0]['msg']}") from None
        if self.aliases.get(alias) is None:
            raise RoutingError(404, "unknown_alias", f"no alias `{alias}`: switch it to its stable version first")
        lora = self.lora_replicas()
        missing = [r.url for r in lora if name not in r.loaded]
        if missing or not lora:
            raise RoutingError(409, "version_not_loaded", f"`{name}` is not loaded on every healthy replica: {missing}")
        before = self.aliases.split(alias)
        if before is not None and before.name != name:
            self._end_split(alias, before, "rolled_back")  # replaced by another candidate: this one did not make it
        self.aliases.set_split(alias, Split(name, weight, shadow, sticky))
        self.metrics.canary_weight.labels(alias, name).set(weight)
        for outcome in ("promoted", "rolled_back"):
            # Exported at 0 from the start: Prometheus's increase() needs the 0 before the 1 to see the end.
            self.metrics.canary_ended.labels(alias, name, outcome)
        return {"alias": alias, "canary": name, "weight": weight, "shadow": shadow, "sticky": sticky}

    def clear_split(self, alias: str) -> dict[str, object]:
        """End a canary without promoting it (a rollback); a no-op when there is none."""
        removed = self.aliases.clear_split(alias)
        if removed is not None:
            self._end_split(alias, removed, "rolled_back")
        return {"alias": alias, "removed": removed.name if removed else None}

    def _end_split(self, alias: str, split: Split, outcome: str) -> None:
        self.metrics.canary_ended.labels(alias, split.name, outcome).inc()
        with contextlib.suppress(KeyError):  # never set in this process (a restarted gateway)
            self.metrics.canary_weight.remove(alias, split.name)

    async def drain(self, name: str, timeout: float = 60.0) -> int:
        """Wait until no request is in flight on `name`; it must no longer be an alias target."""
        if name in self.aliases.pointed_names():
            raise RoutingError(409, "version_in_use", f"`{name}` is still the target of an alias")
        deadline = time.monotonic() + timeout
        while self.traffic.in_flight.get(name, 0) > 0:
            if time.monotonic() > deadline:
                raise RoutingError(504, "drain_timeout", f"`{name}` still has {self.traffic.in_flight[name]} requests")
            await asyncio.sleep(0.05)
        return 0

    def snapshot(self) -> dict[str, object]:
        return {
            "served_name": self.served_name,
            "aliases": {a: {"name": t.name, "version": t.version, "switched_at": t.switched_at}
                        for a, t in sorted(self.aliases.targets().items())},
            "routing": self.routing,
            "canaries": {a: {"name": c.name, "weight": c.weight, "shadow": c.shadow, "sticky": c.sticky}
                         for a, c in sorted(self.aliases.splits().items())},
            "replicas": [{"url": r.url, "healthy": r.healthy, "loaded": sorted(r.loaded), "outstanding": r.outstanding,
                          "base": list(r.base or ()), "lora_slots": r.slots, "recent_adapters": list(r.sent.recent),
                          "load": None if r.load is None else {
                              "running": r.load.running, "waiting": r.load.waiting,
                              "kv_cache_usage": r.load.kv_cache_usage, "adapters": sorted(r.load.active_adapters),
                              "age_s": round(time.monotonic() - r.load.read_at, 3)},
                          "kind": "lora" if r.serves_base(self.served_name) else "merged"}
                         for r in self.replicas],
            "in_flight": dict(self.traffic.in_flight),
            "last_used": dict(self.traffic.last_used),
        }
