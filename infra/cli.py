"""`exaone-lora infra ...`: quota preflight, cost table, offline preview with policy verdict, stack promotion."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from exaone_lora.spec import SpecError, load_spec
from infra.costs import (
    HOURS_PER_MONTH,
    NoListPrice,
    NoThroughput,
    cost_lines,
    hourly_cost,
    region_prices,
    token_cost,
)
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
def costs(stack: str = typer.Option("poc", "--stack", "-s"), root: Path = ROOT,
          mode: str = typer.Option("mixed_adapters", "--mode", help="benchmark traffic: mixed_adapters or base_only")) -> None:
    """List price per hour of the stack, and per 1M output tokens at the tier's concurrency (latest benchmark)."""
    spec = _spec(stack, root)
    if spec.target == "local":
        console.print(f"stack {stack} is target 'local': it runs on this machine, no Azure list price")
        return
    try:
        lines, total = cost_lines(spec), hourly_cost(spec)
        tokens = token_cost(spec, root, mode=mode)
    except (NoListPrice, NoThroughput, ValueError) as exc:
        console.print(f"[red]{exc}[/red]", markup=True, highlight=False)
        raise typer.Exit(2) from None
    prices = region_prices(spec)
    table = Table(title=f"List price of stack {stack} ({spec.tier}, {spec.region}) - prices as of {prices.as_of}")
    for col in ("item", "qty", "USD/h each", "USD/h"):
        table.add_column(col, justify="right" if col != "item" else "left")
    for line in lines:
        table.add_row(line.item, str(line.quantity), f"{line.unit_usd_per_hour:.3f}", f"{line.usd_per_hour:.3f}")
    table.add_row("[bold]total[/bold]", "", "", f"[bold]{total:.2f}[/bold]")
    console.print(table)
    t = tokens.throughput
    pins = {True: "recorded with the stack's current pins", False: "recorded with OTHER pins than the stack's",
            None: "not stack evidence"}[t.pins_match]
    console.print(f"prices: {prices.source}; about {total * HOURS_PER_MONTH:,.0f} USD per month if never stopped",
                  highlight=False)
    console.print(f"throughput: {t.tokens_per_second:,.0f} output tokens/s per replica ({t.mode}, concurrency "
                  f"{t.concurrency}; tier maxNumSeqs {spec.max_num_seqs}) x {tokens.replicas} replica(s) = "
                  f"{tokens.stack_tokens_per_second:,.0f} tokens/s", highlight=False)
    console.print(f"benchmark used: {t.source} [{t.origin}; {t.gpu}; {t.recorded_at}; {pins}]", markup=False,
                  highlight=False)
    console.print(f"[bold]cost per 1M output tokens: {tokens.usd_per_million_output_tokens:.4f} USD[/bold] "
                  f"(every replica busy at that concurrency)", highlight=False)


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
            dry_run: bool = typer.Option(False, "--dry-run", help="show the diff, write nothing"),
            accept_stand_in: bool = typer.Option(
                False, "--accept-stand-in",
                help="accept evidence from a stand-in server (CPU vLLM, a checkpoint without the model marker) for the "
                     "vLLM and model pins; they are listed as unproven"),
            root: Path = ROOT) -> None:
    """Copy the tested pins (vLLM, model revision, adapter versions + sha256, server tuning) of --from into --to.

    Needs passing `lifecycle` (`exaone-lora serve lifecycle --evidence-stack`) and `benchmark` (`exaone-lora bench`)
    evidence for exactly the pins of --from, whose measurement of the server matches every pin."""
    from infra.promotion import PromotionError
    from infra.promotion import promote as do_promote

    try:
        result = do_promote(source, target, root, dry_run=dry_run, accept_stand_in=accept_stand_in)
    except PromotionError as exc:
        console.print(f"[red]{exc}[/red]")
        console.print(f"Pulumi.{target}.yaml was not changed.")
        raise typer.Exit(1) from None
    for kind, path in sorted(result.evidence.items()):
        console.print(f"evidence {kind}: {path}")
    for line in result.unproven:
        console.print(f"[yellow]unproven (stand-in accepted): {line}[/yellow]", soft_wrap=True)
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
