"""Replica choice with more adapters than LoRA slots: the gateway's `scored` policy against `least-outstanding`.

Two CPU vLLM replicas (one core each) with `--max-loras` slots each and more adapters than all slots together,
every adapter loaded on both (vLLM's CPU-side cache holds them all, so the only loads are into slots); the real
gateway (`python -m service.cli gateway --routing P`) in front. The same seeded request sequence is sent through
it under each policy, the policy order alternating pass by pass (a slow spell of the shared machine hits both).
A LoRA slot load is counted from vLLM's own log (`Activating LoRA`, DEBUG level: one line per adapter copied
into a slot), placements from the gateway's `exaone_gateway_replica_requests`. Bounded in requests and seconds,
loopback only.

    .venv/bin/python -m benchmarks.routing_cpu run --out benchmarks/results/routing-cpu.json
    .venv/bin/python -m benchmarks.routing_cpu report          # -> docs/routing-benchmarks.md
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.client import percentile
from benchmarks.suites import git_commit
from exaone_lora.checkpoints import make_adapter, make_checkpoint
from exaone_lora.local.processes import RunningProcess, cpu_slot, free_port, run_process, vllm_server
from service.gateway.scoring import POLICIES

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "test-checkpoints"  # the tests' tiny checkpoints: built once per machine, reused
ADMIN_KEY = "benchmark-admin-key-0123456789"  # a throwaway key for a gateway that only ever listens on loopback
SLOT_LOAD_LINE = "Activating LoRA"  # vllm/lora/model_manager.py, logged once per adapter copied into a slot
MACHINE_NOTE = ("a shared machine: 2 CPU cores, also running other jobs; one vLLM replica pinned per core, the "
                "gateway and the client unpinned")


@dataclass(frozen=True)
class Config:
    adapters: int = 6
    max_loras: int = 2
    requests: int = 120
    concurrency: int = 6
    max_tokens: int = 16
    passes: int = 3
    seed: int = 7
    deadline_s: float = 300.0  # one policy's run at most

    def check(self) -> None:
        if self.adapters <= 2 * self.max_loras:
            raise ValueError(f"--adapters ({self.adapters}) must exceed the slots of both replicas "
                             f"(2 x --max-loras = {2 * self.max_loras}): that is the case the benchmark is about")
        if not (1 <= self.concurrency <= 64 and 1 <= self.requests <= 5000 and 1 <= self.passes <= 10):
            raise ValueError("--concurrency 1-64, --requests 1-5000, --passes 1-10")


def alias(i: int) -> str:
    return f"d{i}"


def version(i: int) -> str:
    return f"d{i}-v1"


def request_sequence(config: Config) -> list[int]:
    """The adapter index of each request: seeded, identical for both policies. Skewed like real traffic (a few
    adapters take most requests, every adapter some) so that which adapters share a replica matters."""
    rng = random.Random(config.seed)
    weights = [1 / (i + 1) for i in range(config.adapters)]
    return rng.choices(range(config.adapters), weights=weights, k=config.requests)


def slot_loads(log: Path) -> int:
    return log.read_text(errors="replace").count(SLOT_LOAD_LINE)


async def send(url: str, sequence: list[int], config: Config) -> dict[str, Any]:
    """`concurrency` clients, each sending the next request of the sequence when its last one is answered."""
    queue = list(enumerate(sequence))
    queue.reverse()
    latencies: list[float] = []
    failures: list[str] = []
    deadline = time.monotonic() + config.deadline_s

    async def worker(client: httpx.AsyncClient) -> None:
        while queue and time.monotonic() < deadline:
            index, adapter = queue.pop()
            body = {"model": alias(adapter), "prompt": f"Request {index}:", "max_tokens": config.max_tokens,
                    "temperature": 0, "ignore_eos": True}
            start = time.perf_counter()
            try:
                response = await client.post(f"{url}/v1/completions", json=body)
            except httpx.HTTPError as exc:
                failures.append(type(exc).__name__)
                continue
            if response.status_code == 200:
                latencies.append(time.perf_counter() - start)
            else:
                failures.append(f"HTTP {response.status_code}")

    start = time.monotonic()
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0)) as client:
        await asyncio.gather(*(worker(client) for _ in range(config.concurrency)))
    wall = time.monotonic() - start

    def ms(q: float) -> float | None:
        value = percentile(latencies, q)
        return None if value is None else value * 1e3

    return {"requests_ok": len(latencies), "requests_failed": len(failures) + len(queue),
            "errors": sorted(set(failures)), "wall_s": wall,
            "latency_ms": {"p50": ms(50), "p90": ms(90), "p99": ms(99), "max": ms(100)}}


def placements(metrics_text: str) -> dict[str, dict[str, int]]:
    """version -> replica index -> requests, from the gateway's own counter."""
    out: dict[str, dict[str, int]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "exaone_gateway_replica_requests_total":
                out.setdefault(sample.labels["version"], {})[sample.labels["replica"]] = int(sample.value)
    return out


@contextmanager
def gateway(upstreams: list[str], policy: str, adapters: int, log: Path) -> Iterator[tuple[str, str]]:
    port, admin = free_port(), free_port()
    cmd = [sys.executable, "-m", "service.cli", "gateway", "--port", str(port), "--admin-port", str(admin),
           "--served-name", "exaone", "--routing", policy]
    for url in upstreams:
        cmd += ["--upstream", url]
    for i in range(adapters):
        cmd += ["--alias", f"{alias(i)}={version(i)}"]
    env = {"PYTHONPATH": str(REPO), "EXAONE_GATEWAY_ADMIN_KEY": ADMIN_KEY}
    with run_process(cmd, log, f"http://127.0.0.1:{port}/health", 60, env=env, cwd=REPO):
        public, private = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
        served = {m["id"] for m in httpx.get(f"{public}/v1/models", timeout=10).json()["data"]}
        missing = {alias(i) for i in range(adapters)} - served
        if missing:
            raise RuntimeError(f"the gateway did not switch aliases {sorted(missing)} at start-up: see {log}")
        yield public, private


def run_policy(upstreams: list[str], logs: list[Path], policy: str, sequence: list[int], config: Config,
               gateway_log: Path) -> dict[str, Any]:
    with gateway(upstreams, policy, config.adapters, gateway_log) as (public, admin):
        before = [slot_loads(log) for log in logs]
        result = asyncio.run(send(public, sequence, config))
        result["slot_loads"] = [slot_loads(log) - b for log, b in zip(logs, before, strict=True)]
        placed = placements(httpx.get(f"{admin}/metrics", timeout=10).text)
    result["policy"] = policy
    result["slot_loads_total"] = sum(result["slot_loads"])
    result["placements"] = placed
    result["replicas_per_adapter"] = statistics.mean(len(v) for v in placed.values()) if placed else None
    return result


def measure(config: Config, logs_dir: Path) -> dict[str, Any]:
    config.check()
    base = make_checkpoint(CACHE / "exaone-tiny", "tiny", seed=0)
    paths = {version(i): make_adapter(base, CACHE / f"lora-route-{i}", rank=8, seed=100 + i)
             for i in range(config.adapters)}
    sequence = request_sequence(config)
    passes: list[dict[str, Any]] = []
    with ExitStack() as stack:
        replicas: list[RunningProcess] = []
        logs = [logs_dir / f"vllm-replica-{r}.log" for r in range(2)]
        for r, log in enumerate(logs):
            replicas.append(stack.enter_context(vllm_server(
                base.path, log, max_loras=config.max_loras, max_cpu_loras=config.adapters, cpu=cpu_slot(r),
                extra_env={"VLLM_LOGGING_LEVEL": "DEBUG"})))
        upstreams = [p.url for p in replicas]
        for url in upstreams:
            for name, path in paths.items():
                answer = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)},
                                    timeout=120)
                answer.raise_for_status()
        for index in range(config.passes):
            order = list(POLICIES) if index % 2 == 0 else list(reversed(POLICIES))
            runs = [run_policy(upstreams, logs, policy, sequence, config, logs_dir / f"gateway-{index}-{policy}.log")
                    for policy in order]
            for run in runs:
                typer.echo(f"  pass {index} {run['policy']:>17}: {run['slot_loads_total']:4d} slot loads, p50 "
                           f"{run['latency_ms']['p50'] or 0:7.1f} ms, p99 {run['latency_ms']['p99'] or 0:7.1f} ms, "
                           f"{run['requests_failed']} failed", err=True)
            passes.append({"pass": index, "order": order, "runs": runs})
    return {"config": config.__dict__, "sequence_counts": [sequence.count(i) for i in range(config.adapters)],
            "passes": passes, "summary": summarize(passes)}


