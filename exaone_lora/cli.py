"""`exaone-lora`: the operator's command line (plan a stack, make test checkpoints; the parts' own commands)."""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from exaone_lora.capacity import plan_capacity
from exaone_lora.capacity_table import capacity_table
from exaone_lora.model_shape import EXAONE_3_5_2_4B, EXAONE_TINY, ModelShape
from exaone_lora.spec import STACKS, DeploymentSpec, SpecError, build_spec, load_spec, read_config, stack_file
from exaone_lora.tiers import H100_80GB_HBM3, TIER_DEFAULTS, TIERS

# The measurement's options, as `exaone-lora serve measure` and `serve lifecycle` take them (one wording).
from service.cli import AdaptersDirOpt, EnginePythonOpt, ModelDirOpt, StandInOpt

app = typer.Typer(
    help="Serve many EXAONE 3.5 LoRA adapters with vLLM on Azure GPUs, as code.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
console = Console()

# Sub-commands of the other parts; each keeps its heavy imports inside its commands. Each is imported by a plain
# `import` statement (not by name through importlib), so import-linter sees the app layer's imports.
def _adapters() -> typer.Typer:
    from service import registry_cli

    return registry_cli.app


def _serve() -> typer.Typer:
    from service import cli

    return cli.app


def _train() -> typer.Typer:
    from training import cli

    return cli.app


def _infra() -> typer.Typer:
    from infra import cli

    return cli.app


def _obs() -> typer.Typer:
    from service.observability import cli

    return cli.app


SUBCOMMANDS: dict[str, tuple[Callable[[], typer.Typer], str]] = {
    "adapters": (_adapters, "Adapter registry in Azure Blob: publish, list, alias, rollback."),
    "serve": (_serve, "Gateway, lifecycle test, swap benchmark, reconciler."),
    "train": (_train, "ShareGPT data, generator, PEFT SFT, export, quality report."),
    "infra": (_infra, "Azure preview under the mock runtime, quota, costs, stack promotion."),
    "obs": (_obs, "Prometheus config, alert rules and Grafana dashboard."),
}
def _unavailable(message: str):  # type: ignore[no-untyped-def]
    def command() -> None:
        raise typer.Exit(code=_fail(message))

    return command


for _name, (_load, _help) in SUBCOMMANDS.items():
    try:
        app.add_typer(_load(), name=_name, help=_help)
    except ImportError as _exc:  # a part whose extras are not installed: say so instead of hiding the command
        _message = f"unavailable here ({_exc}); install the project with all extras (see README)"
        app.command(name=_name, help=f"{_help} [{_message}]")(_unavailable(_message))


def _fail(message: str) -> int:
    console.print(f"[red]error:[/red] {message}")
    return 2


def shape_for(spec: DeploymentSpec) -> ModelShape:
    return EXAONE_TINY if spec.model.name == EXAONE_TINY.name else EXAONE_3_5_2_4B


def spec_table(spec: DeploymentSpec) -> Table:
    table = Table(title=f"Deployment spec: stack {spec.stack}", show_header=False)
    rows = [
        ("tier / target", f"{spec.tier} / {spec.target}"),
        ("region", spec.region),
        ("VM SKU", f"{spec.vm_sku} ({spec.sku.gpus}x {spec.sku.gpu_model}, {spec.sku.vcpus} vCPU)"),
        ("nodes x GPUs per node", f"{spec.node_count} x {spec.gpus_per_node}"),
        ("model", f"{spec.model.name}@{spec.model.revision[:12]} -> {spec.model.path}"),
        ("vLLM", f"{spec.vllm_version} ({spec.lora_mode} LoRA)"),
        ("gpu_memory_utilization", str(spec.gpu_memory_utilization)),
        ("max loras (GPU / CPU) / max rank", f"{spec.max_loras} / {spec.max_cpu_loras} / {spec.max_lora_rank}"),
        ("max model len / max seqs", f"{spec.max_model_len} / {spec.max_num_seqs}"),
        ("API", f"port {spec.port}, {spec.api.exposure} {' '.join(spec.api.allowed_cidrs)}".strip()),
        ("SSH from", spec.operator_cidr or "-"),
        ("adapters", ", ".join(f"{p.alias}=v{p.version}" for p in spec.adapters) or "(none pinned)"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def tier_table(stack: str, root: Path, context_len: int | None) -> Table:
    values = read_config(stack_file(stack, root))
    table = Table(title=f"Tiers compared (stack {stack}'s model and pins, each tier's defaults)")
    for column in ("tier", "SKU", "GPUs", "util", "max loras", "KV tokens/GPU", "concurrent", "users", "fits"):
        table.add_column(column, justify="right" if column not in ("tier", "SKU", "users", "fits") else "left")
    tier_keys = {"vmSku", "gpusPerNode", "nodeCount", "gpuMemoryUtilization", "maxLoras", "maxCpuLoras", "maxNumSeqs"}
    for tier in TIERS:
        variant = {k: v for k, v in values.items() if k not in tier_keys} | {"tier": tier, "target": "vm"}
        variant.setdefault("operatorCidr", "203.0.113.7/32")
        spec = build_spec(stack, variant, f"{stack} as {tier}")
        plan = plan_capacity(spec, shape_for(spec), context_len=context_len)
        table.add_row(tier, spec.vm_sku, str(spec.total_gpus), str(spec.gpu_memory_utilization), str(spec.max_loras),
                      f"{plan.kv_tokens_per_gpu:,}", f"{plan.concurrent_requests:,}", TIER_DEFAULTS[tier].users,
                      "yes" if not plan.problems else "[red]no[/red]")
    return table


@app.command()
def plan(
    stack: Annotated[str, typer.Option(help=f"stack to plan ({', '.join(STACKS)}): reads Pulumi.<stack>.yaml")] = "poc",
    root: Annotated[Path, typer.Option(help="directory holding the stack files")] = Path("."),
    all_tiers: Annotated[bool, typer.Option("--all", help="also compare every tier for this stack's model")] = False,
    context_len: Annotated[int | None, typer.Option(help="tokens per request for the concurrency estimate "
                                                         "(default: the stack's max model len)")] = None,
    benchmark_gpu: Annotated[bool, typer.Option(help="plan on the benchmark machine's H100 80GB HBM3 instead")] = False,
) -> None:
    """Print the deployment spec and the GPU memory / capacity plan of a stack; exit 1 if it cannot fit."""
    try:
        spec = load_spec(stack, root)
    except SpecError as exc:
        raise typer.Exit(code=_fail(str(exc))) from None
    console.print(spec_table(spec))
    capacity = plan_capacity(spec, shape_for(spec), gpu=H100_80GB_HBM3 if benchmark_gpu else None,
                             context_len=context_len)
    console.print(capacity_table(capacity, f"Capacity plan: {shape_for(spec).name} on {capacity.gpu.name}"))
    if all_tiers:
        console.print(tier_table(stack, root, context_len))
    if capacity.problems:
        for problem in capacity.problems:
            console.print(f"[red]does not fit:[/red] {problem}")
        raise typer.Exit(code=1)
    console.print("[green]fits[/green]")


@app.command("make-checkpoint")
def make_checkpoint_command(
    out: Annotated[Path, typer.Argument(help="directory to write the checkpoint into")],
    size: Annotated[str, typer.Option(help="tiny (CPU tests) or full (the real 2.4B shape)")] = "tiny",
    adapters: Annotated[int, typer.Option(help="how many random LoRA adapters to write next to it")] = 0,
    rank: Annotated[int, typer.Option(help="adapter rank")] = 8,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    device: Annotated[str, typer.Option(help="torch device that draws the weights (cuda is much faster for full)")] = "cpu",
) -> None:
    """Write an EXAONE-shaped checkpoint with random weights (nothing is downloaded) and optional adapters."""
    from exaone_lora.checkpoints import make_adapter, make_checkpoint

    if size not in ("tiny", "full"):
        raise typer.Exit(code=_fail("--size must be tiny or full"))
    with console.status(f"writing the {size} checkpoint to {out}"):
        checkpoint = make_checkpoint(out, size, seed=seed, device=device)
    console.print(f"checkpoint: {checkpoint.path} ({checkpoint.shape.parameter_count():,} parameters)")
    for i in range(adapters):
        path = make_adapter(checkpoint, out.with_name(f"{out.name}-lora-{i}"), rank=rank, seed=seed + 1 + i)
        console.print(f"adapter: {path} (rank {rank})")


def _quiet_libraries() -> None:
    """Library chatter (weight-loading bars, deprecation notices) would bury the run's own progress lines. And
    SIGTERM ends a run like Ctrl-C, so the stand-ins it started (test host, Azurite, servers) are stopped too."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    signal.signal(signal.SIGTERM, signal.default_int_handler)


@app.command()
def demo(
    keep: Annotated[bool, typer.Option("--keep", help="leave Azurite and the test host running afterwards")] = False,
    down: Annotated[bool, typer.Option("--down", help="stop a demo left running by --keep, then exit")] = False,
    root: Annotated[Path, typer.Option(help="directory holding the stack files")] = Path("."),
    stack: Annotated[str, typer.Option(help="the local stack to stand up")] = "dev",
    workdir: Annotated[Path | None, typer.Option(help="where the demo keeps its state (default .cache/demo)")] = None,
    traffic_seconds: Annotated[float, typer.Option(help="upper bound of the client loop during the deploy")] = 40.0,
) -> None:
    """The whole product end to end on this machine (no Azure, no GPU): plan, local stack, train, provision,
    requests, zero-downtime deploy and rollback, metrics, lifecycle. Re-running is safe."""
    from exaone_lora.demo.report import DemoReport
    from exaone_lora.demo.run import DemoOptions, run_demo
    from exaone_lora.demo.run import down as demo_down

    _quiet_libraries()
    options = DemoOptions(root=root.resolve(), stack=stack, keep=keep, traffic_seconds=traffic_seconds)
    if workdir is not None:
        options.workdir = workdir.resolve()
    if down:
        console.print("stopped the kept demo" if demo_down(options, console) else "no kept demo is running")
        return
    report = DemoReport(console)
    try:
        run_demo(options, console, report)
    except Exception as exc:  # every failure ends in the report table and a clear line, not a traceback
        raise typer.Exit(code=_fail(f"{type(exc).__name__}: {exc}\n(logs under {options.workdir / 'logs'})")) from None
    finally:
        console.print(report.table())
        report.write(options.workdir / "report.json")
    if keep:
        console.print(f"kept running; state in {options.state_file}; stop with `exaone-lora demo --down`")


@app.command()
def bench(
    stack: Annotated[str, typer.Option(help="the stack whose pins this run tests (evidence/<stack>/benchmark-*.json)")],
    adapter: Annotated[list[str], typer.Option(
        help="DOMAIN=DIR of an adapter on the server's disk, loaded under a name of this run's own (repeat)")],
    url: Annotated[str | None, typer.Option(
        help="the vLLM replica (not the gateway); default the stack's first replica on 127.0.0.1: run it on the "
             "host, or through `ssh -L PORT:127.0.0.1:PORT`")] = None,
    size: Annotated[str, typer.Option(help="tiny: a few requests per suite (CPU stand-in, minutes); full: the H100 "
                                           "sizes of docs/benchmarks.md")] = "tiny",
    suites: Annotated[str, typer.Option(help="comma-separated: test1,test2,quality,saturation,paired,swap")]
        = "test1,test2,saturation",
    root: Annotated[Path, typer.Option(help="repository root (stack files, evidence/)")] = Path("."),
    adapters_dir: AdaptersDirOpt = None,
    model_dir: ModelDirOpt = None,
    engine_python: EnginePythonOpt = None,
    stand_in: StandInOpt = None,
) -> None:
    """Benchmark a stack's vLLM server and record the result as the stack's `benchmark` promotion evidence.

    First measures what the server serves (/v1/models, the sha256 of each served adapter version's files on this
    host, vLLM's version and build, the model revision, the commit), then runs the suites at --size, loading the
    --adapter directories under names of its own and unloading them after. Exit 0 when every request answered;
    either way the record lands in evidence/<stack>/ and `exaone-lora infra promote --from <stack>` reads it."""
    from benchmarks.stack_bench import bench_stack, parse_suites
    from service.cli import measure_for
    from service.replicas import replica_endpoints

    try:
        spec = load_spec(stack, root)
        chosen = parse_suites(suites)
    except (SpecError, ValueError) as exc:
        raise typer.Exit(code=_fail(str(exc))) from None
    pairs = dict(item.partition("=")[::2] for item in adapter)
    missing = [f"{d}={p}" for d, p in pairs.items() if not d or not Path(p).is_dir()]
    if missing:
        raise typer.Exit(code=_fail(f"--adapter must be DOMAIN=DIR of an adapter directory: {', '.join(missing)}"))
    url = url or replica_endpoints(spec)[0].url
    measured = measure_for(url, spec, None, adapters_dir, model_dir, engine_python, stand_in)
    try:
        run = bench_stack(spec, url, pairs, measured, root, size=size, suites=chosen)
    except (ValueError, RuntimeError) as exc:
        raise typer.Exit(code=_fail(f"benchmark of {url} failed: {exc}")) from None
    console.print(f"evidence: {run.evidence}")
    if not run.passed:
        _fail("requests failed: " + " | ".join(run.errors[:5]))
        raise typer.Exit(1)
    console.print(f"[green]benchmark passed[/green] ({', '.join(chosen)}, size {size})")


@app.command()
def rehearse(
    stack: Annotated[str, typer.Option(help="the Azure stack whose path to rehearse (its own spec, not dev's)")] = "poc",
    root: Annotated[Path, typer.Option(help="directory holding the stack files")] = Path("."),
    workdir: Annotated[Path | None, typer.Option(help="where it keeps its state (default .cache/rehearsal)")] = None,
    traffic_seconds: Annotated[float, typer.Option(help="upper bound of the client loop during the deploy")] = 40.0,
) -> None:
    """The Azure VM path as a user runs it, on this machine: `pulumi config set` + `pulumi up` (mock runtime) ->
    out.json -> `fab ... --stack STACK --outputs out.json` over SSH against a systemd test host -> adapters
    published and pulled by the host with its own identity -> deploy, rollback under load -> requests with the API
    key. GPU and Azure steps print the exact commands they skip. Exit 1 on any failure."""
    from exaone_lora.demo.report import DemoReport
    from exaone_lora.rehearsal.run import RehearsalOptions, run_rehearsal, skipped_table

    _quiet_libraries()
    options = RehearsalOptions(stack=stack, root=root.resolve(), traffic_seconds=traffic_seconds)
    if workdir is not None:
        options.workdir = workdir.resolve()
    try:
        spec = load_spec(stack, options.root)
    except SpecError as exc:
        raise typer.Exit(code=_fail(str(exc))) from None
    if spec.target != "vm":
        raise typer.Exit(code=_fail(f"stack {stack} has target {spec.target}; the rehearsal follows the Azure VM path "
                                    "(the local stack has `exaone-lora demo`)"))
    report = DemoReport(console, title=f"Rehearsal of the Azure VM path: stack {stack}")
    try:
        run_rehearsal(options, console, report)
    except Exception as exc:  # every failure ends in the report table and a clear line, not a traceback
        raise typer.Exit(code=_fail(f"{type(exc).__name__}: {exc}\n(logs under {options.workdir / 'logs'})")) from None
    finally:
        console.print(report.table())
        console.print(skipped_table(options.skipped))
        report.write(options.workdir / "report.json")


if __name__ == "__main__":
    app()
