"""What the gateway costs per streamed token: CPU time of the gateway process per chunk it forwards.

On the GPU the gateway was the throughput limit at high concurrency (one Python process re-sending every SSE
chunk: ~8-10k tok/s through it vs 13k direct, docs/benchmarks.md). That cost does not need a GPU to measure:
a stand-in replica (`benchmarks.sse_upstream`) streams vLLM's exact chunks at a fixed token interval, the real
gateway (`python -m service.cli gateway`, from any source folder, so two commits can be compared) sits in
front, and a lean raw-socket client keeps N streams open through it. The gateway process's own CPU seconds
(/proc) over the chunks it forwarded is the number: it does not depend on how busy the rest of the machine is,
unlike the throughput a small machine reaches. Every load is bounded in requests and seconds, on 127.0.0.1.

    .venv-vllm/bin/python -m benchmarks.gateway_cpu run --label this --out benchmarks/results/gateway-cpu-this.json
    .venv/bin/python -m benchmarks.gateway_cpu report          # -> docs/gateway-benchmarks.md
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from benchmarks.client import percentile
from benchmarks.sse_upstream import header_fields
from exaone_lora.local.processes import free_port, run_process
from service.served import git_commit

ADMIN_KEY = "benchmark-admin-key-0123456789"  # a throwaway key for a gateway that only ever listens on loopback
ALIAS, VERSION = "medical", "medical-v1"
REPO = Path(__file__).resolve().parents[1]


@dataclass
class StreamStats:
    ok: bool
    events: int = 0
    first_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    error: str | None = None


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    return status, header_fields(head[1:])


async def one_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, body: bytes) -> StreamStats:
    """One streamed completion on an open keep-alive connection; counts `data:` events as they arrive."""
    start = time.monotonic()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1:%d\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\n\r\n%s" % (port, len(body), body))
    await writer.drain()
    status, headers = await _read_head(reader)
    if status != 200:
        await reader.readexactly(int(headers.get("content-length", "0")))
        return StreamStats(False, error=f"HTTP {status}")
    stats = StreamStats(True)
    last = None
    while True:
        size = int((await reader.readline()).strip(), 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            return stats
        now = time.monotonic()
        # Token chunks only: not `[DONE]`, nor vLLM's usage chunk (no choices), which the gateway drops.
        events = data.count(b"data: ") - data.count(b"data: [DONE]") - data.count(b'"choices":[]')
        if events:
            stats.events += events
            if stats.first_s is None:
                stats.first_s = now - start
            elif last is not None:
                stats.gaps_s.append(now - last)
            last = now


async def run_load(port: int, model: str, streams: int, requests: int, tokens: int, deadline_s: float) -> dict[str, Any]:
    """`streams` connections, each sending streamed requests one after another, `requests` in all."""
    body = json.dumps({"model": model, "prompt": "Hello", "max_tokens": tokens, "stream": True}).encode()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    results: list[StreamStats] = []
    deadline = time.monotonic() + deadline_s

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty() and time.monotonic() < deadline:
                queue.get_nowait()
                try:
                    results.append(await asyncio.wait_for(one_stream(reader, writer, port, body),
                                                          max(0.1, deadline - time.monotonic())))
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                    results.append(StreamStats(False, error=type(exc).__name__))
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(streams)))
    wall = time.monotonic() - start
    gaps = [g for r in results for g in r.gaps_s]
    firsts = [r.first_s for r in results if r.first_s is not None]
    events = sum(r.events for r in results)

    def ms(values: list[float], q: float) -> float | None:
        value = percentile(values, q)
        return None if value is None else value * 1e3

    return {"requests_ok": sum(r.ok and r.events == tokens for r in results),
            "requests_failed": sum(not r.ok or r.events != tokens for r in results),
            "errors": sorted({r.error for r in results if r.error}), "events": events, "wall_s": wall,
            "events_per_s": events / wall if wall else 0.0,
            "itl_ms": {"p50": ms(gaps, 50), "p99": ms(gaps, 99)} if gaps else None,
            "first_event_ms_p50": ms(firsts, 50)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(gateway_src: Path, streams_levels: list[int], interval_ms: float, tokens: int, requests_per_stream: int,
            deadline_s: float, gateway_args: list[str], rounds: int = 1, python: str = sys.executable,
            logs: Path | None = None) -> dict[str, Any]:
    """Each level `rounds` times (levels interleaved, so a slow spell of the machine hits every level alike).
    The two servers' output goes to `logs` (default: a temporary folder)."""
    up_port, gw_port, admin_port = free_port(), free_port(), free_port()
    env = {"PYTHONPATH": str(REPO), "EXAONE_GATEWAY_ADMIN_KEY": ADMIN_KEY}
    levels = []
    with tempfile.TemporaryDirectory(prefix="gateway-cpu-") as scratch, \
         run_process([python, "-m", "benchmarks.sse_upstream", "--port", str(up_port), "--interval-ms", str(interval_ms),
                      "--adapter", VERSION], (logs or Path(scratch)) / "stand-in.log",
                     f"http://127.0.0.1:{up_port}/health", 60, env=env, cwd=REPO) as up, \
         run_process([python, "-m", "service.cli", "gateway", "--upstream", f"http://127.0.0.1:{up_port}", "--port",
                      str(gw_port), "--admin-port", str(admin_port), "--alias", f"{ALIAS}={VERSION}", *gateway_args],
                     (logs or Path(scratch)) / "gateway.log", f"http://127.0.0.1:{gw_port}/health", 60,
                     env={**env, "PYTHONPATH": str(gateway_src)}, cwd=gateway_src) as gw:
        asyncio.run(run_load(gw_port, ALIAS, 2, 4, tokens, deadline_s))  # warm-up: connections, first imports
        for round_index in range(rounds):
            for streams in streams_levels:
                requests = streams * requests_per_stream
                level: dict[str, Any] = {"streams": streams, "round": round_index, "requests": requests,
                                         "offered_events_per_s": streams * 1000 / interval_ms if interval_ms else None}
                # The same load straight to the replica: what the client and the replica alone reach here.
                level["direct"] = asyncio.run(run_load(up_port, VERSION, streams, requests, tokens, deadline_s))
                stats0 = httpx.get(f"http://127.0.0.1:{up_port}/stats").json()
                cpu0, up0, t0 = cpu_seconds(gw.pid), cpu_seconds(up.pid), time.monotonic()
                level["gateway"] = asyncio.run(run_load(gw_port, ALIAS, streams, requests, tokens, deadline_s))
                cpu, wall = cpu_seconds(gw.pid) - cpu0, time.monotonic() - t0
                stats = httpx.get(f"http://127.0.0.1:{up_port}/stats").json()
                # New TCP connections the gateway opened to the replica for this level's requests (reuse: ~0).
                level["gateway_new_upstream_connections"] = stats["connections"] - stats0["connections"] - 1
                forwarded = max(1, level["gateway"]["events"])
                level["gateway_cpu_s"] = cpu
                level["gateway_cpu_share"] = cpu / wall  # 1.0 = one core fully busy: the gateway is the limit
                level["gateway_cpu_us_per_event"] = cpu / forwarded * 1e6
                level["replica_cpu_us_per_event"] = (cpu_seconds(up.pid) - up0) / forwarded * 1e6
                levels.append(level)
                typer.echo(f"  {streams:4d} streams: gateway {level['gateway']['events_per_s']:8.0f} ev/s, "
                           f"{level['gateway_cpu_us_per_event']:6.1f} us CPU/event, CPU share "
                           f"{level['gateway_cpu_share']:.2f}, {level['gateway_new_upstream_connections']} new upstream "
                           f"connections; direct {level['direct']['events_per_s']:8.0f} ev/s", err=True)
    return {"interval_ms": interval_ms, "tokens": tokens, "requests_per_stream": requests_per_stream, "rounds": rounds,
            "levels": levels}