def summarize(passes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per policy: the median over passes of each pass's number (and its range)."""
    out: dict[str, dict[str, Any]] = {}
    runs = [run for p in passes for run in p["runs"]]
    for policy in sorted({r["policy"] for r in runs}):
        mine = [r for r in runs if r["policy"] == policy]

        def spread(values: list[float]) -> dict[str, float]:
            return {"median": statistics.median(values), "min": min(values), "max": max(values)}
        out[policy] = {"passes": len(mine),
                       "slot_loads": spread([r["slot_loads_total"] for r in mine]),
                       "p50_ms": spread([r["latency_ms"]["p50"] for r in mine if r["latency_ms"]["p50"] is not None]),
                       "p99_ms": spread([r["latency_ms"]["p99"] for r in mine if r["latency_ms"]["p99"] is not None]),
                       "replicas_per_adapter": statistics.median(r["replicas_per_adapter"] for r in mine
                                                                 if r["replicas_per_adapter"] is not None),
                       "failed": sum(r["requests_failed"] for r in mine),
                       "requests": sum(r["requests_ok"] + r["requests_failed"] for r in mine)}
    return out


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def render_report(result: dict[str, Any], preface: str) -> str:
    c = result["config"]
    lines = [preface.rstrip(), "", "## Results", "",
             f"{c['adapters']} adapters, {c['max_loras']} LoRA slots per replica, 2 replicas; {c['requests']} requests "
             f"per run ({c['concurrency']} concurrent clients, {c['max_tokens']} tokens each, the same seeded sequence "
             f"for both policies), {c['passes']} passes alternating the policy order. Commit `{result['commit']}`, "
             f"{result['cpu']}: {result['machine']}." + (f" Note: {result['note']}." if result.get("note") else ""), "",
             "| policy | LoRA slot loads, median [range] | replicas per adapter | p50 latency (ms), median [range] | "
             "p99 latency (ms), median [range] | failed / requests |",
             "|---|---|---|---|---|---|"]

    def cell(s: dict[str, float], fmt: str) -> str:
        return f"{s['median']:{fmt}} [{s['min']:{fmt}}–{s['max']:{fmt}}]"
    for policy, s in result["summary"].items():
        lines.append(f"| `{policy}` | {cell(s['slot_loads'], '.0f')} | {s['replicas_per_adapter']:.2f} | "
                     f"{cell(s['p50_ms'], '.0f')} | {cell(s['p99_ms'], '.0f')} | {s['failed']} / {s['requests']} |")
    lines += ["", "Per pass (slot loads per replica; p50 / p99 ms):", ""]
    for p in result["passes"]:
        parts = [f"`{r['policy']}` {r['slot_loads']} {r['latency_ms']['p50'] or 0:.0f} / {r['latency_ms']['p99'] or 0:.0f}"
                 for r in p["runs"]]
        lines.append(f"- pass {p['pass']}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


app = typer.Typer(help="Replica choice under more adapters than LoRA slots, on two CPU vLLM replicas.",
                  no_args_is_help=True)


@app.command()
def run(
    out: Annotated[Path, typer.Option(help="JSON file to write")] = REPO / "benchmarks" / "results" / "routing-cpu.json",
    adapters: Annotated[int, typer.Option(help="adapters (more than 2 x --max-loras)")] = Config.adapters,
    max_loras: Annotated[int, typer.Option(help="LoRA slots per replica (vLLM --max-loras)")] = Config.max_loras,
    requests: Annotated[int, typer.Option(help="requests per policy per pass")] = Config.requests,
    concurrency: Annotated[int, typer.Option(help="concurrent clients")] = Config.concurrency,
    max_tokens: Annotated[int, typer.Option(help="tokens generated per request")] = Config.max_tokens,
    passes: Annotated[int, typer.Option(help="passes (each runs both policies)")] = Config.passes,
    seed: Annotated[int, typer.Option(help="seed of the request sequence")] = Config.seed,
    logs: Annotated[Path | None, typer.Option(help="folder for the replicas' and gateways' logs")] = None,
) -> None:
    """Run both policies on the same request sequence; write the JSON (loopback only, bounded)."""
    config = Config(adapters, max_loras, requests, concurrency, max_tokens, passes, seed)
    try:
        config.check()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    with tempfile.TemporaryDirectory(prefix="routing-cpu-") as scratch:
        result = measure(config, logs or Path(scratch))
    result |= {"commit": git_commit(str(REPO)), "cpu": _cpu_name(), "cores": os.cpu_count(), "machine": MACHINE_NOTE,
               "python": sys.version.split()[0]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    typer.echo(str(out), err=True)


@app.command()
def report(
    result: Annotated[Path, typer.Option(help="JSON of `run`")] = REPO / "benchmarks" / "results" / "routing-cpu.json",
    out: Annotated[Path, typer.Option(help="Markdown file to write")] = REPO / "docs" / "routing-benchmarks.md",
    preface: Annotated[Path, typer.Option(help="analysis text put above the tables")] =
        REPO / "benchmarks" / "routing_preface.md",
) -> None:
    """Write the replica-choice report from the JSON."""
    if not result.is_file():
        raise typer.BadParameter(f"no {result}: run `python -m benchmarks.routing_cpu run` first")
    out.write_text(render_report(json.loads(result.read_text()), preface.read_text()))
    typer.echo(str(out), err=True)


if __name__ == "__main__":
    app()
