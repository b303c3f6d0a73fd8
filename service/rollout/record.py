"""The record of one rollout (steps, measurements, decision and why), kept beside the alias in the registry
(`{domain}/rollout.json`) so `exaone-lora adapters rollout-status DOMAIN` can show it from any machine."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.registry import AdapterRegistry

RolloutState = Literal["running", "promoted", "rolled_back", "aborted"]


class WindowRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: int
    at: float
    verdict: Literal["pass", "fail", "wait"]
    reason: str
    measurements: dict[str, float | None]


class RolloutRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    domain: str
    stable: int
    candidate: int
    settings: dict[str, object]
    started_at: float = Field(default_factory=time.time)
    ended_at: float | None = None
    state: RolloutState = "running"
    reason: str = ""
    weight: int = 0  # the candidate's share now (at the end: 0 unless promoted)
    windows: list[WindowRecord] = Field(default_factory=list)

    def to_bytes(self) -> bytes:
        return (self.model_dump_json(indent=2) + "\n").encode()


def save(registry: AdapterRegistry, record: RolloutRecord) -> None:
    registry.put_rollout_record(record.domain, record.to_bytes())


def load(registry: AdapterRegistry, domain: str) -> RolloutRecord | None:
    raw = registry.rollout_record(domain)
    return RolloutRecord.model_validate_json(raw) if raw is not None else None
