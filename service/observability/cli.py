"""`exaone-lora obs ...`: render a stack's Prometheus config, alert rules and Grafana dashboard; show targets."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from exaone_lora.spec import DeploymentSpec, SpecError, load_spec
from service.observability.prometheus import scrape_targets
from service.observability.render import ALERTMANAGER_FILE, ALERTS_FILE, PROMETHEUS_FILE, render_stack, write_shipped

app = typer.Typer(help="Prometheus scrape config, alert rules and Grafana dashboard, rendered from a stack.",
                  no_args_is_help=True, rich_markup_mode="rich")
console = Console()
err_console = Console(stderr=True)

Stack = Annotated[str, typer.Argument(help="stack name: dev, poc, pilot or prod")]
Root = Annotated[Path, typer.Option("--root", help="directory holding Pulumi.<stack>.yaml")]


def _spec(stack: str, root: Path) -> DeploymentSpec:
    try:
        return load_spec(stack, root)
    except SpecError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from None


@app.command()
def render(
    stack: Stack,
    out: Annotated[Path, typer.Option("--out", "-o", help="directory to write into (created)")],
    root: Root = Path("."),
    check: Annotated[bool, typer.Option("--check/--no-check", help="run promtool (and amtool if installed)")] = True,
) -> None:
    """Write prometheus.yml, alerts.yml, alertmanager.yml, the Grafana dashboard and its provisioning files for STACK."""
    spec = _spec(stack, root)
    try:
        written = render_stack(spec, out)
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from None
    for path in written:
        console.print(f"wrote {path}")
    if check:
        promtool = shutil.which("promtool")
        if promtool is None:
            err_console.print("[red]error:[/red] promtool not found (apt-get install prometheus), or pass --no-check")
            raise typer.Exit(code=2)
        checks = [["check", "rules", str(out / ALERTS_FILE)]]
        if (out / PROMETHEUS_FILE).exists():
            checks.append(["check", "config", str(out / PROMETHEUS_FILE)])
        for args in checks:
            result = subprocess.run([promtool, *args], capture_output=True, text=True, check=False)
            if result.returncode != 0:
                err_console.print(f"[red]promtool {' '.join(args[:2])} failed:[/red]\n{result.stdout}{result.stderr}")
                raise typer.Exit(code=1)
        console.print("[green]promtool: config and rules are valid[/green]")
        amtool = shutil.which("amtool")
        if (out / ALERTMANAGER_FILE).exists():
            if amtool is None:
                console.print("[yellow]amtool not found (apt-get install prometheus-alertmanager): "
                              "alertmanager.yml not checked[/yellow]")
                return
            result = subprocess.run([amtool, "check-config", str(out / ALERTMANAGER_FILE)], capture_output=True,
                                    text=True, check=False)
            if result.returncode != 0:
                err_console.print(f"[red]amtool check-config failed:[/red]\n{result.stdout}{result.stderr}")
                raise typer.Exit(code=1)
            console.print("[green]amtool: alertmanager.yml is valid[/green]")


@app.command()
def targets(stack: Stack, root: Root = Path(".")) -> None:
    """List what the stack's Prometheus scrapes on each serving host."""
    spec = _spec(stack, root)
    if spec.target == "aks":
        console.print("AKS: pods are found through the PodMonitor / prometheus.io annotations (see `render`).")
        return
    table = Table(title=f"Scrape targets per host, stack {stack} (every {spec.monitoring.scrape_interval_seconds}s)")
    for column in ("job", "address", "labels"):
        table.add_column(column)
    for target in scrape_targets(spec):
        table.add_row(target.job, target.address, ", ".join(f"{k}={v}" for k, v in target.labels.items()))
    console.print(table)


@app.command()
def ship() -> None:
    """Regenerate the alert rules and Grafana files shipped in service/observability/ (after changing the code)."""
    for path in write_shipped():
        console.print(f"wrote {path}")
