"""What a provisioning step did on one host: the unit of the operator's summary table."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Change:
    """One step: `changed` False means the host already was as wanted (idempotent no-op)."""

    step: str
    changed: bool
    detail: str = ""


@dataclass
class HostResult:
    host: str
    changes: list[Change] = field(default_factory=list)
    error: str | None = None

    @property
    def changed(self) -> bool:
        return any(c.changed for c in self.changes)

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> str:
        if self.error:
            return f"FAILED: {self.error}"
        done = [c.step for c in self.changes if c.changed]
        return "changed: " + ", ".join(done) if done else "no changes"
