"""`exaone-lora train ...`: generate data, validate it, train LoRA adapters, export/publish them, check quality."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from training import DOMAINS

app = typer.Typer(help="Training pipeline: ShareGPT data, PEFT LoRA SFT for EXAONE, export and publish adapters.",
                  no_args_is_help=True)
console = Console()
err = Console(stderr=True)

ExistingFile = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)]
ExistingDir = Annotated[Path, typer.Argument(exists=True, file_okay=False)]


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


@app.command()
def generate(
    out_dir: Annotated[Path, typer.Argument(help="Writes {domain}.jsonl here; re-running continues where it stopped.")],
    model: Annotated[str, typer.Option(help="Model (or Azure deployment) name.")],
    base_url: Annotated[str | None, typer.Option(help="Any OpenAI-compatible URL, e.g. http://127.0.0.1:8080/v1.")] = None,
    azure_endpoint: Annotated[str | None, typer.Option(help="Azure OpenAI endpoint (key from AZURE_OPENAI_API_KEY, "
                                                       "else Entra ID).")] = None,
    api_version: Annotated[str, typer.Option(help="Azure OpenAI API version.")] = "2024-10-21",
    entra_id: Annotated[bool, typer.Option("--entra-id", help="Use an Entra ID token even if a key is set.")] = False,
    domain: Annotated[list[str] | None, typer.Option("--domain", "-d", help="Domains (repeat); default: all four.")] = None,
    samples: Annotated[int, typer.Option(min=1, help="Samples per domain.")] = 80,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at once.")] = 8,
    max_retries: Annotated[int, typer.Option(min=0, help="Retries per request on 429/5xx/connection errors.")] = 6,
    max_tokens: Annotated[int, typer.Option(min=16)] = 1024,
) -> None:
    """Generate N ShareGPT samples per domain from an OpenAI-compatible endpoint (API keys come from the environment)."""
    from training.data import DataError
    from training.generator import Endpoint, GenerationSettings
    from training.generator import generate as run_generation

    endpoint = Endpoint(model=model, base_url=base_url, azure_endpoint=azure_endpoint, api_version=api_version,
                        use_entra_id=entra_id)
    settings = GenerationSettings(samples_per_domain=samples, concurrency=concurrency, max_retries=max_retries,
                                  max_tokens=max_tokens)
    try:
        reports = run_generation(endpoint, out_dir, domain or list(DOMAINS), settings)
    except (ValueError, DataError) as exc:
        raise _fail(str(exc)) from None
    table = Table(title="generated samples")
    for column in ("domain", "file", "had", "new", "total", "duplicates", "unusable", "retries", "failed"):
        table.add_column(column)
    for r in reports:
        table.add_row(r.domain, str(r.path), str(r.existing), str(r.written), f"{r.total}/{samples}", str(r.duplicates),
                      str(r.unusable), str(r.retries), str(r.failed_requests))
    console.print(table)
    for r in reports:
        for message in r.errors[:5]:
            err.print(f"[yellow]{r.domain}:[/] {message}", highlight=False)
    if any(r.total < samples for r in reports):
        raise _fail("some domains are short of samples; re-run the same command to continue")


@app.command("validate-data")
def validate_data(paths: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False)]) -> None:
    """Check ShareGPT JSONL files; every bad line is listed with its number and reason (exit 1 if any)."""
    from training.data import read_sharegpt

    bad = 0
    for path in paths:
        corpus = read_sharegpt(path)
        if corpus.ok:
            console.print(f"[green]ok[/] {path}: {len(corpus.conversations)} conversations, data hash "
                          f"{corpus.data_hash()[:16]}", soft_wrap=True)
            continue
        bad += len(corpus.problems)
        # A line of its own, not a table title: titles wrap at the terminal width and split the path and count.
        console.print(f"[red]bad[/] {path}: {len(corpus.problems)} bad line(s), {len(corpus.conversations)} good",
                      soft_wrap=True)
        table = Table()
        table.add_column("line", justify="right")
        table.add_column("reason")
        for problem in corpus.problems:
            table.add_row(str(problem.line), problem.reason)
        console.print(table)
    if bad:
        raise typer.Exit(1)


SFT_OPTIONS_HELP = ("Speed knobs (--padding-free, --packing, --chunked-ce, --grad-ckpt, --compile, --bf16) keep the "
                    "maths the same.")
PaddingFree = Annotated[bool, typer.Option(
    "--padding-free", help="One row per micro-batch, samples end to end, attention per sample: no compute on "
                           "padding (FlashAttention's variable-length kernel on CUDA).")]


@app.command(help=f"Train one LoRA adapter with PEFT on a ShareGPT file. {SFT_OPTIONS_HELP}")
def sft(
    base: ExistingDir,
    data: ExistingFile,
    out_dir: Annotated[Path, typer.Argument(help="Run directory: checkpoints/, adapter/, training.json.")],
    rank: int = 32,
    alpha: int = 64,
    dropout: float = 0.05,
    lr: float = 2e-4,
    epochs: int = 30,
    micro_batch: int = 4,
    grad_accum: int = 8,
    targets: Annotated[str, typer.Option(help="attention-qv | attention | all-linear, optionally +embeddings.")] = "all-linear",
    max_length: int = 1024,
    seed: int = 42,
    eval_fraction: float = 0.1,
    packing: bool = False,
    padding_free: PaddingFree = False,
    chunked_ce: bool = False,
    bf16: Annotated[bool | None, typer.Option("--bf16/--fp32", help="Default: bf16 on GPU, fp32 on CPU.")] = None,
    grad_ckpt: bool = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the decoder.")] = False,
    pad_multiple: Annotated[int, typer.Option(min=1, help="Round batch widths up to a multiple (e.g. 64 with --compile).")] = 1,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps (overrides epochs).")] = None,
    save_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps (default: every epoch).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in OUT_DIR.")] = True,
    base_model_name: str | None = None,
    base_model_revision: str | None = None,
) -> None:
    from training.data import DataError
    from training.sft import SFTConfig, train

    try:
        config = SFTConfig(rank=rank, alpha=alpha, dropout=dropout, learning_rate=lr, epochs=epochs, micro_batch=micro_batch,
                           grad_accum=grad_accum, targets=targets, max_length=max_length, seed=seed,
                           eval_fraction=eval_fraction, packing=packing, padding_free=padding_free,
                           chunked_ce=chunked_ce, bf16=bf16,
                           gradient_checkpointing=grad_ckpt, torch_compile=compile, pad_multiple=pad_multiple,
                           max_steps=max_steps, save_every=save_every)
        result = train(base, data, out_dir, config, resume=resume, base_model_name=base_model_name,
                       base_model_revision=base_model_revision)
    except (ValueError, DataError) as exc:
        raise _fail(str(exc)) from None
    s = result.summary
    console.print(f"[green]trained[/] {result.adapter_dir}: {s['steps']} steps (resumed from {s['resumed_from_step']}), "
                  f"loss {result.first_loss:.4f} -> {result.final_loss:.4f}, eval loss {result.eval_loss}, "
                  f"{s['samples_per_s']} samples/s")


def _registry(publish: bool, location: str | None, outputs: Path | None, container: str | None) -> Any:
    """The registry to publish to (operator identity: DefaultAzureCredential), or None when not publishing."""
    if not publish:
        if location or outputs or container:
            raise _fail("--registry/--outputs/--container only say where to publish: add --publish")
        return None
    from service.registry_location import RegistryLocationError, resolve_settings

    try:
        registry = resolve_settings(registry=location, outputs=outputs, container=container).open("operator")
    except RegistryLocationError as exc:
        raise _fail(str(exc), code=2) from None
    registry.ensure_container()
    return registry


Publish = Annotated[bool, typer.Option("--publish", help="Also publish to the registry as the next version.")]
RegistryLocation = Annotated[str | None, typer.Option(
    "--registry", help="Publish: account URL (or the dev stack's Azurite connection string); default "
                       "$EXAONE_LORA_REGISTRY.")]
RegistryOutputs = Annotated[Path | None, typer.Option(
    "--outputs", help="Publish: stack outputs JSON (`pulumi stack output --json`) naming the registry.")]
RegistryContainer = Annotated[str | None, typer.Option(
    "--container", help="Publish: container (default: the outputs', $EXAONE_LORA_REGISTRY_CONTAINER, else adapters).")]


@app.command()
def export(
    run_dir: ExistingDir,
    dest: Annotated[Path, typer.Argument(help="Export directory (adapter files + manifest.json).")],
    domain: Annotated[str, typer.Option(help="Adapter domain, e.g. medical.")],
    version: int = 1,
    max_rank: Annotated[int, typer.Option(help="The server's --max-lora-rank.")] = 32,
    overwrite: bool = False,
    publish: Publish = False,
    registry_location: RegistryLocation = None,
    outputs: RegistryOutputs = None,
    container: RegistryContainer = None,
) -> None:
    """Export a finished run (refuses +embeddings and anything the serving validator refuses); optionally publish it."""
    from training.export import ExportError, export_run, publish_run

    try:
        manifest = export_run(run_dir, dest, domain=domain, version=version, max_rank=max_rank, overwrite=overwrite)
        console.print(f"[green]exported[/] {dest}: rank {manifest.rank}, modules {', '.join(manifest.target_modules)}, "
                      f"eval loss {(manifest.metrics or {}).get('eval_loss')}")
        registry = _registry(publish, registry_location, outputs, container)
        if registry is not None:
            published = publish_run(run_dir, registry, domain=domain, max_rank=max_rank)
            console.print(f"[green]published[/] {published.name}")
    except ExportError as exc:
        raise _fail(f"[{exc.code}] {exc}") from None


@app.command("train-all")
def train_all(
    base: ExistingDir,
    data_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Holds {domain}.jsonl per domain.")],
    out_dir: Path,
    domain: Annotated[list[str] | None, typer.Option("--domain", "-d", help="Default: all four.")] = None,
    rank: int = 32,
    alpha: int = 64,
    lr: float = 2e-4,
    epochs: int = 30,
    micro_batch: int = 4,
    grad_accum: int = 8,
    targets: str = "all-linear",
    max_length: int = 1024,
    packing: bool = False,
    padding_free: PaddingFree = False,
    chunked_ce: bool = False,
    max_steps: int | None = None,
    max_rank: int = 32,
    publish: Publish = False,
    registry_location: RegistryLocation = None,
    outputs: RegistryOutputs = None,
    container: RegistryContainer = None,
) -> None:
    """Train, export (and optionally publish) one adapter per domain; one summary table at the end."""
    from training.data import DataError
    from training.export import ExportError, export_run, publish_run
    from training.sft import SFTConfig, train

    domains = domain or list(DOMAINS)
    missing = [d for d in domains if not (data_dir / f"{d}.jsonl").is_file()]
    if missing:
        raise _fail(f"missing data files: {', '.join(str(data_dir / f'{d}.jsonl') for d in missing)}")
    config = SFTConfig(rank=rank, alpha=alpha, learning_rate=lr, epochs=epochs, micro_batch=micro_batch, grad_accum=grad_accum,
                       targets=targets, max_length=max_length, packing=packing, padding_free=padding_free,
                       chunked_ce=chunked_ce, max_steps=max_steps)
    registry = _registry(publish, registry_location, outputs, container)
    table = Table(title="train-all")
    for column in ("domain", "samples", "steps", "first loss", "final loss", "eval loss", "samples/s", "export", "status"):
        table.add_column(column)
    failed = False
    for name in domains:
        run_dir = out_dir / "runs" / name
        try:
            result = train(base, data_dir / f"{name}.jsonl", run_dir, config)
            manifest = export_run(run_dir, out_dir / "exports" / name, domain=name, max_rank=max_rank, overwrite=True)
            status = "exported"
            if registry is not None:
                status = f"published {publish_run(run_dir, registry, domain=name, max_rank=max_rank).name}"
            s = result.summary
            table.add_row(name, str(s["train_samples"]), str(s["steps"]), f"{result.first_loss:.4f}", f"{result.final_loss:.4f}",
                          f"{result.eval_loss:.4f}" if result.eval_loss is not None else "-", str(s["samples_per_s"]),
                          str(out_dir / "exports" / name), f"[green]{status}[/] ({manifest.rank}r)")
        except (ValueError, DataError, ExportError) as exc:
            failed = True
            table.add_row(name, "-", "-", "-", "-", "-", "-", "-", f"[red]failed[/]: {str(exc).splitlines()[0]}")
    console.print(table)
    if failed:
        raise typer.Exit(1)


@app.command()
def quality(
    base: ExistingDir,
    data_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Holds {domain}.jsonl per domain.")],
    out_dir: Annotated[Path, typer.Argument(help="Writes quality.md and quality.json.")],
    adapter: Annotated[list[str], typer.Option(help="domain=ADAPTER_DIR (repeat).")],
    eval_fraction: float = 0.1,
    seed: int = 42,
    max_length: int = 1024,
) -> None:
    """Held-out eval loss of base + each adapter on each domain (the seed's prompts × models matrix, as numbers)."""
    from training.data import DataError
    from training.quality import evaluate_matrix

    adapters: dict[str, Path] = {}
    for item in adapter:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_dir():
            raise _fail(f"--adapter {item!r}: expected domain=EXISTING_ADAPTER_DIR")
        adapters[name] = Path(path)
    data = {p.stem: p for p in sorted(data_dir.glob("*.jsonl"))}
    if not data:
        raise _fail(f"no *.jsonl in {data_dir}")
    try:
        report = evaluate_matrix(base, adapters, data, eval_fraction=eval_fraction, seed=seed, max_length=max_length)
    except (ValueError, DataError) as exc:
        raise _fail(str(exc)) from None
    md, js = report.write(out_dir)
    table = Table(title="held-out eval loss (rows: models, columns: domains)")
    table.add_column("model")
    for d in report.domains:
        table.add_column(d, justify="right")
    for m in report.models:
        table.add_row(m, *(f"{report.loss[m][d]:.4f}" for d in report.domains))
    console.print(table)
    console.print(f"wrote {md} and {js}")
