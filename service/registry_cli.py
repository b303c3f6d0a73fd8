"""`exaone-lora adapters ...`: publish, list, show, alias, rollback, validate and download adapter versions;
rollout (canary steps judged on the gateway's metrics, promoted or rolled back on their own) and rollout-status.

Where the registry is: `--registry` (an account URL, or the dev stack's Azurite connection string), else
`--outputs FILE` (what `pulumi stack output --json` writes), else $EXAONE_LORA_REGISTRY. Who signs in:
`--identity operator` (DefaultAzureCredential: az login, CI's workload identity) or `--identity host` (the
host's managed identity, `--client-id`). See service.registry.open_registry. Errors print their stable code
and exit non-zero; nothing is half-written.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from service.manifest import manifest_sha256, parse_manifest
from service.registry import AdapterRegistry, RegistryError, resolve_base_config
from service.registry_location import REGISTRY_ENV, RegistryLocationError, read_env_file, resolve_settings
from service.validation import AdapterValidationError, BaseConfigError, validate_adapter

app = typer.Typer(
    help="Adapter registry in Azure Blob: immutable versions {domain}-v{N}, one alias per domain, rollback.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True)


class IdentityChoice(StrEnum):
    operator = "operator"
    host = "host"


Registry = Annotated[str | None, typer.Option(
    "--registry", "--account-url", show_default=False,  # --account-url: the AKS validator's argv (infra/k8s/workload.py)
    help=f"account URL (https://<account>.blob.core.windows.net) or the dev stack's Azurite connection string; "
         f"default ${REGISTRY_ENV}")]
Outputs = Annotated[Path | None, typer.Option(
    "--outputs", help="stack outputs JSON (`pulumi stack output --json`): storageBlobUrl, storageContainer, "
                      "identityClientId")]
Container = Annotated[str | None, typer.Option(
    "--container", show_default=False,
    help="container holding the adapters; default: the outputs' storageContainer, $EXAONE_LORA_REGISTRY_CONTAINER, "
         "else adapters")]
IdentityOpt = Annotated[IdentityChoice, typer.Option(
    "--identity", help="operator: DefaultAzureCredential (az login, CI); host: the host's managed identity")]
ClientId = Annotated[str | None, typer.Option(
    "--client-id", show_default=False,
    help="the host identity's client id; default: the outputs' identityClientId, $AZURE_CLIENT_ID")]
EnvFile = Annotated[Path | None, typer.Option(
    "--registry-env-file", help="KEY=VALUE file of the registry settings (a host's /etc/exaone-lora/registry.env: "
                                "EXAONE_LORA_REGISTRY, ..._CONTAINER, AZURE_CLIENT_ID, ..._CA_FILE)")]
CaFile = Annotated[Path | None, typer.Option(
    "--ca-file", help="PEM CA bundle for the Blob endpoint (Azurite's self-signed certificate); default "
                      "$EXAONE_LORA_REGISTRY_CA_FILE")]
Domain = Annotated[str, typer.Argument(help="adapter domain = the alias clients call, e.g. medical")]
JsonOut = Annotated[bool, typer.Option("--json", help="print JSON instead of tables")]
BaseConfigOpt = Annotated[Path | None, typer.Option(
    "--base-config", help="base model config.json (or model directory); default: known by --base-model-name")]
MaxRank = Annotated[int, typer.Option("--max-rank", help="the server's --max-lora-rank")]

EXIT_INVALID = 2
EXIT_REGISTRY = 1


@dataclass(frozen=True)
class RegistryLocation:
    """Where the registry is and who signs in: the registry options every command that reads or writes it takes."""

    registry: str | None
    outputs: Path | None
    container: str | None
    identity: IdentityChoice
    client_id: str | None
    ca_file: Path | None
    env_file: Path | None

    def open(self) -> AdapterRegistry:
        try:
            if self.env_file is not None:
                # Process start-up: azure-identity reads AZURE_CLIENT_ID / IDENTITY_ENDPOINT from the environment.
                os.environ.update(read_env_file(self.env_file))
            settings = resolve_settings(registry=self.registry, outputs=self.outputs, container=self.container,
                                        client_id=self.client_id, ca_file=self.ca_file)
            return settings.open(self.identity.value)
        except RegistryLocationError as exc:
            err_console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(code=EXIT_INVALID) from None


# The options behind RegistryLocation: its field -> (the command's parameter name, annotation, default).
_LOCATION_OPTIONS: dict[str, tuple[str, Any, Any]] = {
    "registry": ("registry_location", Registry, None), "outputs": ("outputs", Outputs, None),
    "container": ("container", Container, None), "identity": ("identity", IdentityOpt, IdentityChoice.operator),
    "client_id": ("client_id", ClientId, None), "ca_file": ("ca_file", CaFile, None),
    "env_file": ("registry_env_file", EnvFile, None)}


def registry_command(command: Callable[..., None]) -> Callable[..., None]:
    """Gives a command the registry options (`--registry`, `--outputs`, `--container`, `--identity`, `--client-id`,
    `--ca-file`, `--registry-env-file`) after its own; it receives them as `location: RegistryLocation`."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "location"]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
             for name, annotation, default in _LOCATION_OPTIONS.values()]

    @functools.wraps(command)
    def with_location(**kwargs: Any) -> None:
        location = RegistryLocation(**{field: kwargs.pop(name) for field, (name, _, _) in _LOCATION_OPTIONS.items()})
        command(location=location, **kwargs)

    signature = inspect.Signature([*own, *added])
    with_location.__signature__ = signature  # type: ignore[attr-defined]
    with_location.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return with_location