def _runtime() -> dict[str, str | None]:
    """Versions of what the gateway's per-token path runs on (the gateway runs with this same interpreter)."""
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {d: version(d) for d in ("uvicorn", "httptools", "starlette", "aiohttp", "httpx", "httpcore")}


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


app = typer.Typer(help="The gateway's CPU cost per streamed token, against a stand-in replica (no GPU).",
                  no_args_is_help=True)


@app.command()
def run(
    label: Annotated[str, typer.Option(help="name of this run in the report, e.g. the commit or the change")],
    out: Annotated[Path, typer.Option(help="JSON file to write (benchmarks/results/gateway-cpu-LABEL.json)")],
    gateway_src: Annotated[Path, typer.Option(help="source folder whose service/ gateway runs (e.g. a git worktree "
                                                   "of another commit)")] = REPO,
    streams: Annotated[str, typer.Option(help="comma list of concurrent streams")] = "16,64,128",
    interval_ms: Annotated[float, typer.Option(help="time between two tokens of one stream at the replica")] = 6.0,
    tokens: Annotated[int, typer.Option(help="tokens per request")] = 128,
    requests_per_stream: Annotated[int, typer.Option(help="requests each stream sends, one after another")] = 3,
    rounds: Annotated[int, typer.Option(help="times each level is measured")] = 3,
    deadline_s: Annotated[float, typer.Option(help="upper bound on one load's duration")] = 120.0,
    gateway_arg: Annotated[list[str] | None, typer.Option(help="extra argument for `service.cli gateway` (repeat), "
                                                          "e.g. --gateway-arg=--served-name=exaone")] = None,
) -> None:
    """Measure the gateway's CPU per forwarded token chunk against a stand-in replica (loopback only)."""
    levels = [int(s) for s in streams.split(",") if s.strip()]
    if not levels or min(levels) < 1 or max(levels) > 512:
        raise typer.BadParameter("--streams takes 1 to 512 streams per level, e.g. 16,64,128")
    if not (gateway_src / "service" / "gateway").is_dir():
        raise typer.BadParameter(f"{gateway_src} has no service/gateway: give a checkout of this project")
    typer.echo(f"gateway from {gateway_src} ({label})", err=True)
    result = measure(gateway_src.resolve(), levels, interval_ms, tokens, requests_per_stream, deadline_s,
                     gateway_arg or [], rounds)
    result |= {"label": label, "gateway_args": gateway_arg or [], "gateway_src_commit": git_commit(str(gateway_src)),
               "cpu": _cpu_name(), "cores": os.cpu_count(), "python": sys.version.split()[0],
               "runtime": _runtime()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    typer.echo(str(out), err=True)


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per stream level: the median over rounds, with the range of the CPU cost."""
    rows = []
    for streams in sorted({lv["streams"] for lv in result["levels"]}):
        runs = [lv for lv in result["levels"] if lv["streams"] == streams]
        cpu = [lv["gateway_cpu_us_per_event"] for lv in runs]
        itl = [lv["gateway"]["itl_ms"]["p50"] for lv in runs if lv["gateway"]["itl_ms"]]
        rows.append({"label": result["label"], "streams": streams, "rounds": len(runs),
                     "cpu_us": statistics.median(cpu), "cpu_us_min": min(cpu), "cpu_us_max": max(cpu),
                     "cpu_share": statistics.median(lv["gateway_cpu_share"] for lv in runs),
                     "events_per_s": statistics.median(lv["gateway"]["events_per_s"] for lv in runs),
                     "direct_events_per_s": statistics.median(lv["direct"]["events_per_s"] for lv in runs),
                     "itl_p50_ms": statistics.median(itl) if itl else None,
                     "new_connections": sum(lv.get("gateway_new_upstream_connections", 0) for lv in runs),
                     "failed": sum(lv["gateway"]["requests_failed"] for lv in runs),
                     "requests": sum(lv["requests"] for lv in runs)})
    return rows


def render_report(results: list[dict[str, Any]], preface: str) -> str:
    lines = [preface.rstrip(), "", "## Results", "",
             "| run | commit | streams | gateway CPU per token (µs), median [range] | gateway CPU share of one core | "
             "tokens/s through the gateway | tokens/s direct | client ITL p50 through the gateway (ms) | "
             "new upstream connections / requests | failed / requests |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        for row in summary_rows(result):
            itl = f"{row['itl_p50_ms']:.2f}" if row["itl_p50_ms"] is not None else "–"
            lines.append(f"| {row['label']} | `{result.get('gateway_src_commit') or '?'}` | {row['streams']} | "
                         f"{row['cpu_us']:.1f} [{row['cpu_us_min']:.1f}–{row['cpu_us_max']:.1f}] | {row['cpu_share']:.2f} | "
                         f"{row['events_per_s']:,.0f} | {row['direct_events_per_s']:,.0f} | {itl} | "
                         f"{row['new_connections']} / {row['requests']} | {row['failed']} / {row['requests']} |")
    lines += ["", "## Runs", ""]
    for result in results:
        runtime = ", ".join(f"{k} {v}" for k, v in result["runtime"].items() if v)
        args = " ".join(result.get("gateway_args") or []) or "(defaults)"
        lines.append(f"- **{result['label']}**: gateway args {args}; {result['rounds']} rounds of {result['tokens']}-token "
                     f"requests, {result['requests_per_stream']} per stream, one token per {result['interval_ms']:g} ms "
                     f"per stream at the replica; {result['cpu']}, {result['cores']} cores, Python {result['python']}; "
                     f"{runtime}.")
    return "\n".join(lines) + "\n"


@app.command()
def report(
    results: Annotated[Path, typer.Option(help="folder of gateway-cpu-*.json")] = REPO / "benchmarks" / "results",
    out: Annotated[Path, typer.Option(help="Markdown file to write")] = REPO / "docs" / "gateway-benchmarks.md",
    preface: Annotated[Path, typer.Option(help="analysis text put above the tables")] =
        REPO / "benchmarks" / "gateway_preface.md",
) -> None:
    """Write the gateway CPU report from the JSON files (in name order)."""
    files = sorted(results.glob("gateway-cpu-*.json"))
    if not files:
        raise typer.BadParameter(f"no gateway-cpu-*.json in {results}: run `python -m benchmarks.gateway_cpu run` first")
    out.write_text(render_report([json.loads(f.read_text()) for f in files], preface.read_text()))
    typer.echo(str(out), err=True)


if __name__ == "__main__":
    app()
