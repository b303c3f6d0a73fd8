"""Step timing and the demo's final report."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table


@dataclass
class StepResult:
    name: str
    seconds: float
    ok: bool
    detail: str = ""


@dataclass
class DemoReport:
    console: Console
    steps: list[StepResult] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)
    title: str = "Local end-to-end demo"

    @contextmanager
    def step(self, name: str) -> Iterator[StepResult]:
        """Time one step; a step that raises is recorded as failed and the error propagates."""
        result = StepResult(name, 0.0, True)
        started = time.monotonic()
        self.console.rule(f"[bold]{name}")
        try:
            yield result
        except BaseException as exc:
            result.ok = False
            result.detail = result.detail or f"{type(exc).__name__}: {exc}"
            raise
        finally:
            result.seconds = time.monotonic() - started
            self.steps.append(result)
            mark = "[green]ok[/green]" if result.ok else "[red]failed[/red]"
            self.console.print(f"{mark} {name} ({result.seconds:.1f} s) {result.detail}")

    def table(self) -> Table:
        table = Table(title=self.title)
        table.add_column("step")
        table.add_column("result")
        table.add_column("seconds", justify="right")
        table.add_column("detail")
        for s in self.steps:
            table.add_row(s.name, "ok" if s.ok else "FAILED", f"{s.seconds:.1f}", s.detail)
        table.add_row("total", "ok" if self.ok else "FAILED", f"{sum(s.seconds for s in self.steps):.1f}", "")
        return table

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"ok": self.ok, "steps": [asdict(s) for s in self.steps], "facts": self.facts},
                                   indent=2, default=str))
