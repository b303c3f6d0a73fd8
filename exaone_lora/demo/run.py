"""The local end-to-end demo: every part of the product, for real, on one machine without Azure or a GPU.

1 plan the poc stack (capacity + the Azure resources under Pulumi's mock runtime + the policy verdict);
2 stand up the `dev` stack: Azurite as Blob, a booted systemd test host over SSH as the "VM";
3 train two tiny adapters with `training/`, publish them to the registry (v1; medical also v2);
4 provision the host with the Fabric task code: bootstrap (CPU path), install-service, deploy-adapters;
5 OpenAI-SDK requests for the base model and each alias through the gateway;
6 deploy medical v2 while a bounded client loop runs, then roll back: zero failed requests;
7 canary medical v2 10 % -> 100 % under load (`fab rollout-adapters`' code): judged on the gateway's metrics, promoted;
8 per-alias metrics from the gateway; 9 the seed's 8-step lifecycle against the engine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from rich.console import Console
from rich.table import Table

from exaone_lora.capacity import plan_capacity
from exaone_lora.demo.report import DemoReport
from exaone_lora.demo.sample_data import write_domain
from exaone_lora.demo.traffic import BoundedTraffic
from exaone_lora.local.processes import REPO, azurite
from exaone_lora.spec import DeploymentSpec, load_spec

if TYPE_CHECKING:
    from fabric import Connection

    from service.registry_location import RegistrySettings

DOMAINS = ("medical", "legal")


@dataclass
class DemoOptions:
    root: Path = REPO
    stack: str = "dev"
    plan_stack: str = "poc"
    workdir: Path = REPO / ".cache" / "demo"
    keep: bool = False
    train_steps: int = 6
    samples: int = 24
    traffic_seconds: float = 40.0
    traffic_workers: int = 3
    facts: dict[str, object] = field(default_factory=dict)

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"


class DemoError(RuntimeError):
    """A demo step whose result is wrong (not a crash): the message says what was expected."""


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_ports(spec: DeploymentSpec) -> None:
    ports = [spec.port, spec.gateway.engine_port, spec.gateway.admin_port, spec.monitoring.prometheus_port,
             spec.monitoring.alertmanager.port]
    busy = [p for p in ports if not _port_free(p)]
    if busy:
        raise DemoError(f"ports {busy} on 127.0.0.1 are in use; the {spec.stack} stack needs {ports} "
                        "(a kept demo? run with --down first)")


# ---- 1: plan --------------------------------------------------------------------------------------------


def step_plan(options: DemoOptions, report: DemoReport, console: Console) -> None:
    from exaone_lora.capacity_table import capacity_table
    from infra.preview import policy_verdict, preview_stack

    spec = load_spec(options.plan_stack, options.root)
    plan = plan_capacity(spec).check()
    console.print(capacity_table(plan, f"Capacity plan: stack {spec.stack} ({spec.tier}, {spec.vm_sku})"))
    rows = preview_stack(options.plan_stack, options.root)
    table = Table(title=f"Azure resources `pulumi up -s {options.plan_stack}` would create (Pulumi mock runtime)")
    for column in ("type", "name", "key settings"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.type.removeprefix("azure-native:"), row.name,
                      ", ".join(f"{k}={v}" for k, v in row.settings.items()))
    console.print(table)
    verdict = policy_verdict(rows, spec)
    console.print(verdict.summary())
    if not verdict.passed:
        raise DemoError(verdict.summary())
    report.facts["azure_resources"] = len(rows)
    report.facts["kv_tokens_per_gpu"] = plan.kv_tokens_per_gpu


# ---- 3: train and publish -------------------------------------------------------------------------------


def step_train(options: DemoOptions, registry: object, report: DemoReport, console: Console) -> dict[str, int]:
    from exaone_lora.checkpoints import make_checkpoint
    from training.export import publish_run
    from training.sft import SFTConfig, train

    checkpoint = make_checkpoint(options.workdir / "model" / "exaone-tiny", "tiny", seed=0)
    spec = load_spec(options.stack, options.root)
    published: dict[str, int] = {}
    # medical is trained twice (two data seeds) so that there is a v2 to deploy and roll back.
    runs = [("medical", 0), ("legal", 0), ("medical", 1)]
    for domain, seed in runs:
        data = write_domain(domain, options.workdir / "data" / f"{domain}-{seed}.jsonl", options.samples, seed=seed)
        config = SFTConfig(rank=spec.max_lora_rank, alpha=2 * spec.max_lora_rank, max_steps=options.train_steps,
                           micro_batch=4, grad_accum=1, max_length=256, seed=seed, eval_fraction=0.125, device="cpu",
                           # A few steps only: a higher rate than the seed's 2e-4 makes the drop in loss visible.
                           learning_rate=1e-3, warmup_ratio=0.0)
        run_dir = options.workdir / "runs" / f"{domain}-{seed}"
        shutil.rmtree(run_dir, ignore_errors=True)  # the registry is new each run: so are its versions
        result = train(checkpoint.path, data, run_dir, config, resume=False,
                       base_model_name=spec.model.name, base_model_revision=spec.model.revision)
        manifest = publish_run(result.out_dir, registry, domain=domain, max_rank=spec.max_lora_rank)
        published[manifest.name] = manifest.version
        first, final = result.first_loss, result.final_loss
        console.print(f"trained {domain} (data seed {seed}): loss {first:.3f} -> {final:.3f} in {result.steps} steps; "
                      f"published {manifest.name}")
        if not final < first:
            raise DemoError(f"{domain}: training loss did not go down ({first:.3f} -> {final:.3f})")
    report.facts["published"] = sorted(published)
    report.facts["checkpoint"] = str(checkpoint.path)
    return published


# ---- 5-8: serve -----------------------------------------------------------------------------------------


def chat(base_url: str, model: str) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=os.environ.get("EXAONE_API_KEY", "demo-no-key"), max_retries=0)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello!"}],
                                           max_tokens=8, temperature=0)
    return reply.model


def gateway_series(base: str) -> dict[tuple[str, str], float]:
    """exaone_gateway_requests_total summed by (alias, version), from the gateway's own /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics", timeout=10).text):
        if family.name != "exaone_gateway_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = (sample.labels["alias"], sample.labels["version"])
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def prometheus_up(port: int, timeout: float = 60) -> dict[str, bool]:
    """`up` per job from the host's Prometheus, once it has scraped every job (its first scrape takes a while)."""
    deadline = time.monotonic() + timeout
    jobs: dict[str, bool] = {}
    while time.monotonic() < deadline:
        data = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": "up"}, timeout=10).json()
        jobs = {r["metric"]["job"]: r["value"][1] == "1" for r in data["data"]["result"]}
        if {"exaone-vllm", "exaone-gateway"} <= set(jobs) and all(jobs.values()):
            break
        time.sleep(2)
    return jobs