def _fail(exc: Exception) -> typer.Exit:
    code = EXIT_INVALID if isinstance(exc, (AdapterValidationError, BaseConfigError, ValueError)) else EXIT_REGISTRY
    # escape(): the "[code]" prefix of every error would otherwise be eaten as rich markup.
    err_console.print(f"[red]error:[/red] {escape(str(exc))}")
    return typer.Exit(code=code)


def _print_json(data: Any) -> None:
    # Plain print: rich would wrap long lines and break the JSON for scripts.
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def _load_json_file(path: Path | None, what: str) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {what} {path}: {exc}") from None
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{what} {path} must hold a JSON object")
    return data


@app.command()
@registry_command
def publish(
    location: RegistryLocation,
    domain: Domain,
    adapter_dir: Annotated[Path, typer.Argument(help="PEFT adapter directory (adapter_config.json + safetensors)")],
    base_model_name: Annotated[str, typer.Option(help="base model name recorded in the manifest")],
    base_model_revision: Annotated[str, typer.Option(help="base model revision (commit) recorded in the manifest")],
    max_rank: MaxRank = 32,
    base_config: BaseConfigOpt = None,
    training_json: Annotated[Path | None, typer.Option(help="JSON file with training metadata")] = None,
    metrics_json: Annotated[Path | None, typer.Option(help="JSON file with evaluation metrics")] = None,
    activate: Annotated[bool, typer.Option(help="also point the alias at the new version")] = False,
    as_json: JsonOut = False,
) -> None:
    """Validate an adapter and publish it as the next immutable version {domain}-v{N}."""
    registry = location.open()
    training, metrics = _load_json_file(training_json, "training metadata"), _load_json_file(metrics_json, "metrics")
    try:
        registry.ensure_container()
        manifest = registry.publish(domain, adapter_dir, base_model_name=base_model_name,
                                    base_model_revision=base_model_revision, max_rank=max_rank, training=training,
                                    metrics=metrics, base_config=base_config)
        alias = registry.set_alias(domain, manifest.version) if activate else None
    except (AdapterValidationError, BaseConfigError, RegistryError, ValueError) as exc:
        raise _fail(exc) from None
    digest = manifest_sha256(manifest)
    if as_json:
        _print_json({"name": manifest.name, "domain": domain, "version": manifest.version, "manifest_sha256": digest,
                     "alias": alias.to_json() if alias else None})
        return
    console.print(f"[green]published[/green] {manifest.name} (rank {manifest.rank}, manifest sha256 {digest})")
    if alias:
        console.print(f"alias {domain} -> v{alias.current}")


@app.command("list")
@registry_command
def list_command(
    location: RegistryLocation,
    domain: Annotated[str | None, typer.Argument(help="show this domain's versions; all domains when left out")] = None,
    as_json: JsonOut = False,
) -> None:
    """List domains with their current version, or one domain's versions."""
    registry = location.open()
    try:
        if domain is None:
            rows = [(d, registry.alias(d).current, registry.versions(d)) for d in registry.domains()]
            if as_json:
                _print_json([{"domain": d, "current": current, "versions": versions} for d, current, versions in rows])
                return
            table = Table(title=f"Adapters in container {registry.container.container_name}")
            for column in ("domain", "current", "versions"):
                table.add_column(column)
            for d, current, versions in rows:
                table.add_row(d, f"v{current}" if current else "-", ", ".join(f"v{v}" for v in versions) or "-")
            console.print(table)
            return
        state = registry.alias(domain)
        manifests = [registry.manifest(domain, v) for v in registry.versions(domain)]
    except (AdapterValidationError, RegistryError) as exc:
        raise _fail(exc) from None
    if as_json:
        _print_json([{"name": m.name, "version": m.version, "rank": m.rank, "created_at": m.created_at.isoformat(),
                      "current": m.version == state.current} for m in manifests])
        return
    table = Table(title=f"{domain}: alias -> {state.current_name or '(unset)'}")
    for column in ("version", "name", "rank", "modules", "base model", "created", "current"):
        table.add_column(column)
    for m in manifests:
        table.add_row(str(m.version), m.name, str(m.rank), str(len(m.target_modules)), m.base_model.name,
                      m.created_at.isoformat(), "*" if m.version == state.current else "")
    console.print(table)


