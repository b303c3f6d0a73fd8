"""Several serving configurations on one GPU at once, measured in alternating order (issue 23).

    python -m benchmarks.sidebyside run --root /root/bench --out /root/bench/results \\
        --variants reference,capture,seed-dual-stream,capture-dual-stream [--utilization 0.17] [--passes 3]

Every variant's server runs for the whole comparison, each with the same `--gpu-memory-utilization` (so the
same KV capacity) on its own port; only the one being measured gets traffic, the others sit idle (an idle vLLM
engine launches no GPU work). So a pass can measure every variant within a minute or two and the next pass runs
them in reverse order: drift over time (clocks, the client machine) lands on every variant alike instead of on
whichever ran first, which one server after another cannot give within a 30-minute lease.

The servers start one after another: vLLM sizes its KV cache from the device's free memory measured across
its own start, so a neighbour allocating its KV cache meanwhile would shrink it. The next one starts when the
previous one logs that it is capturing CUDA graphs (its KV cache is allocated by then). Start times are
therefore not cold-start numbers of an idle machine, and the servers share one inductor/Triton cache folder
(content-addressed) so later ones compile faster: `ready_s` is kept for the record only.

Each pass and variant measures: single-stream decode for the base and the adapters (sequential), every model
at once (one stream each), and base-only / mixed-adapter aggregate throughput at each `--levels` concurrency,
the two modes alternating which goes first, sent from a kept pool of client processes. After every pass the
JSON is rewritten, so a run cut short keeps its finished passes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.client import Job, run_jobs, summarize
from benchmarks.client_pool import client_pool, run_jobs_in_processes
from benchmarks.suites import Target, load_domain_adapters, metadata, prompt_for
from benchmarks.variants import VARIANTS, device_layout, variant_spec
from service.vllm_config import vllm_launch

DOMAINS = ("medical", "legal", "customer_support", "code")
BASE_PORT = 8101
# The line vLLM prints once its KV cache is allocated and CUDA graph capture begins.
CAPTURE_MARKERS = ("Capturing CUDA graph", "Graph capturing finished", "init engine")


def launch_for(variant: str, root: Path, index: int, utilization: float, shared_cache: bool) -> Any:
    spec = variant_spec(variant).model_copy(update={"gpu_memory_utilization": utilization})
    launch = vllm_launch(spec, device_layout(str(root), variant), model_path=str(root / "model"), host="127.0.0.1",
                         port=BASE_PORT + index)
    if shared_cache:
        # Content-addressed caches: sharing them only saves compile time, never changes a kernel.
        launch.env["TORCHINDUCTOR_CACHE_DIR"] = str(root / "cache" / "shared" / "inductor")
        launch.env["TRITON_CACHE_DIR"] = str(root / "cache" / "shared" / "triton")
    return launch


def wait_for_marker(state: dict[str, Any], timeout_s: float) -> float:
    """Seconds until the server's log shows its KV cache allocated (graph capture started) or it is ready."""
    from benchmarks.servers import alive

    deadline = time.time() + timeout_s
    log = Path(state["log"])
    while time.time() < deadline:
        if not alive(state["pid"]):
            raise RuntimeError(f"server {state['variant']} exited during start:\n"
                               f"{log.read_text(errors='replace')[-4000:]}")
        text = log.read_text(errors="replace") if log.exists() else ""
        if any(marker in text for marker in CAPTURE_MARKERS):
            return time.time() - state["t0"]
        try:
            if httpx.get(state["url"] + "/health", timeout=2).status_code == 200:
                return time.time() - state["t0"]
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"server {state['variant']} showed no KV cache allocation after {timeout_s}s")


def metric_value(url: str, name: str) -> float | None:
    """Sum of one Prometheus counter over its label sets on a vLLM server (`vllm:num_preemptions_total`)."""
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name) and not line.startswith("#")]
    return sum(values) if values else None


async def single_stream(target: Target, requests: int, max_tokens: int) -> dict[str, Any]:
    """Sequential requests to the base, then to the adapters in turn: decode tok/s of each side."""
    out: dict[str, Any] = {}
    for side, models in (("base", [target.base_model]), ("adapter", list(target.loaded))):
        jobs = [Job(models[i % len(models)], prompt_for(models[i % len(models)]), max_tokens) for i in range(requests)]
        results, wall = await run_jobs(target.url, jobs, concurrency=1)
        out[side] = summarize(results, wall)
    base, lora = out["base"]["mean_decode_tok_s"], out["adapter"]["mean_decode_tok_s"]
    out["adapter_over_base"] = lora / base if lora and base else None
    return out


