"""The rollout controller: move one alias from its stable version to a candidate in weighted steps, judging each
step on the gateways' own per-version metrics, and promote or roll back on its own.

Every change goes through the registry's alias blob (the desired state: `AliasState.canary`), then `Hosts.apply`
runs the hosts' reconcilers, which load the candidate and push the split to every gateway, exactly as a deploy
does. So a restarted gateway or a second replica agree, and an interrupted rollout (Ctrl-C, SIGTERM, a crash) is
finished by ending the canary: the alias never leaves its stable version until the single promotion write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from exaone_lora.canary import CanarySplit, StickyKey
from exaone_lora.naming import version_name
from service.registry import AdapterRegistry
from service.rollout import record as records
from service.rollout.analysis import Thresholds, judge, parse_metrics, window
from service.rollout.record import RolloutRecord, WindowRecord


class RolloutError(RuntimeError):
    """A rollout that cannot start or go on (no stable version, another canary in progress, hosts refused)."""


class Hosts(Protocol):
    async def apply(self) -> None:
        """Drive every host to the registry's state (the reconciler); raise when a host could not get there."""
        ...

    async def metrics(self) -> list[str]:
        """Every gateway's Prometheus text."""
        ...


class RolloutSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    canary: int = Field(default=10, ge=1, le=99, description="the candidate's first share, percent")
    step: int = Field(default=25, ge=1, le=100, description="added to the share after each window that holds")
    interval_s: float = Field(default=60.0, gt=0, description="length of one analysis window")
    shadow: int = Field(default=0, ge=0, le=100, description="percent of the stable side's requests mirrored")
    sticky: StickyKey | None = None
    max_waits: int = Field(default=5, ge=1, description="windows in a row with too little candidate traffic before "
                           "the rollout gives up (rolled back)")
    thresholds: Thresholds = Thresholds()


@dataclass
class RolloutController:
    registry: AdapterRegistry
    domain: str
    version: int
    settings: RolloutSettings
    hosts: Hosts
    say: Callable[[str], None] = print
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    record: RolloutRecord | None = field(default=None, init=False)

    def _save(self) -> None:
        assert self.record is not None
        records.save(self.registry, self.record)

    def _start(self) -> tuple[int, int] | None:
        """(stable version, first weight), or None when the candidate is already current (nothing to do)."""
        state = self.registry.alias(self.domain)
        if state.current == self.version and state.canary is None:
            return None
        if state.current is None:
            raise RolloutError(f"alias {self.domain!r} has no current version: deploy one first (fab deploy-adapters)")
        if state.canary is not None and state.canary.version != self.version:
            raise RolloutError(f"a canary of {version_name(self.domain, state.canary.version)} is in progress on "
                               f"{self.domain!r}; let it finish (re-run its rollout) or end it with `exaone-lora adapters "
                               f"alias {self.domain} {state.current}`")
        previous = records.load(self.registry, self.domain)
        resumed = state.canary is not None and state.canary.weight > 0
        if (resumed and previous is not None and previous.state == "running" and previous.candidate == self.version
                and previous.stable == state.current):
            self.record = previous  # an interrupted run of the same rollout: go on from its weight
        else:
            self.record = RolloutRecord(domain=self.domain, stable=state.current, candidate=self.version,
                                        settings=self.settings.model_dump(mode="json"))
        first = state.canary.weight if resumed and state.canary is not None else self.settings.canary
        return state.current, first

    async def run(self) -> RolloutRecord:
        start = self._start()
        if start is None:
            self.say(f"{version_name(self.domain, self.version)} is already the current version of {self.domain}")
            done = records.load(self.registry, self.domain)
            return done or RolloutRecord(domain=self.domain, stable=self.version, candidate=self.version, settings={},
                                         state="promoted", reason="already current", ended_at=time.time(), weight=100)
        stable, weight = start
        try:
            return await self._steps(stable, weight)
        except BaseException as exc:  # Ctrl-C, SIGTERM (a cancelled task), a host that failed: back to stable
            await asyncio.shield(self._end("aborted" if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt)
                                           else "rolled_back", f"interrupted: {type(exc).__name__}: {exc}"))
            raise

    async def _steps(self, stable: int, weight: int) -> RolloutRecord:
        assert self.record is not None
        s = self.settings
        candidate, stable_name = version_name(self.domain, self.version), version_name(self.domain, stable)
        while True:
            self.registry.set_canary(self.domain, CanarySplit(version=self.version, weight=weight, shadow=s.shadow,
                                                              sticky=s.sticky), expected_current=stable)
            await self.hosts.apply()
            self.record.weight = weight
            self._save()
            self.say(f"{self.domain}: {candidate} at {weight} % ({stable_name} {100 - weight} %), "
                     f"judging over {s.interval_s:g} s")
            waits = 0
            while True:
                before = parse_metrics(await self.hosts.metrics())
                await self.sleep(s.interval_s)
                after = parse_metrics(await self.hosts.metrics())
                j = judge(window(before, after, self.domain, stable_name), window(before, after, self.domain, candidate),
                          s.thresholds)
                self.record.windows.append(WindowRecord(weight=weight, at=time.time(), verdict=j.verdict,
                                                        reason=j.reason, measurements=j.measurements))
                self._save()
                self.say(f"  window at {weight} %: {j.verdict}: {j.reason}")
                if j.verdict != "wait":
                    break
                waits += 1
                if waits >= s.max_waits:
                    return await self._end("rolled_back", f"not enough candidate traffic in {waits} windows "
                                                          f"at {weight} % ({j.reason})")
            if j.verdict == "fail":
                return await self._end("rolled_back", f"at {weight} %: {j.reason}")
            if weight + s.step >= 100:
                return await self._promote()
            weight += s.step

    async def _promote(self) -> RolloutRecord:
        assert self.record is not None
        self.registry.promote_canary(self.domain, self.version)  # one write: the alias moves, the canary ends
        await self.hosts.apply()
        self.record.state, self.record.weight, self.record.ended_at = "promoted", 100, time.time()
        self.record.reason = f"every window held; {version_name(self.domain, self.version)} is the alias's version"
        self._save()
        self.say(f"{self.domain}: promoted {version_name(self.domain, self.version)}")
        return self.record

    async def _end(self, state: records.RolloutState, reason: str) -> RolloutRecord:
        """End the canary (the alias stays on its stable version) and record why."""
        assert self.record is not None
        current = self.registry.alias(self.domain)
        if current.current == self.version:  # interrupted after the promotion's write: it stands
            state, reason = "promoted", f"promoted; applying it to the hosts was interrupted ({reason})"
        elif current.canary is not None and current.canary.version == self.version:
            self.registry.clear_canary(self.domain)
        try:
            await self.hosts.apply()
        finally:
            self.record.state, self.record.ended_at = state, time.time()
            self.record.weight = 100 if state == "promoted" else 0
            self.record.reason = reason
            self._save()
            self.say(f"{self.domain}: {state.replace('_', ' ')}: {reason}; {self.domain} stays on "
                     f"{version_name(self.domain, self.record.stable)}")
        return self.record
