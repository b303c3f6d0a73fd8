"""`exaone-lora serve ...`: run the gateway, the 8-step lifecycle, the swap benchmark, the reconciler.

Every command that measures or changes something prints one JSON document on stdout (benchmark
reports and promotion evidence read it); progress and errors go to stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(help="Gateway, lifecycle test, swap benchmark, reconciler.", no_args_is_help=True,
                  rich_markup_mode="rich")
err = Console(stderr=True)


def _print(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or []:
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            raise typer.BadParameter(f"{what} must look like KEY=VALUE, got {value!r}")
        out[key] = rest
    return out


def _secret(env: str, file: Path | None) -> str | None:
    from service.gateway.server import read_secret

    return read_secret(env, file)


def _spec(stack: str | None, root: Path) -> Any:
    if stack is None:
        return None
    from exaone_lora.spec import SpecError, load_spec

    try:
        return load_spec(stack, root=root)
    except SpecError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
def gateway(
    upstream: Annotated[list[str] | None, typer.Option(help="vLLM replica URL (repeat); default: the stack's")] = None,
    stack: Annotated[str | None, typer.Option(help="read ports, served name and replicas from Pulumi.<stack>.yaml")] = None,
    root: Annotated[Path, typer.Option(help="where the Pulumi.<stack>.yaml files are")] = Path("."),
    host: Annotated[str, typer.Option(help="public listener address")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="public listener port (default spec.port or 8080)")] = None,
    admin_host: Annotated[str, typer.Option(help="admin listener address: loopback or a private address only")] = "127.0.0.1",
    admin_port: Annotated[int | None, typer.Option(help="admin listener port (default spec.gateway.admin_port or 8082)")] = None,
    served_name: Annotated[str | None, typer.Option(help="the base model's served name")] = None,
    alias: Annotated[list[str] | None, typer.Option(help="initial ALIAS=VERSION_NAME, e.g. medical=medical-v3")] = None,
    admin_key_file: Annotated[Path | None, typer.Option(help="admin bearer key file (else $EXAONE_GATEWAY_ADMIN_KEY)")] = None,
    api_key_file: Annotated[Path | None, typer.Option(help="public API key file (else $EXAONE_API_KEY); required "
                                                          "unless --host is loopback")] = None,
    require_api_key: Annotated[bool, typer.Option("--require-api-key", help="refuse to start without a public API key "
                                                  "even on a loopback --host (behind a TLS proxy on the same host)")] = False,
    engine_key_file: Annotated[Path | None, typer.Option(help="file with vLLM's API key (else $VLLM_API_KEY)")] = None,
    adapter_root: Annotated[str | None, typer.Option(help="directory of deployed versions (<root>/<domain>-vN) as vLLM "
                                                          "sees it: alias targets a restarted replica lost are reloaded, "
                                                          "and /admin/versions loads only from under it")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate chain: the public listener serves HTTPS")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert")] = None,
    max_body_bytes: Annotated[int | None, typer.Option(min=1024, help="largest request body the public API reads (413 "
                                                                      "beyond; default 1 MiB)")] = None,
    routing: Annotated[str | None, typer.Option(help="replica choice: scored (queue, KV cache, LoRA affinity from "
                                                     "vLLM's metrics) or least-outstanding (default "
                                                     "spec.gateway.routing, else scored)")] = None,
) -> None:
    """Run the gateway: public OpenAI API (aliases, streaming) and the admin listener (/metrics, keyed /admin/*).

    The public API needs a key (at least 16 characters) whenever it listens beyond loopback, or with
    --require-api-key; the admin listener binds to loopback or one private address only."""
    import logging

    from exaone_lora.cidrs import is_loopback
    from service.gateway import create_gateway
    from service.gateway.body import DEFAULT_MAX_BODY_BYTES
    from service.gateway.guards import GuardError, check_admin_host
    from service.gateway.server import ADMIN_KEY_ENV, API_KEY_ENV, ENGINE_KEY_ENV, Tls, serve

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = _spec(stack, root)
    if not upstream:
        if spec is None:
            raise typer.BadParameter("give --upstream URL (one per vLLM replica) or --stack")
        from service.replicas import replica_endpoints

        upstream = [e.url for e in replica_endpoints(spec)]
    try:
        check_admin_host(admin_host)
    except GuardError as exc:
        raise typer.BadParameter(str(exc), param_hint="--admin-host") from None
    admin_key = _secret(ADMIN_KEY_ENV, admin_key_file)
    if not admin_key:
        raise typer.BadParameter(f"no admin key: set ${ADMIN_KEY_ENV} (secrets.env) or --admin-key-file")
    # Beyond loopback a key is required whatever the flags say; --require-api-key extends that to loopback.
    key_required = require_api_key or not is_loopback(host)
    api_key = _secret(API_KEY_ENV, api_key_file)
    if key_required and not api_key:
        why = "--require-api-key" if require_api_key else f"--host {host} is not loopback"
        raise typer.BadParameter(f"no public API key ({why}): set ${API_KEY_ENV} (at least 16 characters) or "
                                 "--api-key-file")
    try:
        apps = create_gateway(
            upstream, admin_key=admin_key, api_key=api_key, require_api_key=key_required,
            engine_api_key=_secret(ENGINE_KEY_ENV, engine_key_file),
            served_name=served_name or (spec.model.served_name if spec else "exaone"),
            initial_aliases=_pairs(alias, "--alias"), adapter_root=adapter_root,
            max_body_bytes=max_body_bytes or DEFAULT_MAX_BODY_BYTES,
            routing=routing or (spec.gateway.routing if spec else "scored"),
        )
    except GuardError as exc:
        raise typer.BadParameter(str(exc)) from None
    except ValueError as exc:  # an unknown --routing
        raise typer.BadParameter(str(exc), param_hint="--routing") from None
    public_port = port or (spec.port if spec else 8080)
    private_port = admin_port or (spec.gateway.admin_port if spec else 8082)
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("give both --tls-cert and --tls-key, or neither")
    tls = Tls(tls_cert, tls_key) if tls_cert and tls_key else None
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            raise typer.BadParameter(f"{path} is not a readable file", param_hint="--tls-cert/--tls-key")
    err.print(f"gateway: public {'https' if tls else 'http'}://{host}:{public_port}, admin and /metrics "
              f"http://{admin_host}:{private_port}, upstreams {upstream}")
    asyncio.run(serve(apps, (host, public_port), (admin_host, private_port), tls))


@app.command()
def merge(
    base: Annotated[Path, typer.Option(help="the base model directory (config.json + *.safetensors)")],
    adapter: Annotated[Path, typer.Option(help="the validated adapter version directory, e.g. /data/lora-adapters/medical-v3")],
    out: Annotated[Path, typer.Option(help="where the merged model goes, e.g. /data/models/merged/medical-v3")],
    version_name: Annotated[str, typer.Option(help="the immutable version name the merged replica will serve")],
    max_rank: Annotated[int, typer.Option(help="the stack's maxLoraRank (the validator's limit)")] = 64,
    device: Annotated[str, typer.Option(help="where to compute W + s*B@A: cpu, or cuda when the GPU has room")] = "cpu",
) -> None:
    """Fold one adapter version into the base weights: the model a merged replica serves at base speed."""
    from service.gateway.names import parse_version_name
    from service.merge import MergeError, merge_adapter

    if parse_version_name(version_name) is None:
        raise typer.BadParameter(f"{version_name!r} is not an immutable version name (`domain-vN`)")
    started = time.perf_counter()
    try:
        merged = merge_adapter(base, adapter, out, version_name=version_name, max_rank=max_rank, device=device,
                               progress=lambda name, i, n: err.print(f"merged {name} ({i}/{n})"))
    except MergeError as exc:
        err.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(2) from None
    _print({"path": str(merged.path), "version_name": merged.version_name, "scale": merged.scale,
            "merged_weights": merged.merged_weights, "reused": merged.reused,
            "seconds": round(time.perf_counter() - started, 2)})


@app.command("tune-lora-kernels")
def tune_lora_kernels(
    out: Annotated[Path, typer.Option(help="folder vLLM reads through VLLM_TUNED_CONFIG_FOLDER (the host layout's "
                                           "cache/lora-kernels)")],
    model_dir: Annotated[Path | None, typer.Option(help="the served checkpoint: its config.json gives the layer "
                                                        "shapes (default: EXAONE 3.5 2.4B)")] = None,
    rank: Annotated[int, typer.Option(help="the stack's maxLoraRank")] = 32,
    max_loras: Annotated[int, typer.Option(help="the stack's GPU LoRA slots (maxLoras)")] = 4,
    dual_stream: Annotated[bool, typer.Option(help="tune for VLLM_LORA_ENABLE_DUAL_STREAM=1 (what the GPU stacks "
                                                   "ship)")] = True,
    budget_s: Annotated[float, typer.Option(help="stop starting new shapes after this many seconds; the rest keep "
                                                 "vLLM's default tiles")] = 300.0,
    report: Annotated[Path | None, typer.Option(help="also write the JSON report (default vs tuned per shape)")] = None,
) -> None:
    """Tune vLLM's LoRA shrink/expand kernel tiles on this GPU (one-off, ~5 min; takes effect at vLLM's next start).

    Exit status 3: no CUDA GPU here (nothing was written)."""
    from exaone_lora.model_shape import EXAONE_3_5_2_4B
    from service.lora_kernels import NoCudaGpu, model_shape_from_config, tune

    try:
        shape = model_shape_from_config(model_dir) if model_dir is not None else EXAONE_3_5_2_4B
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        summary = tune(out, shape, budget_s, rank, max_loras, dual_stream=dual_stream, report=report,
                       log=lambda line: err.print(line, markup=False, highlight=False, soft_wrap=True))
    except NoCudaGpu as exc:
        err.print(f"[red]not tuned:[/red] {exc}")
        raise typer.Exit(3) from None
    _print({"gpu": summary["gpu"], "files": summary["files"], "wall_s": round(summary["wall_s"], 1),
            "tuned_shapes": len(summary["shapes"]), "untuned_shapes": len(summary["untuned"]),
            "lora_kernel_us_per_step": summary["per_step"]})


# Where the measured server's files are, for the evidence (defaults: the host layout's, so on a host no flag is needed).
AdaptersDirOpt = Annotated[Path | None, typer.Option(
    help="the server's adapter folder, to hash each served version's files (default /data/lora-adapters if present)")]
ModelDirOpt = Annotated[Path | None, typer.Option(
    help="the served model folder, whose .exaone-model.json says the revision (default: the stack's model path)")]
EnginePythonOpt = Annotated[str | None, typer.Option(
    help="the server's venv python, to read which vLLM build it runs (pip metadata); default this interpreter")]
StandInOpt = Annotated[str | None, typer.Option(
    help="say why this server is a stand-in (e.g. 'CPU vLLM in CI'): recorded; promotion treats it as such")]


def measure_for(url: str, spec: Any, api_key: str | None, adapters_dir: Path | None, model_dir: Path | None,
                engine_python: str | None, stand_in: str | None) -> Any:
    """What the server serves now (service.served.measure), with the host layout's folders as defaults."""
    from service.layout import DEFAULT_LAYOUT
    from service.served import MeasureError, measure

    default_adapters = Path(str(DEFAULT_LAYOUT.adapters))
    adapters_dir = adapters_dir or (default_adapters if default_adapters.is_dir() else None)
    if model_dir is None and spec is not None:
        model_dir = Path(spec.model.path)
    try:
        return measure(url, api_key=api_key, adapters_dir=adapters_dir, model_dir=model_dir,
                       engine_python=engine_python, stand_in=stand_in)
    except MeasureError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


@app.command()
def measure(
    url: Annotated[str, typer.Option(help="the vLLM server (not the gateway), e.g. http://127.0.0.1:8081")],
    engine_key_file: Annotated[Path | None, typer.Option(help="file with vLLM's API key (else $VLLM_API_KEY)")] = None,
    adapters_dir: AdaptersDirOpt = None,
    model_dir: ModelDirOpt = None,
    engine_python: EnginePythonOpt = None,
    stand_in: StandInOpt = None,
) -> None:
    """What a vLLM server serves now, as promotion evidence records it: /v1/models, the sha256 of each served
    adapter version's files on this host, vLLM's version and build, the model revision, the commit (JSON)."""
    measured = measure_for(url, None, _secret("VLLM_API_KEY", engine_key_file), adapters_dir, model_dir,
                           engine_python, stand_in)
    _print(measured.to_dict())


@app.command()
def lifecycle(
    url: Annotated[str, typer.Option(help="the vLLM server (not the gateway), e.g. http://127.0.0.1:8081")],
    adapter: Annotated[list[str], typer.Option(help="DOMAIN=DIR of an adapter to load (repeat; the seed uses 4)")],
    served_name: Annotated[str, typer.Option(help="the base model's served name")] = "exaone",
    engine_key_file: Annotated[Path | None, typer.Option(help="file with vLLM's API key (else $VLLM_API_KEY)")] = None,
    evidence_stack: Annotated[str | None, typer.Option(help="record the result as promotion evidence of this stack")] = None,
    root: Annotated[Path, typer.Option(help="repository root (stack files, evidence/)")] = Path("."),
    adapters_dir: AdaptersDirOpt = None,
    model_dir: ModelDirOpt = None,
    engine_python: EnginePythonOpt = None,
    stand_in: StandInOpt = None,
) -> None:
    """The seed's 8-step lifecycle: initial state, load, list, query, unload, query unloaded, reload, clean up.

    With --evidence-stack, first measures what the server serves (see `measure`) and records both as that stack's
    `lifecycle` evidence (evidence/<stack>/lifecycle-*.json), which `exaone-lora infra promote` checks."""
    from service.lifecycle import run_lifecycle

    adapters = {domain: Path(path) for domain, path in _pairs(adapter, "--adapter").items()}
    missing = [str(p) for p in adapters.values() if not p.is_dir()]
    if missing:
        raise typer.BadParameter(f"not adapter directories: {', '.join(missing)}")
    spec = _spec(evidence_stack, root)
    key = _secret("VLLM_API_KEY", engine_key_file)
    measured = None
    if spec is not None:
        measured = measure_for(url, spec, key, adapters_dir, model_dir, engine_python, stand_in)
    result = run_lifecycle(url, adapters, served_name=served_name, api_key=key)
    if spec is not None:
        result["evidence"] = _record(root, spec, "lifecycle", result, measured)
    _print(result)
    raise typer.Exit(0 if result["passed"] else 1)


def _record(root: Path, spec: Any, kind: str, result: dict[str, Any], measured: Any = None) -> str:
    from exaone_lora.evidence import record_evidence

    return str(record_evidence(root, spec, kind, bool(result["passed"]), result, measured))


@app.command("swap-bench")
def swap_bench(
    url: Annotated[str, typer.Option(help="the vLLM server, e.g. http://127.0.0.1:8081")],
    adapter: Annotated[Path, typer.Option(help="adapter directory loaded under a fresh name each cycle")],
    cycles: Annotated[int, typer.Option(min=1, max=1000, help="load / first token / unload cycles")] = 10,
    max_tokens: Annotated[int, typer.Option(min=1, max=512)] = 4,
    engine_key_file: Annotated[Path | None, typer.Option(help="file with vLLM's API key (else $VLLM_API_KEY)")] = None,
    output: Annotated[Path | None, typer.Option(help="also write the JSON here")] = None,
) -> None:
    """Swap latency: N cycles of load, stream to the first token, unload (seconds per phase, JSON)."""
    from service.lifecycle import swap_benchmark

    if not adapter.is_dir():
        raise typer.BadParameter(f"{adapter} is not an adapter directory")
    result = swap_benchmark(url, adapter, cycles=cycles, max_tokens=max_tokens,
                            api_key=_secret("VLLM_API_KEY", engine_key_file))
    if output is not None:
        output.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    _print(result)
    raise typer.Exit(0 if result["passed"] else 1)


@app.command()
def reconcile(
    engine: Annotated[list[str] | None, typer.Option(help="vLLM replica URL (repeat); default: the stack's replicas")] = None,
    stack: Annotated[str | None, typer.Option(help="read replicas, max_cpu_loras and max rank from the stack")] = None,
    root: Annotated[Path, typer.Option(help="where the Pulumi.<stack>.yaml files are")] = Path("."),
    gateway_admin: Annotated[str | None, typer.Option(help="gateway admin URL (aliases); none: vLLM only")] = None,
    admin_key_file: Annotated[Path | None, typer.Option(help="admin key file (else $EXAONE_GATEWAY_ADMIN_KEY)")] = None,
    desired: Annotated[list[str] | None, typer.Option(help="ALIAS=VERSION (repeat) instead of the registry")] = None,
    adapter: Annotated[list[str] | None, typer.Option(help="NAME=DIR of a local version, e.g. medical-v2=/data/x")] = None,
    registry_location: Annotated[str | None, typer.Option(
        "--registry", "--registry-url",
        help="Blob account URL, read with this host's managed identity (or the dev stack's Azurite connection string); "
             "default $EXAONE_LORA_REGISTRY")] = None,
    container: Annotated[str | None, typer.Option(
        help="registry container; default $EXAONE_LORA_REGISTRY_CONTAINER, else adapters")] = None,
    client_id: Annotated[str | None, typer.Option(
        help="client id of the host's user-assigned identity (stack output identityClientId); default $AZURE_CLIENT_ID")]
        = None,
    ca_file: Annotated[Path | None, typer.Option(
        help="PEM CA bundle for the Blob endpoint (Azurite's self-signed certificate); default "
             "$EXAONE_LORA_REGISTRY_CA_FILE")] = None,
    registry_env_file: Annotated[Path | None, typer.Option(
        help="KEY=VALUE file setting the above (e.g. /etc/exaone-lora/registry.env; IDENTITY_ENDPOINT/IDENTITY_HEADER "
             "only for the local identity stand-in)")] = None,
    cache_dir: Annotated[Path, typer.Option(help="where registry versions are downloaded")] = Path("/data/lora-adapters"),
    base_config: Annotated[Path | None, typer.Option(help="base model dir or config.json, to validate adapters")] = None,
    max_cpu_loras: Annotated[int | None, typer.Option(min=1, help="default: the stack's, else 4")] = None,
    max_rank: Annotated[int | None, typer.Option(min=1, help="default: the stack's max_lora_rank")] = None,
    dry_run: Annotated[bool, typer.Option(help="print the plan, change nothing")] = False,
    every: Annotated[float | None, typer.Option(min=5, help="keep running: reconcile every N s (JSON lines)")] = None,
) -> None:
    """Drive every replica (and the gateway's aliases) to the desired adapter state; safe to re-run."""
    import httpx

    from service.gateway import EngineClient, GatewayAdmin
    from service.gateway.server import ADMIN_KEY_ENV
    from service.reconciler import (
        AdapterSource,
        AliasSink,
        LocalSource,
        MemoryAliases,
        Reconciler,
        RegistrySource,
        desired_from_mapping,
        desired_from_registry,
    )

    spec = _spec(stack, root)
    if not engine:
        if spec is None:
            raise typer.BadParameter("give --engine URL (one per vLLM replica) or --stack")
        from service.replicas import replica_endpoints

        engine = [e.url for e in replica_endpoints(spec)]
    rank = max_rank or (spec.max_lora_rank if spec else None)
    config = str(base_config) if base_config else None
    from service.registry import RegistryError
    from service.registry_location import REGISTRY_ENV, RegistryLocationError, read_env_file, resolve_settings

    registry = None
    try:
        if registry_env_file is not None:
            # Process start-up: azure-identity reads IDENTITY_ENDPOINT/AZURE_CLIENT_ID from the environment.
            os.environ.update(read_env_file(registry_env_file))
        needed = not (desired and adapter)  # both given: the registry is not read at all
        if needed and (registry_location or os.environ.get(REGISTRY_ENV)):
            # The host reads with its own managed identity: IMDS on Azure, the stand-in's endpoint locally.
            registry = resolve_settings(registry=registry_location, container=container, client_id=client_id,
                                        ca_file=ca_file).open("host")
    except RegistryLocationError as exc:
        raise typer.BadParameter(str(exc)) from None
    if desired:
        wanted = desired_from_mapping({a: int(v) for a, v in _pairs(desired, "--desired").items()})
    elif registry is not None:
        try:
            wanted = desired_from_registry(registry)
        except RegistryError as exc:
            _print({"ok": False, "error": str(exc)})
            raise typer.Exit(1) from None
    else:
        raise typer.BadParameter(f"give --desired ALIAS=VERSION, --registry or ${REGISTRY_ENV}")
    source: AdapterSource
    if adapter:
        source = LocalSource({k: Path(v) for k, v in _pairs(adapter, "--adapter").items()}, config, rank)
    elif registry is not None:
        source = RegistrySource(registry, cache_dir, config, rank)
    else:
        raise typer.BadParameter("give --adapter NAME=DIR or a registry to load versions from")

    async def go() -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            sink: AliasSink = MemoryAliases()
            if gateway_admin:
                key = _secret(ADMIN_KEY_ENV, admin_key_file)
                if not key:
                    raise typer.BadParameter(f"no admin key: set ${ADMIN_KEY_ENV} or --admin-key-file")
                sink = GatewayAdmin(gateway_admin, key, client)
            reconciler = Reconciler([EngineClient(u, client) for u in engine or []], sink, source,
                                    max_cpu_loras=max_cpu_loras or (spec.max_cpu_loras if spec else 4))
            return await reconciler.reconcile(wanted, dry_run=dry_run)

    async def attempt() -> dict[str, Any]:
        try:
            return await go()
        except (httpx.HTTPError, RuntimeError, OSError) as exc:
            # An unreachable replica stops the run: replicas must not be driven apart.
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    if every is not None:
        # A replica restarted by systemd comes back without its runtime-loaded adapters: this loop
        # (or a timer running the one-shot command) puts them back and keeps replicas identical.
        while True:
            sys.stdout.write(json.dumps(asyncio.run(attempt()), sort_keys=True) + "\n")
            sys.stdout.flush()
            time.sleep(every)
    result = asyncio.run(attempt())
    _print(result)
    raise typer.Exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    app()
