"""`exaone-lora infra ...`: quota preflight, cost table, offline preview with policy verdict, stack promotion."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from exaone_lora.spec import SpecError, load_spec
from infra.costs import PRICES_AS_OF, PRICES_SOURCE, cost_lines, hourly_cost
from infra.quota import check_command, quota_needs, request_command

app = typer.Typer(help="Azure infrastructure: quota, costs, offline preview + policy, stack promotion.",
                  no_args_is_help=True)
console = Console(width=160)
ROOT = typer.Option(Path("."), "--root", help="directory with the Pulumi.<stack>.yaml files")


def _spec(stack: str, root: Path):  # type: ignore[no-untyped-def]
    try:
        return load_spec(stack, root)
    except SpecError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@app.command()
def quota(stack: str = typer.Option("poc", "--stack", "-s"), root: Path = ROOT) -> None:
    """vCPU quota the stack needs, and the `az` commands to check and raise it."""
    spec = _spec(stack, root)
    needs = quota_needs(spec)
    if not needs:
        console.print(f"stack {stack} is target '{spec.target}': no Azure quota needed")
        return
    table = Table(title=f"Quota for stack {stack} ({spec.tier}, {spec.region})")
    for col in ("vCPU family", "vCPUs needed", "why"):
        table.add_column(col)
    for need in needs:
        table.add_row(need.family, str(need.vcpus), need.reason)
    console.print(table)
    for need in needs:
        console.print(f"\n[bold]check[/bold] (limit - used must be >= {need.vcpus}):\n  {check_command(spec, need.family)}")
        console.print(f"[bold]request[/bold] (az extension add --name quota; value is the new total limit):\n"
                      f"  {request_command(spec, need)}")


@app.command()
def costs(stack: str = typer.Option("poc", "--stack", "-s"), root: Path = ROOT) -> None:
    """Estimated hourly list price of the stack while it runs."""
    spec = _spec(stack, root)
    table = Table(title=f"Estimated cost of stack {stack} ({spec.tier}) - list prices as of {PRICES_AS_OF}")
    for col in ("item", "qty", "USD/h each", "USD/h"):
        table.add_column(col, justify="right" if col != "item" else "left")
    for line in cost_lines(spec):
        table.add_row(line.item, str(line.quantity), f"{line.unit_usd_per_hour:.3f}", f"{line.usd_per_hour:.3f}")
    table.add_row("[bold]total[/bold]", "", "", f"[bold]{hourly_cost(spec):.2f}[/bold]")
    console.print(table)
    console.print(f"source: {PRICES_SOURCE}; about {hourly_cost(spec) * 730:,.0f} USD per month if never stopped")


@app.command()
def preview(stack: str = typer.Option(..., "--stack", "-s"), root: Path = ROOT) -> None:
    """What `pulumi up -s STACK` would create, computed offline (Pulumi mock runtime), plus the policy verdict."""
    from infra.preview import policy_verdict, run_program, run_registry
    from infra.preview import rows as to_rows
    from infra.registry import is_registry_stack

    spec = None
    try:
        if is_registry_stack(stack, root):
            run, title = run_registry(stack, root), f"Resources of stack {stack} (the adapter registry)"
        else:
            spec = _spec(stack, root)
            run, title = run_program(spec, root=root), f"Resources of stack {stack} ({spec.tier}, target {spec.target})"
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    table_rows = to_rows(run)
    table = Table(title=title)
    for col in ("type", "name", "key settings"):
        table.add_column(col)
    for row in table_rows:
        table.add_row(row.type.removeprefix("azure-native:"), row.name, ", ".join(f"{k}={v}" for k, v in row.settings.items()))
    console.print(table)
    if not table_rows:
        console.print("(no Azure resources: this stack runs locally)")
    verdict = policy_verdict(table_rows, spec)
    console.print(f"[{'green' if verdict.passed else 'red'}]{verdict.summary()}[/]")
    if spec is not None and (blockers := spec.deploy_blockers()):
        # A preview warns where `pulumi up` refuses (ops:apiKey is checked there too; it is not readable offline).
        console.print(f"[yellow]`pulumi up -s {stack}` will refuse until these are set:[/yellow]")
        for line in blockers:
            console.print(f"  - {line}", soft_wrap=True)
    if not verdict.passed:
        raise typer.Exit(1)


@app.command()
def promote(source: str = typer.Option(..., "--from"), target: str = typer.Option(..., "--to"),
            dry_run: bool = typer.Option(False, "--dry-run", help="show the diff, write nothing"), root: Path = ROOT) -> None:
    """Copy the tested pins (vLLM, model revision, adapter versions + sha256, server tuning) of --from into --to."""
    from infra.promotion import PromotionError
    from infra.promotion import promote as do_promote

    try:
        result = do_promote(source, target, root, dry_run=dry_run)
    except PromotionError as exc:
        console.print(f"[red]{exc}[/red]")
        console.print(f"Pulumi.{target}.yaml was not changed.")
        raise typer.Exit(1) from None
    for kind, path in sorted(result.evidence.items()):
        console.print(f"evidence {kind}: {path}")
    if not result.changed:
        console.print(f"Pulumi.{target}.yaml already has the pins of {source}: nothing to do")
        return
    console.print(result.diff, markup=False, highlight=False)
    if result.written:
        console.print(f"[green]wrote {result.target_path}[/green]; run `pulumi preview -s {target}` next")
    else:
        console.print("[yellow]dry run: nothing written[/yellow]")


if __name__ == "__main__":
    app()