@app.command()
@registry_command
def show(
    location: RegistryLocation,
    domain: Domain,
    version: Annotated[int | None, typer.Argument(help="version number; the alias's current one when left out")] = None,
) -> None:
    """Print a version's manifest (JSON) and its sha256 (the value a stack file pins)."""
    registry = location.open()
    try:
        if version is None:
            version = registry.alias(domain).current
            if version is None:
                raise typer.BadParameter(f"alias {domain!r} is unset; give a version")
        raw = registry.manifest_bytes(domain, version)
        registry.manifest(domain, version)
    except (AdapterValidationError, RegistryError) as exc:
        raise _fail(exc) from None
    typer.echo(raw.decode().rstrip("\n"))
    err_console.print(f"manifest sha256 {manifest_sha256(raw)}")


@app.command()
@registry_command
def alias(
    location: RegistryLocation,
    domain: Domain,
    version: Annotated[int | None, typer.Argument(help="point the alias at this version; show it when left out")] = None,
    expected_current: Annotated[int | None, typer.Option(help="refuse unless the alias currently points here")] = None,
    as_json: JsonOut = False,
) -> None:
    """Show an alias, or switch it to another version (the deploy)."""
    registry = location.open()
    try:
        if version is None:
            state = registry.alias(domain)
        elif expected_current is None:
            state = registry.set_alias(domain, version)
        else:
            state = registry.set_alias(domain, version, expected_current=expected_current)
    except (AdapterValidationError, RegistryError) as exc:
        raise _fail(exc) from None
    if as_json:
        _print_json(state.to_json())
        return
    console.print(f"{domain} -> {state.current_name or '(unset)'}  history {state.history}")


@app.command()
@registry_command
def rollback(
    location: RegistryLocation,
    domain: Domain,
    as_json: JsonOut = False,
) -> None:
    """Point the alias back at the version that was current before (the rollback)."""
    registry = location.open()
    try:
        registry.rollback(domain)
        state = registry.alias(domain)
    except (AdapterValidationError, RegistryError) as exc:
        raise _fail(exc) from None
    if as_json:
        _print_json(state.to_json())
        return
    console.print(f"[yellow]rolled back[/yellow] {domain} -> {state.current_name}  history {state.history}")


