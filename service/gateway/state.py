"""The gateway's in-memory routing state: the alias table and the replicas with what each has loaded.

Everything here is touched only from the gateway's event loop, so a switch is one dict assignment:
a request resolves its alias exactly once, when it arrives, and keeps that version to the end. That
is what makes a deploy or a rollback lose no request: in-flight requests finish on the old version.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from service.gateway.engine import EngineClient
from service.gateway.scoring import EngineLoad, SlotMemory


@dataclass(frozen=True)
class AliasTarget:
    alias: str
    name: str  # the immutable version name loaded in vLLM, e.g. medical-v3
    version: int
    switched_at: float


@dataclass(frozen=True)
class Split:
    """A canary of one alias as the gateway holds it: `name` (the candidate version) takes `weight` percent, and
    `shadow` percent of the rest is mirrored to it. The model of the numbers is `exaone_lora.canary.CanarySplit`."""

    name: str
    weight: int
    shadow: int = 0
    sticky: str | None = None


@dataclass(frozen=True)
class Route:
    """Where one request goes: `label` is what metrics show as version (`base` for the base model).

    `shadow`: the candidate version this request is also mirrored to (answer discarded), decided on arrival."""

    alias: str
    upstream_model: str
    label: str
    shadow: str | None = None


class AliasTable:
    def __init__(self) -> None:
        self._targets: dict[str, AliasTarget] = {}
        self._splits: dict[str, Split] = {}

    def get(self, alias: str) -> AliasTarget | None:
        return self._targets.get(alias)

    def split(self, alias: str) -> Split | None:
        return self._splits.get(alias)

    def switch(self, alias: str, name: str, version: int) -> AliasTarget | None:
        previous = self._targets.get(alias)
        self._targets[alias] = AliasTarget(alias, name, version, time.time())
        split = self._splits.get(alias)
        if split is not None and split.name == name:
            del self._splits[alias]  # the candidate became the alias's version: a promotion ends the canary
        return previous

    def set_split(self, alias: str, split: Split) -> None:
        self._splits[alias] = split

    def clear_split(self, alias: str) -> Split | None:
        return self._splits.pop(alias, None)

    def remove(self, alias: str) -> AliasTarget | None:
        self._splits.pop(alias, None)
        return self._targets.pop(alias, None)

    def targets(self) -> dict[str, AliasTarget]:
        return dict(self._targets)

    def splits(self) -> dict[str, Split]:
        return dict(self._splits)

    def pointed_names(self) -> set[str]:
        """Versions clients can reach: alias targets and canary candidates (neither may be drained or unloaded)."""
        return {t.name for t in self._targets.values()} | {s.name for s in self._splits.values()}


@dataclass
class Replica:
    """One vLLM upstream, described only by what its /v1/models says it serves.

    A multi-LoRA replica lists the base model's served name and its loaded adapters. A merged replica
    (`service.merge`) lists one immutable version name as its *base* model and no adapters: it serves
    that version with the adapter folded into the weights, at base-model speed.
    """

    engine: EngineClient
    loaded: set[str] = field(default_factory=set)
    outstanding: int = 0
    healthy: bool = True
    base: tuple[str, ...] | None = None  # None until the first /v1/models answer
    # The last scrape of its vLLM /metrics (the `scored` policy ignores it once older than its time to live),
    # and its LoRA slot count, which a scrape tells once and which does not change while it runs.
    load: EngineLoad | None = None
    slots: int | None = None
    sent: SlotMemory = field(default_factory=SlotMemory)  # the adapters the gateway sent here, most recent last

    @property
    def url(self) -> str:
        return self.engine.url

    def serves_base(self, served_name: str) -> bool:
        # Before the first refresh a replica is assumed to be a multi-LoRA one (the common case).
        return self.base is None or served_name in self.base

    def merged_for(self, name: str) -> bool:
        return self.base is not None and name in self.base


@dataclass
class Traffic:
    """In-flight counts and last use per upstream model: drains and LRU eviction read these."""

    in_flight: Counter[str] = field(default_factory=Counter)
    last_used: dict[str, float] = field(default_factory=dict)

    def begin(self, name: str) -> None:
        self.in_flight[name] += 1
        self.last_used[name] = time.time()

    def end(self, name: str) -> None:
        self.in_flight[name] -= 1
        if self.in_flight[name] <= 0:
            del self.in_flight[name]