# ---- keep / down ----------------------------------------------------------------------------------------


def down(options: DemoOptions, console: Console) -> bool:
    """Stop a kept demo (the processes recorded in the state file); True if something was running."""
    if not options.state_file.exists():
        return False
    state = json.loads(options.state_file.read_text())
    for name, pid in state.get("pids", {}).items():
        try:
            os.killpg(pid, signal.SIGTERM)
            console.print(f"stopping {name} (pid {pid})")
        except ProcessLookupError:
            continue
        for _ in range(60):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.5)
    options.state_file.unlink()
    return True


def _record_state(options: DemoOptions, pids: dict[str, int], spec: DeploymentSpec, extra: dict[str, object]) -> None:
    options.state_file.parent.mkdir(parents=True, exist_ok=True)
    state = {"pids": pids, "api": f"http://127.0.0.1:{spec.port}/v1", **extra}
    options.state_file.write_text(json.dumps(state, indent=2))


def step_canary(options: DemoOptions, conn: Connection, spec: DeploymentSpec, ref: RegistrySettings, api: str,
                report: DemoReport, console: Console) -> None:
    """medical v2 as a canary at 10 %, then 55 %, then promoted, under a bounded client loop on `medical`; each
    window is judged on the gateway's own per-version metrics. Short windows: the demo shows the mechanism, a
    real rollout judges minutes (`--interval 60`)."""
    from provisioning.rollout import rollout_adapters
    from service.rollout.analysis import Thresholds
    from service.rollout.controller import RolloutSettings

    settings = RolloutSettings(canary=10, step=45, interval_s=4.0, max_waits=10,
                               thresholds=Thresholds(min_requests=3, max_latency_ratio=5.0, latency_slack_s=1.0))
    with BoundedTraffic(api, "demo-no-key", ["medical"], workers=options.traffic_workers, max_requests=2000,
                        max_seconds=180) as traffic:
        record = rollout_adapters([conn], spec, ref, "medical", 2, settings, report=console.print)
    outcome = traffic.result
    report.facts["canary"] = {"state": record.state, "windows": [f"{w.weight} %: {w.verdict}" for w in record.windows],
                              "requests": outcome.total, "failed": outcome.failures}
    if record.state != "promoted":
        raise DemoError(f"the canary of medical v2 was not promoted: {record.state}: {record.reason}")
    if outcome.failures or not outcome.total:
        raise DemoError(f"requests failed during the canary: {outcome.errors[:5]}")


