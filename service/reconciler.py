"""Drive every vLLM replica (and the gateway's alias table) to the desired adapter state.

Everything is derived from what is observed now (each replica's `/v1/models`, the gateway's alias
table and traffic), never from a journal of our own, so a run killed half-way is finished by the next
run, and a run with nothing to do does nothing. Order matters for zero lost requests:

1. load every wanted version on every replica (downloaded and validated first);
2. warm each version that is about to receive traffic up on every replica (a real generation);
3. switch aliases (only to versions whose load and warm-up succeeded everywhere), then set or end each
   alias's canary split (a candidate version taking a share of the alias's traffic; same rule);
4. drain and unload versions nothing points to, keeping the most recent previous versions loaded
   for a fast rollback while `max_cpu_loras` allows (least recently used evicted first).

Only adapters named `domain-vN` of managed domains are touched; anything else loaded on a replica
(another team's adapter, a test's) is left alone but counted against capacity.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from exaone_lora.canary import CanarySplit
from service.gateway.engine import EngineClient
from service.gateway.names import parse_version_name, version_name
from service.gateway.state import Split

ActionKind = Literal["load", "warmup", "switch", "split", "unsplit", "drain", "unload"]


@dataclass(frozen=True)
class DesiredAlias:
    alias: str
    version: int
    previous: int | None = None  # the registry's previous version: the rollback target worth keeping
    canary: CanarySplit | None = None  # the registry's canary: a candidate taking a share of the traffic

    @property
    def name(self) -> str:
        return version_name(self.alias, self.version)

    @property
    def split(self) -> Split | None:
        """The canary as the gateway holds it (None: every request goes to `name`)."""
        c = self.canary
        if c is None or c.version == self.version:
            return None
        return Split(version_name(self.alias, c.version), c.weight, c.shadow, c.sticky)


def desired_from_mapping(mapping: Mapping[str, int | tuple[int, int | None]]) -> dict[str, DesiredAlias]:
    """{"medical": 2} or {"medical": (2, 1)} (version, previous)."""
    out: dict[str, DesiredAlias] = {}
    for alias, value in mapping.items():
        version, previous = value if isinstance(value, tuple) else (value, None)
        out[alias] = DesiredAlias(alias, int(version), previous)
    return out


def desired_from_registry(registry: Any) -> dict[str, DesiredAlias]:
    """Each domain whose alias has a current version; the last different version in its history is the rollback."""
    out: dict[str, DesiredAlias] = {}
    for domain in registry.domains():
        state = registry.alias(domain)
        if state.current is None:
            continue
        previous = next((v for v in reversed(state.history) if v != state.current), None)
        out[domain] = DesiredAlias(domain, state.current, previous, state.canary)
    return out


class AdapterSource(Protocol):
    def fetch(self, domain: str, version: int) -> Path:
        """A local, validated adapter directory for `domain-vN` (readable by the vLLM replicas)."""
        ...


@dataclass
class LocalSource:
    """Adapters already on disk (tests, single host): name -> directory, validated before use."""

    paths: Mapping[str, Path]
    base_config: Any = None
    max_rank: int | None = None

    def fetch(self, domain: str, version: int) -> Path:
        name = version_name(domain, version)
        if name not in self.paths:
            raise KeyError(f"no local directory for adapter version {name}")
        path = Path(self.paths[name]).resolve()
        if self.base_config is not None and self.max_rank is not None:
            from service.validation import validate_adapter

            validate_adapter(path, base_config=self.base_config, max_rank=self.max_rank)
        return path


@dataclass
class RegistrySource:
    """Versions from the Blob registry, downloaded (sha256-checked, validated) into `cache_dir/<name>`."""

    registry: Any
    cache_dir: Path
    base_config: Any = None
    max_rank: int | None = None

    def fetch(self, domain: str, version: int) -> Path:
        dest = self.cache_dir / version_name(domain, version)
        return Path(self.registry.download(domain, version, dest, base_config=self.base_config,
                                           max_rank=self.max_rank)).resolve()


class AliasSink(Protocol):
    """Where aliases live: the gateway (service.gateway.admin_client.GatewayAdmin) or memory."""

    async def aliases(self) -> dict[str, str]: ...
    async def last_used(self) -> dict[str, float]: ...
    async def refresh(self) -> None: ...
    async def switch(self, alias: str, name: str) -> None: ...
    async def splits(self) -> dict[str, Split]: ...
    async def set_split(self, alias: str, split: Split) -> None: ...
    async def clear_split(self, alias: str) -> None: ...
    async def drain(self, name: str, timeout: float = 60.0) -> None: ...


@dataclass
class MemoryAliases:
    """Alias table without a gateway (a single vLLM behind nothing, tests of planning)."""

    table: dict[str, str] = field(default_factory=dict)
    canaries: dict[str, Split] = field(default_factory=dict)

    async def aliases(self) -> dict[str, str]:
        return dict(self.table)

    async def splits(self) -> dict[str, Split]:
        return dict(self.canaries)

    async def set_split(self, alias: str, split: Split) -> None:
        self.canaries[alias] = split

    async def clear_split(self, alias: str) -> None:
        self.canaries.pop(alias, None)

    async def last_used(self) -> dict[str, float]:
        return {}

    async def refresh(self) -> None:
        return None

    async def switch(self, alias: str, name: str) -> None:
        self.table[alias] = name

    async def drain(self, name: str, timeout: float = 60.0) -> None:
        if name in self.table.values() or name in {c.name for c in self.canaries.values()}:
            raise RuntimeError(f"{name} is still the target of an alias")


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    name: str
    replica: str | None = None
    alias: str | None = None
    split: Split | None = None  # for `split`: the canary to set


@dataclass(frozen=True)
class Observed:
    replicas: dict[str, frozenset[str]]  # replica url -> loaded adapter names
    aliases: dict[str, str]
    last_used: dict[str, float]
    splits: dict[str, Split] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    keep: tuple[str, ...]  # previous versions kept loaded for rollback
    evict: tuple[str, ...]
    warnings: tuple[str, ...]


def plan(desired: Mapping[str, DesiredAlias], observed: Observed, *, max_cpu_loras: int,
         managed_domains: Iterable[str] = ()) -> Plan:
    """The actions that take `observed` to `desired` (pure: the unit tests and `--dry-run` use it)."""
    managed = set(managed_domains) | set(desired) | set(observed.aliases)

    def is_managed(name: str) -> bool:
        parsed = parse_version_name(name)
        return parsed is not None and parsed[0] in managed

    required = {d.name for d in desired.values()} | {d.split.name for d in desired.values() if d.split is not None}
    loaded_anywhere = set().union(*observed.replicas.values()) if observed.replicas else set()
    foreign = max((len([n for n in names if not is_managed(n)]) for names in observed.replicas.values()), default=0)
    warnings: list[str] = []
    budget = max_cpu_loras - foreign - len(required)
    if budget < 0:
        warnings.append(f"{len(required)} wanted versions + {foreign} unmanaged adapters exceed max_cpu_loras "
                        f"{max_cpu_loras}: vLLM will reload adapters from disk (slower first tokens)")

    # Rollback targets first (the version an alias points to now, else the registry's previous one),
    # then the most recently used, then the newest.
    rollback: set[str] = set()
    for d in desired.values():
        current = observed.aliases.get(d.alias)
        if current and current != d.name:
            rollback.add(current)
        elif d.previous is not None:
            rollback.add(version_name(d.alias, d.previous))
    candidates = [n for n in loaded_anywhere if is_managed(n) and n not in required]

    def rank(name: str) -> tuple[int, float, int]:
        parsed = parse_version_name(name)
        return (name in rollback, observed.last_used.get(name, 0.0), parsed[1] if parsed else 0)

    candidates.sort(key=rank, reverse=True)
    keep = candidates[: max(budget, 0)]
    evict = [n for n in candidates if n not in keep]

    actions: list[Action] = []
    wanted = sorted(required | set(keep))
    newly_loaded: set[str] = set()
    for name in wanted:
        for url, names in observed.replicas.items():
            if name not in names:
                actions.append(Action("load", name, replica=url))
                newly_loaded.add(name)
    switches = [(d.alias, d.name) for d in sorted(desired.values(), key=lambda d: d.alias)
                if observed.aliases.get(d.alias) != d.name]
    # A canary is set (or changed) where it differs from the gateway's, and ended where the registry has none; a
    # switch to the candidate (a promotion) ends it in the gateway by itself.
    split_changes: list[Action] = []
    for d in sorted(desired.values(), key=lambda d: d.alias):
        have = observed.splits.get(d.alias)
        if d.split is not None and have != d.split:
            split_changes.append(Action("split", d.split.name, alias=d.alias, split=d.split))
        elif d.split is None and have is not None and have.name != d.name:
            split_changes.append(Action("unsplit", have.name, alias=d.alias))
    new_candidates = {a.name for a in split_changes
                      if a.kind == "split" and getattr(observed.splits.get(a.alias or ""), "name", None) != a.name}
    warm = sorted({name for _, name in switches} | (newly_loaded & required) | new_candidates)
    for name in warm:
        actions += [Action("warmup", name, replica=url) for url in observed.replicas]
    actions += [Action("switch", name, alias=alias) for alias, name in switches]
    actions += split_changes
    for name in sorted(evict):
        actions.append(Action("drain", name))
        actions += [Action("unload", name, replica=url) for url, names in observed.replicas.items() if name in names]
    return Plan(tuple(actions), tuple(keep), tuple(sorted(evict)), tuple(warnings))


@dataclass
class Reconciler:
    engines: list[EngineClient]
    aliases: AliasSink
    source: AdapterSource | None
    max_cpu_loras: int
    managed_domains: frozenset[str] = frozenset()
    drain_timeout: float = 60.0

    async def observe(self) -> Observed:
        models = await asyncio.gather(*(e.models() for e in self.engines))
        return Observed(
            replicas={e.url: frozenset(m.adapters) for e, m in zip(self.engines, models, strict=True)},
            aliases=await self.aliases.aliases(),
            last_used=await self.aliases.last_used(),
            splits=await self.aliases.splits(),
        )

    async def plan(self, desired: Mapping[str, DesiredAlias]) -> Plan:
        return plan(desired, await self.observe(), max_cpu_loras=self.max_cpu_loras, managed_domains=self.managed_domains)

    async def reconcile(self, desired: Mapping[str, DesiredAlias], *, dry_run: bool = False) -> dict[str, Any]:
        start = time.perf_counter()
        the_plan = await self.plan(desired)
        report: dict[str, Any] = {"planned": [asdict(a) for a in the_plan.actions], "keep": list(the_plan.keep),
                                  "evict": list(the_plan.evict), "warnings": list(the_plan.warnings), "done": [],
                                  "failed": [], "dry_run": dry_run}
        if not dry_run:
            await self._apply(the_plan, report)
        report["ok"] = not report["failed"]
        report["seconds"] = round(time.perf_counter() - start, 3)
        return report

    async def _apply(self, the_plan: Plan, report: dict[str, Any]) -> None:
        engines = {e.url: e for e in self.engines}
        broken: set[str] = set()  # versions whose load or warm-up failed somewhere: never switched to
        paths: dict[str, str] = {}

        async def run(action: Action) -> None:
            t0 = time.perf_counter()
            try:
                detail = await self._do(action, engines, paths)
            except Exception as exc:  # recorded per action; the run goes on with what is safe
                broken.add(action.name)
                report["failed"].append({**asdict(action), "error": f"{type(exc).__name__}: {exc}"})
                return
            report["done"].append({**asdict(action), "seconds": round(time.perf_counter() - t0, 4), **detail})

        by_kind = {k: [a for a in the_plan.actions if a.kind == k]
                   for k in ("load", "warmup", "switch", "split", "unsplit", "drain", "unload")}
        for name in sorted({a.name for a in by_kind["load"]}):
            try:
                parsed = parse_version_name(name)
                assert parsed is not None and self.source is not None, "no adapter source to load from"
                paths[name] = str(self.source.fetch(*parsed))
            except Exception as exc:
                broken.add(name)
                report["failed"].append({"kind": "fetch", "name": name, "error": f"{type(exc).__name__}: {exc}"})
        # Replicas in parallel, one action per replica at a time.
        await asyncio.gather(*(run(a) for a in by_kind["load"] if a.name not in broken))
        await self.aliases.refresh()
        await asyncio.gather(*(run(a) for a in by_kind["warmup"] if a.name not in broken))
        for action in by_kind["switch"]:
            if action.name in broken:
                report["failed"].append({**asdict(action), "error": "skipped: load or warm-up failed"})
                continue
            await run(action)
        for action in by_kind["split"]:
            if action.name in broken:
                report["failed"].append({**asdict(action), "error": "skipped: load or warm-up failed"})
                continue
            await run(action)
        for action in by_kind["unsplit"]:
            await run(action)
        for action in by_kind["drain"]:
            await run(action)  # a failed drain marks the version broken: it is then not unloaded
        await asyncio.gather(*(run(a) for a in by_kind["unload"] if a.name not in broken))
        await self.aliases.refresh()

    async def _do(self, action: Action, engines: dict[str, EngineClient], paths: dict[str, str]) -> dict[str, Any]:
        if action.kind == "load":
            assert action.replica is not None
            return {"changed": await engines[action.replica].load(action.name, paths[action.name])}
        if action.kind == "warmup":
            assert action.replica is not None
            return {"latency_s": round(await engines[action.replica].warmup(action.name), 4)}
        if action.kind == "switch":
            assert action.alias is not None
            await self.aliases.switch(action.alias, action.name)
            return {}
        if action.kind == "split":
            assert action.alias is not None and action.split is not None
            await self.aliases.set_split(action.alias, action.split)
            return {}
        if action.kind == "unsplit":
            assert action.alias is not None
            await self.aliases.clear_split(action.alias)
            return {}
        if action.kind == "drain":
            await self.aliases.drain(action.name, self.drain_timeout)
            return {}
        assert action.replica is not None
        return {"changed": await engines[action.replica].unload(action.name)}
