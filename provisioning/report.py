"""Operator output: a Rich progress line per host while tasks run in parallel, then a summary table."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fabric import Connection
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from provisioning.results import Change, HostResult

Action = Callable[[Connection, Callable[[str], None]], list[Change]]


def run_on_hosts(connections: list[Connection], action: Action, title: str, console: Console | None = None,
                 max_workers: int = 8) -> list[HostResult]:
    """Run `action(connection, report)` on every host at once; one host failing never stops the others."""
    console = console or Console()
    results: dict[str, HostResult] = {}
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[host]}[/]"), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        tasks = {c.host: progress.add_task(title, host=c.host, total=1) for c in connections}

        def one(c: Connection) -> HostResult:
            task = tasks[c.host]
            result = HostResult(c.host)

            def report(message: str) -> None:
                progress.update(task, description=message)

            try:
                result.changes = action(c, report)
                progress.update(task, description=result.summary(), completed=1)
            except Exception as err:  # reported per host; the table shows which hosts failed and why
                result.error = f"{type(err).__name__}: {err}"
                progress.update(task, description=f"[red]failed[/]: {type(err).__name__}", completed=1)
            return result

        if len(connections) == 1:
            # In the main thread, so that Ctrl-C/SIGTERM interrupts the step and its cleanup runs.
            results[connections[0].host] = one(connections[0])
        else:
            with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(connections)))) as pool:
                for result in pool.map(one, connections):
                    results[result.host] = result
    ordered = [results[c.host] for c in connections]
    console.print(summary_table(ordered, title))
    return ordered


def summary_table(results: list[HostResult], title: str) -> Table:
    table = Table(title=f"{title}: what changed")
    table.add_column("host")
    table.add_column("step")
    table.add_column("changed")
    table.add_column("detail", overflow="fold")
    for result in results:
        if result.error:
            table.add_row(result.host, "-", "[red]FAILED[/]", result.error)
            continue
        if not result.changes:
            table.add_row(result.host, "-", "no", "nothing to do")
        for change in result.changes:
            table.add_row(result.host, change.step, "[green]yes[/]" if change.changed else "no", change.detail)
    return table