def run_demo(options: DemoOptions, console: Console, report: DemoReport | None = None) -> DemoReport:
    """Run every step; raises on the first failure (the report says which step), stops everything unless --keep."""
    from exaone_lora.local.testhost import boot_testhost
    from provisioning.adapters import deploy_adapters
    from provisioning.bootstrap import bootstrap
    from provisioning.monitoring import install_monitoring
    from provisioning.units import install_service
    from service.lifecycle import run_lifecycle
    from service.registry import AdapterRegistry
    from service.registry_location import RegistrySettings
    from service.replicas import replica_urls

    report = report or DemoReport(console)
    options.workdir.mkdir(parents=True, exist_ok=True)
    if down(options, console):
        console.print("a kept demo was running: stopped it first")
    spec = load_spec(options.stack, options.root)
    check_ports(spec)

    with report.step("1 plan: capacity, Azure resources (mock runtime), policy"):
        step_plan(options, report, console)

    with ExitStack() as stack:
        with report.step("2 local stack: Azurite + systemd test host over SSH") as result:
            blob = stack.enter_context(azurite(options.workdir / "azurite", options.workdir / "logs" / "azurite.log"))
            host = stack.enter_context(boot_testhost(options.workdir / "host", options.workdir / "logs" / "testhost.log"))
            registry = AdapterRegistry.from_connection_string(blob.connection_string)
            registry.ensure_container()
            result.detail = f"Blob {blob.blob_url}, ssh root@127.0.0.1:{host.port}"

        with report.step("3 train two adapters, publish to the registry") as result:
            published = step_train(options, registry, report, console)
            result.detail = ", ".join(sorted(published))

        conn = host.connection
        with report.step("4 provision: bootstrap, install-service, install-monitoring, deploy-adapters") as result:
            checkpoint = Path(str(report.facts["checkpoint"]))
            changes = bootstrap(conn, spec, wheelhouse=host.wheelhouse, model_path=checkpoint, report=console.print)
            changes += install_service(conn, spec, health_timeout=600)
            changes += install_monitoring(conn, spec)
            # The registry's alias is the desired state; the reconciler on the host pulls and switches.
            ref = RegistrySettings(blob.connection_string, spec.storage.container)
            for domain in DOMAINS:
                changes += deploy_adapters(conn, spec, ref, [domain], version=1, report=console.print)
            result.detail = f"{sum(c.changed for c in changes)} changes"

        api = f"http://127.0.0.1:{spec.port}/v1"
        with report.step("5 OpenAI SDK: base model and each alias through the gateway") as result:
            answered = {model: chat(api, model) for model in (spec.model.served_name, *DOMAINS)}
            wrong = {m: a for m, a in answered.items() if a != m}
            if wrong:
                raise DemoError(f"the gateway answered as another model: {wrong}")
            result.detail = ", ".join(answered)

        with report.step("6 deploy medical v2 under load, then roll back") as result:
            models = [spec.model.served_name, *DOMAINS]
            with BoundedTraffic(api, "demo-no-key", models, workers=options.traffic_workers,
                                max_requests=2000, max_seconds=options.traffic_seconds) as traffic:
                deploy_adapters(conn, spec, ref, ["medical"], version=2, report=console.print)
                time.sleep(2)
                deploy_adapters(conn, spec, ref, ["medical"], rollback=True, report=console.print)
                time.sleep(2)
            outcome = traffic.result
            report.facts["traffic"] = {"ok": dict(outcome.ok), "failed": dict(outcome.failed), "errors": outcome.errors,
                                       "seconds": round(outcome.seconds, 1)}
            result.detail = f"{outcome.total} requests in {outcome.seconds:.0f} s, {outcome.failures} failed"
            if outcome.failures or not outcome.total:
                raise DemoError(f"requests failed during the deploy: {outcome.errors[:5]}")

        with report.step("7 canary medical v2 10 % -> 100 % under load") as result:
            step_canary(options, conn, spec, ref, api, report, console)
            result.detail = str(report.facts["canary"])

        with report.step("8 per-alias metrics from the gateway") as result:
            series = gateway_series(f"http://127.0.0.1:{spec.gateway.admin_port}")
            table = Table(title="exaone_gateway_requests_total")
            table.add_column("alias")
            table.add_column("version")
            table.add_column("requests", justify="right")
            for (alias, version), value in sorted(series.items()):
                table.add_row(alias, version, f"{value:.0f}")
            console.print(table)
            versions = {v for (a, v) in series if a == "medical"}
            if not {"1", "2"} <= {v.removeprefix("medical-v").removeprefix("v") for v in versions}:
                raise DemoError(f"expected traffic on medical v1 and v2, saw versions {sorted(versions)}")
            report.facts["gateway_series"] = {f"{a}@{v}": n for (a, v), n in series.items()}
            up = prometheus_up(spec.monitoring.prometheus_port)
            report.facts["prometheus_up"] = up
            if not up or not all(up.values()):
                raise DemoError(f"the host's Prometheus does not see every target up: {up}")
            result.detail = f"{len(series)} alias/version series; Prometheus targets up: {', '.join(sorted(up))}"

        with report.step("9 the seed's 8-step lifecycle against the engine") as result:
            engine = replica_urls(spec)[0]
            adapters = {d: Path(f"/data/lora-adapters/{d}-v1") for d in DOMAINS}
            lifecycle = run_lifecycle(engine, adapters, served_name=spec.model.served_name)
            report.facts["lifecycle"] = lifecycle
            if not lifecycle.get("passed"):
                raise DemoError(f"lifecycle failed: {json.dumps(lifecycle)[:500]}")
            result.detail = "8/8 steps passed"

        if options.keep:
            blob.detach()
            host.detached = True
            _record_state(options, {"azurite": blob.pid, "testhost": host.pid}, spec,
                          {"ssh": f"ssh -p {host.port} -i {host.key} root@127.0.0.1",
                           "blob_connection_string": blob.connection_string})
    return report