def _duration(text: str) -> float:
    """`60s`, `2m`, `1.5` (seconds): the window length of a rollout."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            number, factor = text[: -len(suffix)], units[suffix]
            break
    else:
        number, factor = text, 1.0
    try:
        value = float(number) * factor
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a duration (e.g. 60s, 2m, 0.5s)") from None
    if not 0 < value <= 86400:
        raise typer.BadParameter(f"{text!r}: a window must be longer than 0 and at most a day")
    return value


@app.command()
@registry_command
def rollout(
    location: RegistryLocation,
    domain: Domain,
    version: Annotated[int, typer.Argument(help="the candidate version (published, validated)")],
    canary: Annotated[int, typer.Option(min=1, max=99, help="the candidate's first share of the alias's requests, "
                                        "percent")] = 10,
    step: Annotated[int, typer.Option(min=1, max=100, help="added to the share after each window that holds; at 100 "
                                      "the candidate is promoted (the alias switches to it, as a deploy)")] = 25,
    interval: Annotated[str, typer.Option(help="length of one analysis window, e.g. 60s, 2m")] = "60s",
    shadow: Annotated[int, typer.Option(min=0, max=100, help="percent of the stable side's requests also sent to the "
                                        "candidate in the background (answers discarded, measured)")] = 0,
    sticky_user: Annotated[bool, typer.Option("--sticky-user", help="keep each OpenAI `user` on one version "
                                              "(hashed); requests without `user` are split at random")] = False,
    min_requests: Annotated[int, typer.Option(min=1, help="candidate requests per window before it is judged")] = 20,
    max_error_rate: Annotated[float, typer.Option(min=0, max=1, help="candidate error rate (5xx) that fails a window "
                                                  "whatever the stable version does")] = 0.05,
    max_error_rate_increase: Annotated[float, typer.Option(min=0, max=1, help="allowed error rate above the stable "
                                                           "version's")] = 0.02,
    max_latency_ratio: Annotated[float, typer.Option(min=1, help="allowed candidate/stable ratio of the p95 TTFT and "
                                                     "time per output token")] = 1.5,
    max_waits: Annotated[int, typer.Option(min=1, help="windows in a row without enough candidate traffic before "
                                           "giving up (rolled back)")] = 5,
    gateway_admin: Annotated[list[str] | None, typer.Option(
        help="gateway admin URL (repeat per host; e.g. an SSH tunnel to a host's admin port)")] = None,
    engine: Annotated[list[str] | None, typer.Option(
        help="vLLM replica URL behind the gateway (repeat); with several --gateway-admin, GATEWAY_INDEX=URL")] = None,
    admin_key_file: Annotated[Path | None, typer.Option(help="admin key file (else $EXAONE_GATEWAY_ADMIN_KEY)")] = None,
    cache_dir: Annotated[Path, typer.Option(help="where versions are downloaded for the replicas")] =
        Path("/data/lora-adapters"),
    base_config: BaseConfigOpt = None,
    max_rank: MaxRank = 32,
    max_cpu_loras: Annotated[int, typer.Option(min=1, help="the replicas' max_cpu_loras")] = 4,
) -> None:
    """Canary rollout of DOMAIN's VERSION: the candidate takes --canary percent of the alias's requests, then
    --step more after each --interval window in which its error rate and p95 latencies (TTFT, time per output token,
    from the gateways' own per-version metrics) held against the stable version's; at 100 it is promoted. A window
    that does not hold rolls it back (the alias stays on its stable version) and records why. Ctrl-C or SIGTERM end
    the canary the same way. Re-running after an interruption goes on from the registry's canary weight. Each change
    is written to the registry's alias (the desired state) and applied by the reconciler of every gateway given."""
    import asyncio
    import signal

    import httpx

    from service.gateway import EngineClient, GatewayAdmin
    from service.gateway.server import ADMIN_KEY_ENV, read_secret
    from service.reconciler import Reconciler, RegistrySource
    from service.rollout.analysis import Thresholds
    from service.rollout.controller import RolloutController, RolloutError, RolloutSettings
    from service.rollout.hosts import GatewayHost, GatewayHosts, HostsError

    if not gateway_admin:
        raise typer.BadParameter("give --gateway-admin URL (the gateway's admin listener) and its --engine URLs")
    key = read_secret(ADMIN_KEY_ENV, admin_key_file)
    if not key:
        raise typer.BadParameter(f"no admin key: set ${ADMIN_KEY_ENV} or --admin-key-file")
    engines: dict[int, list[str]] = {}
    for item in engine or []:
        index, sep, url = item.partition("=")
        if sep and index.isdigit():
            engines.setdefault(int(index), []).append(url)
        else:
            engines.setdefault(0, []).append(item)
    if set(engines) - set(range(len(gateway_admin))) or len(engines) < len(gateway_admin):
        raise typer.BadParameter("every --gateway-admin needs its --engine URLs (GATEWAY_INDEX=URL with several)")
    settings = RolloutSettings(canary=canary, step=step, interval_s=_duration(interval), shadow=shadow,
                               sticky="user" if sticky_user else None, max_waits=max_waits,
                               thresholds=Thresholds(min_requests=min_requests, max_error_rate=max_error_rate,
                                                     max_error_rate_increase=max_error_rate_increase,
                                                     max_latency_ratio=max_latency_ratio))
    registry = location.open()
    base = str(base_config) if base_config else None

    async def go() -> Any:
        async with httpx.AsyncClient() as client:
            hosts = [GatewayHost(GatewayAdmin(url, key, client),
                                 Reconciler([EngineClient(u, client) for u in engines[i]], GatewayAdmin(url, key, client),
                                            RegistrySource(registry, cache_dir, base, max_rank), max_cpu_loras))
                     for i, url in enumerate(gateway_admin)]
            controller = RolloutController(registry, domain, version, settings, GatewayHosts(registry, hosts),
                                           say=lambda line: console.print(escape(line)))
            task = asyncio.current_task()
            assert task is not None
            # SIGTERM as Ctrl-C: the task is cancelled and the controller ends the canary before exiting.
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
            return await controller.run()

    try:
        result = asyncio.run(go())
    except (RolloutError, HostsError, RegistryError, httpx.HTTPError) as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted[/yellow]: the canary was ended; {domain} stays on its stable version")
        raise typer.Exit(130) from None
    raise typer.Exit(0 if result.state == "promoted" else 3)


@app.command("rollout-status")
@registry_command
def rollout_status(
    location: RegistryLocation,
    domain: Domain,
    as_json: JsonOut = False,
) -> None:
    """The alias's canary now, and the last rollout's record: each window's weight, measurements, verdict and why,
    and the decision (running, promoted, rolled back, aborted)."""
    from service.rollout.record import load

    registry = location.open()
    try:
        state = registry.alias(domain)
        record = load(registry, domain)
    except RegistryError as exc:
        raise _fail(exc) from None
    if as_json:
        _print_json({"alias": state.to_json(), "rollout": record.model_dump(mode="json") if record else None})
        return
    canary = (f"canary v{state.canary.version} at {state.canary.weight} % (shadow {state.canary.shadow} %)"
              if state.canary else "no canary")
    console.print(f"{domain} -> {state.current_name or '(unset)'}, {canary}")
    if record is None:
        console.print("no rollout recorded")
        return
    console.print(f"last rollout: v{record.stable} -> v{record.candidate}: [bold]{record.state}[/bold]"
                  f"{': ' + escape(record.reason) if record.reason else ''}")
    table = Table("weight %", "verdict", "candidate req", "cand. err", "stable err", "cand. TTFT p95", "stable TTFT p95",
                  "reason")

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    for w in record.windows:
        m = w.measurements
        table.add_row(str(w.weight), w.verdict, num(m.get("candidate_requests"), ".0f"),
                      num(m.get("candidate_error_rate"), ".1%"), num(m.get("stable_error_rate"), ".1%"),
                      num(m.get("candidate_ttft_q"), ".3f"), num(m.get("stable_ttft_q"), ".3f"), escape(w.reason))
    console.print(table)


@app.command()
def validate(
    adapter_dir: Annotated[Path, typer.Argument(help="PEFT adapter directory")],
    base_config: BaseConfigOpt = None,
    base_model_name: Annotated[str, typer.Option(help="known base model (used when --base-config is left out)")] =
        "LGAI-EXAONE/EXAONE-3.5-2.4B-Instruct",
    max_rank: MaxRank = 32,
    manifest: Annotated[Path | None, typer.Option(help="manifest.json whose sha256/sizes the files must match")] = None,
    as_json: JsonOut = False,
) -> None:
    """Check an adapter without a registry: exit 0 when it may be served, 2 with the error code when not."""
    try:
        shape = resolve_base_config(base_model_name, base_config)
        parsed = parse_manifest(manifest.read_bytes()) if manifest else None
        result = validate_adapter(adapter_dir, base_config=shape, max_rank=max_rank, manifest=parsed)
    except AdapterValidationError as exc:
        if as_json:
            _print_json({"valid": False, "code": exc.code, "message": exc.message, "path": exc.path,
                         "tensor": exc.tensor})
        raise _fail(exc) from None
    except (BaseConfigError, ValueError, OSError) as exc:
        raise _fail(exc) from None
    if as_json:
        _print_json({"valid": True, "rank": result.rank, "alpha": result.alpha, "dtype": result.dtype,
                     "target_modules": list(result.target_modules), "tensors": result.tensor_count,
                     "files": {k: v.model_dump() for k, v in result.files.items()}})
        return
    console.print(f"[green]valid[/green] rank {result.rank}, alpha {result.alpha:g}, {result.dtype}, "
                  f"{result.tensor_count} tensors on {', '.join(result.target_modules)}")


@app.command()
@registry_command
def download(
    location: RegistryLocation,
    domain: Domain,
    version: Annotated[int, typer.Argument(help="version number")],
    dest: Annotated[Path, typer.Argument(help="directory to create for this version, e.g. /data/lora-adapters/medical-v3")],
    expected_sha256: Annotated[str | None, typer.Option(help="the manifest sha256 the version must have (a pin)")] = None,
    base_config: BaseConfigOpt = None,
    max_rank: Annotated[int | None, typer.Option(help="also validate against this max rank (needs --base-config)")] =
        None,
) -> None:
    """Download a version, verifying every sha256; the directory appears complete or not at all."""
    registry = location.open()
    try:
        path = registry.download(domain, version, dest, expected_manifest_sha256=expected_sha256,
                                 base_config=base_config, max_rank=max_rank)
    except (AdapterValidationError, RegistryError) as exc:
        raise _fail(exc) from None
    console.print(f"[green]downloaded[/green] {domain}-v{version} -> {path}")


__all__ = ["app"]

if __name__ == "__main__":
    app()