async def all_models(target: Target, max_tokens: int) -> dict[str, Any]:
    """Every model at once, one stream each (the seed's Test 2, one round)."""
    jobs = [Job(m, prompt_for(m), max_tokens) for m in target.models]
    results, wall = await run_jobs(target.url, jobs, concurrency=len(jobs))
    streams = [d for r in results if (d := r.decode_tok_s) is not None]
    return {"per_stream_decode_tok_s_mean": statistics.fmean(streams) if streams else None,
            "per_stream_decode_tok_s_min": min(streams) if streams else None, "wall_s": wall}


def level(target: Target, models: list[str], conc: int, rounds: int, max_tokens: int, pool: Any,
          processes: int) -> dict[str, Any]:
    jobs = [Job(models[i % len(models)], prompt_for(models[i % len(models)]), max_tokens) for i in range(rounds * conc)]
    n = min(processes, conc)
    shares = [(target.url, jobs[p::n]) for p in range(n)]
    return {"concurrency": conc, **run_jobs_in_processes(shares, conc // n, pool=pool, start_delay_s=0.5)}


def measure(target: Target, args: argparse.Namespace, pool: Any, pass_index: int) -> dict[str, Any]:
    out: dict[str, Any] = {"single": asyncio.run(single_stream(target, args.single_requests, args.max_tokens)),
                           "all_models": asyncio.run(all_models(target, args.max_tokens)), "levels": {}}
    modes = {"base_only": [target.base_model], "mixed_adapters": list(target.loaded)}
    for conc in args.levels:
        order = ["base_only", "mixed_adapters"] if (pass_index + conc) % 2 == 0 else ["mixed_adapters", "base_only"]
        pair = {mode: level(target, modes[mode], conc, args.rounds, args.max_tokens, pool, args.client_processes)
                for mode in order}
        base, mixed = pair["base_only"]["aggregate_tok_s"], pair["mixed_adapters"]["aggregate_tok_s"]
        out["levels"][str(conc)] = {"first": order[0], **pair,
                                    "mixed_over_base": mixed / base if mixed and base else None}
    return out


def summary(variants: list[str], passes: list[dict[str, Any]], reference: str) -> dict[str, Any]:
    """Per variant: median, min and max over passes of each measure, and the median of per-pass ratios to
    the reference variant (each pass measured every variant within a couple of minutes)."""
    def measures(p: dict[str, Any]) -> dict[str, float | None]:
        m: dict[str, float | None] = {
            "base_1": p["single"]["base"]["mean_decode_tok_s"],
            "adapter_1": p["single"]["adapter"]["mean_decode_tok_s"],
            "adapter_over_base_1": p["single"]["adapter_over_base"],
            "all_models_per_stream": p["all_models"]["per_stream_decode_tok_s_mean"],
        }
        for conc, lv in p["levels"].items():
            m[f"base_{conc}"] = lv["base_only"]["aggregate_tok_s"]
            m[f"mixed_{conc}"] = lv["mixed_adapters"]["aggregate_tok_s"]
            m[f"mixed_over_base_{conc}"] = lv["mixed_over_base"]
            m[f"base_itl_p50_ms_{conc}"] = (lv["base_only"]["itl_s"]["p50"] or 0) * 1000 or None
            m[f"mixed_itl_p50_ms_{conc}"] = (lv["mixed_adapters"]["itl_s"]["p50"] or 0) * 1000 or None
        return m

    table: dict[str, Any] = {}
    per_pass = [{v: measures(p["variants"][v]) for v in variants if v in p["variants"]} for p in passes]
    for v in variants:
        rows = [pp[v] for pp in per_pass if v in pp]
        keys = rows[0].keys() if rows else []
        stats: dict[str, Any] = {}
        for key in keys:
            values = [x for r in rows if (x := r.get(key)) is not None]
            ratios = [x / y for pp in per_pass if v in pp and reference in pp
                      if (x := pp[v].get(key)) is not None and (y := pp[reference].get(key))]
            stats[key] = {"median": statistics.median(values) if values else None,
                          "min": min(values) if values else None, "max": max(values) if values else None,
                          "n": len(values),
                          "over_reference_median": statistics.median(ratios) if ratios else None,
                          "over_reference_min": min(ratios) if ratios else None,
                          "over_reference_max": max(ratios) if ratios else None}
        table[v] = stats
    return table


def run(args: argparse.Namespace) -> Path:
    from benchmarks.servers import start_launch, stop_server, wait_ready

    root, out = args.root, args.out
    out.mkdir(parents=True, exist_ok=True)
    adapters = json.loads((root / "adapters.json").read_text())
    path = out / f"{args.name}.json"
    result: dict[str, Any] = {"meta": {"variant": args.name, "description": "side-by-side, one GPU, alternating",
                                       "argv": sys.argv, "utilization": args.utilization,
                                       "levels": args.levels, "rounds": args.rounds, "max_tokens": args.max_tokens,
                                       "single_requests": args.single_requests,
                                       "client_processes": args.client_processes, "reference": args.variants[0]},
                              "servers": {}, "passes": []}
    states: dict[str, dict[str, Any]] = {}
    try:
        for i, variant in enumerate(args.variants):
            launch = launch_for(variant, root, i, args.utilization, not args.no_shared_cache)
            state = start_launch(launch, variant, root, out / f"sbs-{variant}.log", name=f"sbs-{i}")
            states[variant] = state
            result["servers"][variant] = {"argv": state["argv"], "env": state["env"],
                                          "description": VARIANTS[variant][2],
                                          "kv_allocated_s": wait_for_marker(state, args.ready_timeout)}
        for variant, state in states.items():
            result["servers"][variant]["ready_s"] = wait_ready(state, args.ready_timeout)
            from benchmarks.device import startup_lines
            result["servers"][variant]["startup_log"] = startup_lines(Path(state["log"]), 40)
        targets: dict[str, Target] = {}
        for variant, state in states.items():
            target = Target(url=state["url"], base_model="exaone", adapter_dirs=adapters)
            asyncio.run(load_domain_adapters(target))
            warm = [Job(m, prompt_for(m), args.max_tokens) for m in target.models for _ in range(2)]
            asyncio.run(run_jobs(target.url, warm, concurrency=1))
            targets[variant] = target
        result["meta"] |= metadata(targets[args.variants[0]].url, [], args.name)
        result["meta"]["variant"] = args.name
        _write(path, result)
        with client_pool(args.client_processes) as pool:
            list(pool.map(time.sleep, [1.0] * args.client_processes))  # spawn every worker before timing
            for p in range(args.passes):
                order = list(args.variants) if p % 2 == 0 else list(reversed(args.variants))
                started = time.time()
                one: dict[str, Any] = {"order": order, "variants": {}}
                for variant in order:
                    one["variants"][variant] = measure(targets[variant], args, pool, p)
                    lv = one["variants"][variant]["levels"]
                    print(f"pass {p} {variant}: single {one['variants'][variant]['single']['base']['mean_decode_tok_s']:.0f}"
                          f"/{one['variants'][variant]['single']['adapter']['mean_decode_tok_s']:.0f} " +
                          " ".join(f"{c}: base {x['base_only']['aggregate_tok_s']:.0f} mixed "
                                   f"{x['mixed_adapters']['aggregate_tok_s']:.0f}" for c, x in lv.items()), flush=True)
                one["wall_s"] = time.time() - started
                result["passes"].append(one)
                result["summary"] = summary(list(args.variants), result["passes"], args.variants[0])
                _write(path, result)
        for variant, state in states.items():
            result["servers"][variant]["preemptions"] = metric_value(state["url"], "vllm:num_preemptions_total")
    except Exception as exc:  # keep what was measured and say what broke
        result["error"] = f"{type(exc).__name__}: {exc}"[-3000:]
        raise
    finally:
        _write(path, result)
        if not args.keep:
            for i in range(len(args.variants)):
                stop_server(root, f"sbs-{i}")
    return path


def _write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=1, default=str))
    print(f"wrote {path}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--root", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--name", default="sidebyside")
    r.add_argument("--variants", type=lambda s: s.split(","), required=True,
                   help="comma list; the first is the reference the others are divided by")
    r.add_argument("--utilization", type=float, default=0.17, help="--gpu-memory-utilization of every server")
    r.add_argument("--passes", type=int, default=3)
    r.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[32, 128])
    r.add_argument("--rounds", type=int, default=4, help="requests per level = rounds x concurrency")
    r.add_argument("--max-tokens", type=int, default=128)
    r.add_argument("--single-requests", type=int, default=8)
    r.add_argument("--client-processes", type=int, default=8)
    r.add_argument("--ready-timeout", type=float, default=480)
    r.add_argument("--no-shared-cache", action="store_true")
    r.add_argument("--keep", action="store_true", help="leave the servers running")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    run(args)


if __name__ == "__main__":
    main()
