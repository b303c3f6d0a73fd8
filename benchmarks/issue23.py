"""Issue 23's GPU measurements in one lease, reference vs shipped config on one GPU, phase after phase.

    python -m benchmarks.issue23 run --root /root/bench --out /root/bench/results \\
        [--tiles benchmarks/results/lora-tune-h200.json] [--budget-s 1380]

Phases, each writing `issue23-<phase>.json` as soon as it is done (a lost lease keeps what was measured):

1. `ready`: the shipped variant's cold start (its own fresh cache; tuned tiles restored from the kept tune
   report), then the reference's cold start (the shipped server idle beside it), then the shipped server
   stopped and restarted on its kept caches. Each start's timeline (seconds from process start until vLLM's log
   shows a milestone) and vLLM's own durations (weights, torch.compile, graph capture). The two servers stay up.
2. `sidebyside`: `benchmarks.sidebyside.measure` on both, passes in alternating order (same JSON layout as
   `sidebyside.py`, so `report.py` renders it the same way).
3. `gateway`: the project's gateway (`service.cli gateway`, as its systemd unit runs it) over the shipped
   replica; base-only and mixed at `--gateway-streams`, through the gateway and directly, alternating.
4. `scaling`: a server of the shipped config with `--max-cpu-loras` raised, `--scaling-adapters` distinct
   adapters loaded (folders of links to the four real adapters' files: distinct names are what vLLM schedules
   and swaps by), aggregate tok/s at `--scaling-streams` spread round-robin over each adapter count, with vLLM's
   `lora_requests_info` gauge sampled meanwhile (how many adapters ran at once, how many waited). Repeated per
   `--scaling-slots` (GPU LoRA slots; the first is the tier's) while the budget allows.
5. `hot`: a merged replica of `medical` beside the shipped replica, the gateway over both; single-stream decode
   of the hot alias through the gateway against the base model through the gateway, alternating.

A phase starts only when `--budget-s` minus the seconds spent leaves its estimate (`PHASE_ESTIMATE_S`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from benchmarks.client import Job, run_jobs, summarize
from benchmarks.client_pool import client_pool
from benchmarks.servers import alive, start_process, stop_server, wait_gateway, wait_ready
from benchmarks.sidebyside import level, measure, metric_value, summary
from benchmarks.suites import Target, load_adapter, metadata, prompt_for
from benchmarks.variants import VARIANTS, device_layout, variant_spec
from service.layout import HostLayout
from service.vllm_config import VllmLaunch, merged_launch, vllm_launch

DOMAINS = ("medical", "legal", "customer_support", "code")
HOT = "medical"
BASE_PORT = 8201  # + server index
GATEWAY_PORT, ADMIN_PORT = 8280, 8282
# Seconds a phase needs at full size on the H200 (docs/benchmarks.md): a later phase starts only if they are left.
PHASE_ESTIMATE_S = {"gateway": 60, "scaling": 270, "hot": 180}

# Milestones in vLLM's log (first line containing the text), in start order.
TIMELINE = (("api_process_up", "non-default args"), ("engine_core_started", "Initializing a V1 LLM engine"),
            ("model_load_started", "Starting to load model"), ("model_loaded", "Model loading took"),
            ("compile_done", "torch.compile took"), ("kv_cache_allocated", "Available KV cache memory"),
            ("graph_capture_started", "Capturing CUDA graphs"), ("engine_initialised", "init engine"),
            ("api_listening", "Application startup complete"))
DURATIONS = {"weights_load_s": r"Loading weights took ([\d.]+) s",
             "model_load_s": r"Model loading took [\d.]+ GiB (?:memory )?and ([\d.]+) s",
             "torch_compile_s": r"torch\.compile took ([\d.]+) s",
             "graph_capture_s": r"Graph capturing finished in ([\d.]+) s",
             "init_engine_s": r"init engine \(.*\) took ([\d.]+) s"}


class Runner:
    """The run's servers and settings; every server is started from the variant's rendered launch."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root: Path = args.root
        self.out: Path = args.out
        self.t0 = time.time()
        self.python = args.server_python or sys.executable
        self.adapters: dict[str, str] = json.loads((self.root / "adapters.json").read_text())
        self.states: dict[str, dict[str, Any]] = {}  # server name -> benchmarks.servers state
        self.tiles: dict[str, Any] | None = None  # how the shipped variant's tuned tiles were restored
        self.scaling_runs = 0  # each scaling server gets a port of its own

    def elapsed(self) -> float:
        return time.time() - self.t0

    def allows(self, phase: str) -> bool:
        left = self.args.budget_s - self.elapsed()
        if left < PHASE_ESTIMATE_S[phase]:
            print(f"SKIP {phase}: {left:.0f}s of budget left, it needs ~{PHASE_ESTIMATE_S[phase]}s", flush=True)
            return False
        return True

    def layout(self, cache: str) -> HostLayout:
        # --cpu: the rehearsal on the CPU build of vLLM renders the same spec as a CPU stand-in host.
        layout = device_layout(str(self.root), cache)
        return replace(layout, cuda=False) if self.args.cpu else layout

    def launch(self, variant: str, index: int, cache: str | None = None, **updates: Any) -> VllmLaunch:
        spec = variant_spec(variant).model_copy(update={"gpu_memory_utilization": self.args.utilization,
                                                        **self.args.spec_override, **updates})
        return vllm_launch(spec, self.layout(cache or variant), model_path=str(self.root / "model"),
                           host="127.0.0.1", port=BASE_PORT + index)

    def start(self, name: str, launch: VllmLaunch, served: str = "exaone") -> dict[str, Any]:
        env = dict(launch.env) | self.args.server_env
        for key in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "HF_HOME", "XDG_CACHE_HOME"):
            if key in env:
                Path(env[key]).mkdir(parents=True, exist_ok=True)
        state = start_process(launch.command(self.python), env, name, self.root, self.out / f"i23-{name}.log",
                              f"i23-{name}", f"http://127.0.0.1:{launch.port}", served)
        self.states[name] = state
        return state

    def stop(self, name: str) -> None:
        stop_server(self.root, f"i23-{name}")
        self.states.pop(name, None)

    def stop_all(self) -> None:
        stop_server(self.root, "i23-gateway")
        for name in list(self.states):
            self.stop(name)

    def write(self, phase: str, data: dict[str, Any]) -> Path:
        path = self.out / f"issue23-{phase}.json"
        path.write_text(json.dumps(data, indent=1, default=str))
        print(f"wrote {path} at {self.elapsed():.0f}s", flush=True)
        return path

    def meta(self, url: str, argv: list[str], phase: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return metadata(url, argv, f"issue23-{phase}", {"runner_argv": sys.argv, "reference": self.args.reference,
                                                        "shipped": self.args.shipped, "tiles": self.tiles,
                                                        **(extra or {})})


def timed_start(runner: Runner, name: str, launch: VllmLaunch, served: str = "exaone") -> dict[str, Any]:
    """Start a server and follow its log until it answers: ready seconds, milestone seconds, vLLM's durations."""
    state = runner.start(name, launch, served)
    log = Path(state["log"])
    seen: dict[str, float] = {}
    deadline = time.time() + runner.args.ready_timeout
    while time.time() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        for key, marker in TIMELINE:
            if key not in seen and marker in text:
                seen[key] = round(time.time() - state["t0"], 1)
        if not alive(state["pid"]) or "Application startup complete" in text:
            break
        time.sleep(0.5)
    ready = wait_ready(state, max(deadline - time.time(), 1))
    text = log.read_text(errors="replace")
    durations = {key: float(m.group(1)) for key, pattern in DURATIONS.items() if (m := re.search(pattern, text))}
    from benchmarks.device import startup_lines

    lines = [line for line in startup_lines(log, 200) if "Capturing CUDA graphs" not in line][:30]
    return {"ready_s": round(ready, 1), "timeline_s": seen, "vllm_durations_s": durations, "argv": state["argv"],
            "env": state["env"], "startup_log": lines}


def restore_tiles(runner: Runner, variant: str) -> dict[str, Any]:
    """The shipped variant's tuned tiles from the kept tune report, into its (fresh) cache: what a host does."""
    if runner.args.tiles is None or not variant.endswith("lora-tuned"):
        return {"restored": False, "why": "no --tiles report" if runner.args.tiles is None else "variant untuned"}
    import torch

    from benchmarks.restore_tiles import restore

    layout = device_layout(str(runner.root), variant)
    files = restore(json.loads(runner.args.tiles.read_text()), runner.root / "model", Path(str(layout.lora_kernels)),
                    torch.cuda.get_device_name())
    return {"restored": True, "report": str(runner.args.tiles), "files": len(files)}


def phase_ready(runner: Runner) -> dict[str, Any]:
    ref, ship = runner.args.reference, runner.args.shipped
    for variant in (ref, ship):  # cold: nothing kept from an earlier start of this variant
        shutil.rmtree(runner.root / "cache" / variant, ignore_errors=True)
    runner.tiles = restore_tiles(runner, ship)
    result: dict[str, Any] = {"tiles": runner.tiles, "starts": {}}
    result["starts"]["shipped_cold"] = timed_start(runner, "shipped", runner.launch(ship, 1))
    print(f"shipped cold ready {result['starts']['shipped_cold']['ready_s']}s", flush=True)
    result["starts"]["reference_cold"] = timed_start(runner, "reference", runner.launch(ref, 0))
    print(f"reference cold ready {result['starts']['reference_cold']['ready_s']}s", flush=True)
    runner.stop("shipped")
    result["starts"]["shipped_restart"] = timed_start(runner, "shipped", runner.launch(ship, 1))
    print(f"shipped restart ready {result['starts']['shipped_restart']['ready_s']}s", flush=True)
    result["meta"] = runner.meta(runner.states["shipped"]["url"], runner.states["shipped"]["argv"], "ready", {
        "description": "shipped cold (alone), reference cold (shipped idle beside it), shipped restart on its kept "
                       "caches (reference idle beside it); each variant's own cache folder, none shared",
        "utilization": runner.args.utilization})
    runner.write("ready", result)
    return result


def targets_of(runner: Runner) -> dict[str, Target]:
    targets = {}
    for name in ("reference", "shipped"):
        target = Target(url=runner.states[name]["url"], base_model="exaone", adapter_dirs=runner.adapters)
        for domain, path in runner.adapters.items():
            asyncio.run(load_adapter(target.url, domain, path))
            target.loaded.append(domain)
        warm = [Job(m, prompt_for(m), runner.args.max_tokens) for m in target.models for _ in range(2)]
        asyncio.run(run_jobs(target.url, warm, concurrency=1))
        targets[name] = target
    return targets


def phase_sidebyside(runner: Runner, targets: dict[str, Target], pool: Any) -> dict[str, Any]:
    args = runner.args
    variants = [args.reference, args.shipped]
    by_variant = {args.reference: targets["reference"], args.shipped: targets["shipped"]}
    result: dict[str, Any] = {
        "meta": runner.meta(targets["reference"].url, runner.states["reference"]["argv"], "sidebyside", {
            # variant "sidebyside": report.py renders it like `benchmarks/sidebyside.py`'s file.
            "variant": "sidebyside", "runner": "issue23",
            "description": "side-by-side, one GPU, alternating (issue 23 runner)", "utilization": args.utilization,
            "levels": args.levels, "rounds": args.rounds, "max_tokens": args.max_tokens,
            "single_requests": args.single_requests, "client_processes": args.client_processes}),
        "servers": {v: {"argv": runner.states[n]["argv"], "env": runner.states[n]["env"],
                        "description": VARIANTS[v][2]} for v, n in ((args.reference, "reference"),
                                                                   (args.shipped, "shipped"))},
        "passes": []}
    for p in range(args.passes):
        order = variants if p % 2 == 0 else list(reversed(variants))
        started = time.time()
        one: dict[str, Any] = {"order": order, "variants": {}}
        for variant in order:
            one["variants"][variant] = measure(by_variant[variant], args, pool, p)
            lv = one["variants"][variant]["levels"]
            print(f"pass {p} {variant}: " + " ".join(
                f"{c}: {x['base_only']['aggregate_tok_s']:.0f}/{x['mixed_adapters']['aggregate_tok_s']:.0f}"
                for c, x in lv.items()), flush=True)
        one["wall_s"] = time.time() - started
        result["passes"].append(one)
        result["summary"] = summary(variants, result["passes"], args.reference)
        runner.write("sidebyside", result)
    for v, n in ((args.reference, "reference"), (args.shipped, "shipped")):
        result["servers"][v]["preemptions"] = metric_value(runner.states[n]["url"], "vllm:num_preemptions_total")
    runner.write("sidebyside", result)
    return result


def start_gateway(runner: Runner, upstreams: list[str], aliases: dict[str, str]) -> tuple[str, list[str]]:
    """`python -m service.cli gateway`, the command the stack's systemd unit runs (loopback, no API key)."""
    stop_server(runner.root, "i23-gateway")
    argv = [runner.python, "-m", "service.cli", "gateway", "--host", "127.0.0.1", "--port", str(GATEWAY_PORT),
            "--admin-port", str(ADMIN_PORT), "--served-name", "exaone",
            *[a for u in upstreams for a in ("--upstream", u)],
            *[a for alias, name in aliases.items() for a in ("--alias", f"{alias}={name}")]]
    url = f"http://127.0.0.1:{GATEWAY_PORT}"
    start_process(argv, {"EXAONE_GATEWAY_ADMIN_KEY": secrets.token_hex(16)}, "gateway", runner.root,
                  runner.out / "i23-gateway.log", "i23-gateway", url)
    wait_gateway(url, list(aliases))
    return url, argv


def phase_gateway(runner: Runner, pool: Any) -> dict[str, Any]:
    args = runner.args
    lora_url = runner.states["shipped"]["url"]
    names = {d: f"{d}-v1" for d in runner.adapters}  # the gateway routes aliases to immutable version names
    for domain, name in names.items():
        asyncio.run(load_adapter(lora_url, name, runner.adapters[domain]))
    gw_url, argv = start_gateway(runner, [lora_url], names)
    sides = {"gateway": Target(gw_url, "exaone", {}, loaded=list(names)),
             "direct": Target(lora_url, "exaone", {}, loaded=list(names.values()))}
    warm = [Job(m, prompt_for(m), 8) for m in sides["gateway"].models]
    asyncio.run(run_jobs(gw_url, warm, concurrency=len(warm)))
    result: dict[str, Any] = {"meta": runner.meta(lora_url, runner.states["shipped"]["argv"], "gateway", {
        "gateway_argv": argv, "streams": args.gateway_streams, "rounds": args.rounds,
        "client_processes": args.client_processes, "max_tokens": args.max_tokens}), "passes": []}
    for p in range(args.gateway_passes):
        order = ["direct", "gateway"] if p % 2 == 0 else ["gateway", "direct"]
        one: dict[str, Any] = {"order": order}
        for side in order:
            target = sides[side]
            one[side] = {mode: level(target, models, args.gateway_streams, args.rounds, args.max_tokens, pool,
                                     args.client_processes)
                         for mode, models in (("base_only", [target.base_model]), ("mixed_adapters", target.loaded))}
        for mode in ("base_only", "mixed_adapters"):
            one[f"{mode}_gateway_over_direct"] = _ratio(one["gateway"][mode]["aggregate_tok_s"],
                                                        one["direct"][mode]["aggregate_tok_s"])
        print(f"gateway pass {p}: base {one['base_only_gateway_over_direct']:.3f} "
              f"mixed {one['mixed_adapters_gateway_over_direct']:.3f}", flush=True)
        result["passes"].append(one)
        result["summary"] = {k: _spread([q[k] for q in result["passes"]])
                             for k in ("base_only_gateway_over_direct", "mixed_adapters_gateway_over_direct")}
        runner.write("gateway", result)
    return result


def make_scaling_adapters(adapters: dict[str, str], base: Path, count: int) -> dict[str, str]:
    """`count` adapter folders (name -> folder), each linking the files of one of `adapters` in turn: distinct
    adapters to vLLM (it schedules and swaps by name), no weights written."""
    real = [Path(p) for p in adapters.values()]
    out = {}
    for i in range(count):
        folder = base / f"a{i:03d}"
        if not folder.exists():
            folder.mkdir(parents=True)
            for f in real[i % len(real)].iterdir():
                os.symlink(f, folder / f.name)
        out[f"s{i:03d}"] = str(folder)
    return out


class LoraGauge:
    """Samples vLLM's `vllm:lora_requests_info` gauge while a level runs: adapters running at once and waiting."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        # The gauge's value is the time its label set was last current; vLLM keeps old label sets, so the
        # sample is the series with the largest value.
        pattern = re.compile(r'^vllm:lora_requests_info\{([^}]*)\} (\S+)', re.MULTILINE)
        while True:  # at least one sample, however short the level
            try:
                series = pattern.findall(httpx.get(self.url + "/metrics", timeout=5).text)
                if series:
                    labels = dict(re.findall(r'(\w+)="([^"]*)"', max(series, key=lambda s: float(s[1]))[0]))
                    self.samples.append((len([a for a in labels.get("running_lora_adapters", "").split(",") if a]),
                                         len([a for a in labels.get("waiting_lora_adapters", "").split(",") if a])))
            except (httpx.HTTPError, ValueError):
                pass
            if self._stop.wait(0.5):
                return

    def __enter__(self) -> LoraGauge:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def stats(self) -> dict[str, Any]:
        running = [r for r, _ in self.samples]
        waiting = [w for _, w in self.samples]
        return {"samples": len(self.samples), "running_adapters_max": max(running, default=None),
                "running_adapters_median": sorted(running)[len(running) // 2] if running else None,
                "waiting_adapters_median": sorted(waiting)[len(waiting) // 2] if waiting else None}


def measure_scaling(url: str, names: list[str], counts: list[int], args: argparse.Namespace, pool: Any,
                    result: dict[str, Any], saved: Any = None) -> dict[str, Any]:
    """Aggregate tok/s at `args.scaling_streams` spread round-robin over the first n of `names` for each n in
    `counts`, `args.scaling_passes` passes alternating the order of n; `result` gains passes and summaries
    (`saved()` after each pass)."""
    for p in range(args.scaling_passes):
        order = counts if p % 2 == 0 else list(reversed(counts))
        one: dict[str, Any] = {}
        for n in order:
            with LoraGauge(url) as gauge:
                one[str(n)] = level(Target(url, "exaone", {}), names[:n], args.scaling_streams, args.scaling_rounds,
                                    args.max_tokens, pool, args.client_processes)
            one[str(n)]["lora_gauge"] = gauge.stats()
            print(f"scaling pass {p} adapters {n}: {one[str(n)]['aggregate_tok_s']:.0f} tok/s {gauge.stats()}",
                  flush=True)
        result.setdefault("passes", []).append(one)
        result["summary"] = {str(n): _spread([q[str(n)]["aggregate_tok_s"] for q in result["passes"]]) for n in counts}
        result["summary_over_first"] = {
            str(n): _spread([_ratio(q[str(n)]["aggregate_tok_s"], q[str(counts[0])]["aggregate_tok_s"])
                             for q in result["passes"]]) for n in counts}
        if saved is not None:
            saved()
    return result


def phase_scaling(runner: Runner, pool: Any, slots: int, index: int) -> dict[str, Any]:
    args = runner.args
    counts = args.scaling_counts
    name = f"scaling-{slots}"
    # The shipped config with more CPU slots, on the shipped server's caches (content-addressed: another
    # GPU slot count that changes the compiled graph compiles beside them).
    launch = runner.launch(args.shipped, index, max_loras=slots,
                           max_cpu_loras=max(args.scaling_max_cpu_loras, max(counts)))
    start = timed_start(runner, name, launch)
    url = runner.states[name]["url"]
    adapters = make_scaling_adapters(runner.adapters, runner.root / "scaling-adapters", max(counts))
    t = time.time()
    for adapter, path in adapters.items():
        asyncio.run(load_adapter(url, adapter, path))
    load_s = time.time() - t
    names = list(adapters)
    warm = [Job(m, prompt_for(m), 4) for m in names[:max(counts)]]
    asyncio.run(run_jobs(url, warm, concurrency=args.scaling_streams))
    result: dict[str, Any] = {"meta": runner.meta(url, start["argv"], "scaling", {
        "gpu_slots": slots, "max_cpu_loras": launch.args[launch.args.index("--max-cpu-loras") + 1],
        "streams": args.scaling_streams, "rounds": args.scaling_rounds, "counts": counts,
        "max_tokens": args.max_tokens, "client_processes": args.client_processes,
        "adapters": "distinct names, each folder links the files of one of the 4 real rank-32 adapters "
                    "(round-robin)"}),
        "ready_s": start["ready_s"], "load_all_s": round(load_s, 1), "passes": []}
    measure_scaling(url, names, counts, args, pool, result, lambda: runner.write(name, result))
    result["preemptions"] = metric_value(url, "vllm:num_preemptions_total")
    runner.write(name, result)
    runner.stop(name)
    return result


def phase_hot(runner: Runner) -> dict[str, Any]:
    from exaone_lora.spec import MergedReplicaSpec
    from service.merge import merge_adapter

    args = runner.args
    names = {d: f"{d}-v1" for d in runner.adapters}
    t = time.time()
    merged = merge_adapter(runner.root / "model", runner.adapters[HOT], runner.root / "merged" / names[HOT],
                           version_name=names[HOT], max_rank=32, device=args.merge_device)
    merge_s = time.time() - t
    spec = variant_spec(args.shipped).model_copy(update=args.spec_override)
    replica = MergedReplicaSpec(alias=HOT, gpu_memory_utilization=args.utilization, port=BASE_PORT + 5,
                                max_num_seqs=spec.max_num_seqs)
    launch = merged_launch(spec, replica, version_name=names[HOT], model_path=str(merged.path),
                           layout=runner.layout("hot-merged"))
    lora_start = None
    if "shipped" not in runner.states:  # no `ready` phase: the LoRA replica starts here (on kept caches if any)
        lora_start = timed_start(runner, "shipped", runner.launch(args.shipped, 1))
    lora_url = runner.states["shipped"]["url"]
    served = {m["id"] for m in httpx.get(f"{lora_url}/v1/models", timeout=30).json()["data"]}
    for domain, path in runner.adapters.items():  # the versions the gateway's aliases name, on the LoRA replica
        if names[domain] not in served:
            asyncio.run(load_adapter(lora_url, names[domain], path))
    start = timed_start(runner, "merged", launch, served=names[HOT])
    gw_url, argv = start_gateway(runner, [lora_url, runner.states["merged"]["url"]], names)
    result: dict[str, Any] = {"meta": runner.meta(gw_url, runner.states["shipped"]["argv"], "hot", {
        "merged_argv": start["argv"], "gateway_argv": argv, "hot_alias": HOT, "requests": args.single_requests,
        "max_tokens": args.max_tokens}), "merge_s": round(merge_s, 1), "merged_ready_s": start["ready_s"],
        "lora_replica_start": lora_start, "passes": []}
    for p in range(args.passes):
        order = ["exaone", HOT] if p % 2 == 0 else [HOT, "exaone"]
        one: dict[str, Any] = {"order": order}
        for model in order:
            jobs = [Job(model, prompt_for(model), args.max_tokens) for _ in range(args.single_requests)]
            results, wall = asyncio.run(run_jobs(gw_url, jobs, concurrency=1))
            one[model] = summarize(results, wall)
        one["hot_over_base"] = _ratio(one[HOT]["mean_decode_tok_s"], one["exaone"]["mean_decode_tok_s"])
        print(f"hot pass {p}: hot/base {one['hot_over_base']}", flush=True)
        result["passes"].append(one)
        result["summary"] = {"hot_over_base": _spread([q["hot_over_base"] for q in result["passes"]])}
        runner.write("hot", result)
    result["gateway_routes"] = _routes(f"http://127.0.0.1:{ADMIN_PORT}")
    runner.write("hot", result)
    return result


def _routes(admin_url: str) -> dict[str, float]:
    text = httpx.get(f"{admin_url}/metrics", timeout=30).text
    return {line.rsplit(" ", 1)[0].removeprefix("exaone_gateway_routed_requests_total"): float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("exaone_gateway_routed_requests_total{")}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _spread(values: list[float | None]) -> dict[str, float | int | None]:
    xs = [x for x in values if x is not None]
    return {"median": statistics.median(xs) if xs else None, "min": min(xs, default=None),
            "max": max(xs, default=None), "n": len(xs)}


def guarded(runner: Runner, phase: str, fn: Any) -> None:
    """Run one of the later phases; a failure is recorded in `issue23-<phase>-error.json` and the run goes on
    with the next phase (the shipped replica they share is still up)."""
    try:
        fn()
    except Exception as exc:  # keep the lease's other phases
        import traceback

        print(f"PHASE {phase} FAILED: {type(exc).__name__}: {exc}", flush=True)
        runner.write(f"{phase}-error", {"error": traceback.format_exc()[-4000:], "elapsed_s": runner.elapsed()})
        stop_server(runner.root, "i23-gateway")
        for name in [n for n in runner.states if n not in ("shipped", "reference")]:
            runner.stop(name)


PHASES = ("ready", "sidebyside", "gateway", "scaling", "hot")
NEEDS_READY = ("sidebyside", "gateway")  # they measure the two servers `ready` leaves up


def run(args: argparse.Namespace) -> None:
    """The phases in the order given; `scaling-N` is the scaling phase at N GPU slots alone (so `hot` can run
    between two slot counts), `scaling` is every `--scaling-slots` in turn."""
    runner = Runner(args)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        if "ready" in args.phases:
            phase_ready(runner)
            targets = targets_of(runner)
        else:
            runner.tiles = restore_tiles(runner, args.shipped)  # into the shipped cache every later server uses
        with client_pool(args.client_processes) as pool:
            list(pool.map(time.sleep, [1.0] * args.client_processes))  # spawn every worker before timing
            for phase in args.phases:
                if phase == "sidebyside":
                    phase_sidebyside(runner, targets, pool)
                    runner.stop("reference")  # the later phases use the shipped replica only
                elif phase == "gateway" and runner.allows("gateway"):
                    runner.stop("reference")
                    guarded(runner, "gateway", lambda: phase_gateway(runner, pool))
                elif phase.startswith("scaling"):
                    for slots in _scaling_slots(phase, args.scaling_slots):
                        if runner.allows("scaling"):
                            runner.stop("reference")
                            runner.scaling_runs += 1
                            guarded(runner, f"scaling-{slots}",
                                    lambda s=slots: phase_scaling(runner, pool, s, 1 + runner.scaling_runs))
                elif phase == "hot" and runner.allows("hot"):
                    guarded(runner, "hot", lambda: phase_hot(runner))
    except Exception as exc:
        runner.write("error", {"error": f"{type(exc).__name__}: {exc}"[-4000:], "elapsed_s": runner.elapsed()})
        raise
    finally:
        runner.stop_all()
        print(f"RUNNER FINISHED after {runner.elapsed():.0f}s", flush=True)


def _scaling_slots(phase: str, slots: list[int]) -> list[int]:
    return slots if phase == "scaling" else [int(phase.removeprefix("scaling-"))]


def _phases(text: str) -> list[str]:
    phases = text.split(",")
    bad = [p for p in phases if p not in PHASES and not re.fullmatch(r"scaling-[1-9][0-9]*", p)]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown phase(s) {bad}: choose from {', '.join(PHASES)} or scaling-N")
    if "ready" not in phases and any(p in NEEDS_READY for p in phases):
        raise argparse.ArgumentTypeError(f"{' and '.join(NEEDS_READY)} measure the servers `ready` starts: add ready")
    return phases


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def _pairs(items: list[str]) -> dict[str, str]:
    bad = [i for i in items if "=" not in i]
    if bad:
        raise argparse.ArgumentTypeError(f"--server-env wants KEY=VALUE, got {bad}")
    return dict(i.split("=", 1) for i in items)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--root", type=Path, required=True, help="has model/ and adapters.json (benchmarks.device prepare)")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--reference", default="reference")
    r.add_argument("--shipped", default="dual-stream-lora-tuned")
    r.add_argument("--tiles", type=Path, default=None, help="kept tune-lora-kernels report for the shipped tiles")
    r.add_argument("--utilization", type=float, default=0.3, help="--gpu-memory-utilization of every server")
    r.add_argument("--passes", type=int, default=3)
    r.add_argument("--levels", type=_ints, default=[8, 32, 128, 256])
    r.add_argument("--rounds", type=int, default=4, help="requests per level = rounds x concurrency")
    r.add_argument("--max-tokens", type=int, default=128)
    r.add_argument("--single-requests", type=int, default=8)
    r.add_argument("--client-processes", type=int, default=8)
    r.add_argument("--gateway-streams", type=int, default=128)
    r.add_argument("--gateway-passes", type=int, default=3)
    r.add_argument("--scaling-counts", type=_ints, default=[4, 16, 64, 256])
    r.add_argument("--scaling-streams", type=int, default=128)
    r.add_argument("--scaling-rounds", type=int, default=2)
    r.add_argument("--scaling-passes", type=int, default=2)
    r.add_argument("--scaling-slots", type=_ints, default=[4], help="GPU LoRA slots per scaling run; first = tier's")
    r.add_argument("--scaling-max-cpu-loras", type=int, default=256)
    r.add_argument("--phases", type=_phases, default=list(PHASES),
                   help="comma-separated, run in this order; scaling-N runs one --scaling-slots entry")
    r.add_argument("--budget-s", type=float, default=1350, help="a phase starts only if its estimate is left")
    r.add_argument("--ready-timeout", type=float, default=480)
    r.add_argument("--merge-device", default="cuda")
    r.add_argument("--cpu", action="store_true", help="rehearsal on the CPU build of vLLM (CPU stand-in layout)")
    r.add_argument("--server-python", default=None, help="the servers' Python (default: this one)")
    r.add_argument("--server-env", nargs="*", default=[], help="KEY=VALUE added to every server's environment")
    r.add_argument("--spec-override", type=json.loads, default={}, help="JSON spec fields for every server")
    args = parser.parse_args(argv)
    args.server_env = _pairs(args.server_env)
    unknown = [v for v in (args.reference, args.shipped) if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    run(args)


if __name__ == "__main__":
    main()
