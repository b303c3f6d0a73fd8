"""The merged-replica run on one GPU: a LoRA replica and a merged replica of the hot adapter, the gateway in front.

    python -m benchmarks.device hot --root /root/bench --out /root/bench/results

1. fold the hot adapter (`medical`) into the base weights (`service.merge`, on the GPU);
2. start the LoRA replica (variant `hot-lora`, utilization 0.5) and load the four adapters as `<domain>-v1`;
3. start the merged replica (`service.vllm_config.merged_launch`, utilization 0.35) serving `medical-v1`;
4. start the gateway (its own process) over both, aliases `<domain>` -> `<domain>-v1`;
5. Test 1 / Test 2 / saturation through the gateway, Test 1 directly on each replica, and the gateway's
   routing counters (which path each alias took);
6. one profiled request each for the base and for a LoRA adapter on the LoRA replica (`--profiler-config`,
   when this vLLM has it): GPU kernel time per generated token by kernel, against the measured ITL.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import secrets
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

from benchmarks.client import stream_completion
from benchmarks.servers import start_launch, start_process, stop_server, wait_gateway, wait_ready, write_json
from benchmarks.suites import SuiteSizes, Target, metadata, suite_saturation, suite_test1, suite_test2, warmup
from benchmarks.variants import device_layout, variant_launch, variant_spec
from exaone_lora.spec import MergedReplicaSpec
from service.merge import merge_adapter
from service.vllm_config import VllmLaunch, merged_launch

HOT = "medical"
LORA_PORT, MERGED_PORT, GATEWAY_PORT, ADMIN_PORT = 8081, 8091, 8080, 8082
PROFILE_TOKENS = 64


def _profiler_available() -> bool:
    try:
        import vllm.config.profiler  # noqa: F401
    except ImportError:
        return False
    return True


def with_profiler(launch: VllmLaunch, trace_dir: Path) -> VllmLaunch:
    config = {"profiler": "torch", "torch_profiler_dir": str(trace_dir), "torch_profiler_with_stack": False}
    return VllmLaunch(args=(*launch.args, "--profiler-config", json.dumps(config)), env=launch.env, host=launch.host,
                      port=launch.port)


def kernel_summary(trace_files: list[Path], tokens: int, top: int = 15) -> dict[str, Any]:
    """GPU kernel time in the given torch-profiler traces, by kernel name, per generated token."""
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for path in trace_files:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as fh:
            events = json.load(fh).get("traceEvents", [])
        for ev in events:
            if ev.get("cat") == "kernel" and "dur" in ev:
                entry = by_name[str(ev.get("name", "?"))[:120]]
                entry[0] += float(ev["dur"])
                entry[1] += 1
    total_us = sum(v[0] for v in by_name.values())
    ranked = sorted(by_name.items(), key=lambda kv: kv[1][0], reverse=True)
    return {
        "trace_files": [p.name for p in trace_files],
        "kernel_ms_total": round(total_us / 1000, 3),
        "kernel_ms_per_token": round(total_us / 1000 / max(tokens, 1), 4),
        "kernel_launches_per_token": round(sum(v[1] for v in by_name.values()) / max(tokens, 1), 1),
        "top": [{"kernel": name, "ms_per_token": round(us / 1000 / max(tokens, 1), 4), "calls": int(n),
                 "share": round(us / total_us, 4) if total_us else None} for name, (us, n) in ranked[:top]],
    }


async def profile_one(url: str, model: str, trace_dir: Path) -> dict[str, Any]:
    before = set(trace_dir.rglob("*.json*"))
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
        (await client.post(f"{url}/start_profile")).raise_for_status()
        result = await stream_completion(client, url, model, "Describe the water cycle.", PROFILE_TOKENS)
        (await client.post(f"{url}/stop_profile")).raise_for_status()
    deadline = time.time() + 120
    new: list[Path] = []
    while time.time() < deadline:  # traces are flushed by the engine process after stop_profile returns
        new = sorted(set(trace_dir.rglob("*.json*")) - before)
        if new and all(p.stat().st_size > 0 for p in new):
            time.sleep(2)
            break
        time.sleep(1)
    summary = kernel_summary([p for p in new if "json" in p.name], result.output_tokens)
    itl = sorted(result.itl_s)
    return {"model": model, "output_tokens": result.output_tokens,
            "itl_p50_ms": round(itl[len(itl) // 2] * 1000, 3) if itl else None, **summary}


async def gateway_routes(url: str) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=30) as client:
        text = (await client.get(f"{url}/metrics")).text
    routes = {}
    for line in text.splitlines():
        if line.startswith("exaone_gateway_routed_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            routes[labels.removeprefix("exaone_gateway_routed_requests_total")] = float(value)
    return routes


def run_hot(root: Path, out: Path, sizes: SuiteSizes, domains: tuple[str, ...]) -> Path:

    adapters: dict[str, str] = json.loads((root / "adapters.json").read_text())
    path = out / "hot.json"
    result: dict[str, Any] = {"startup": {}, "suites": {}}
    trace_dir = root / "traces"
    trace_dir.mkdir(parents=True, exist_ok=True)
    names = {d: f"{d}-v1" for d in domains}
    lora_url, merged_url, gw_url = (f"http://127.0.0.1:{p}" for p in (LORA_PORT, MERGED_PORT, GATEWAY_PORT))
    try:
        t = time.perf_counter()
        merged = merge_adapter(root / "model", adapters[HOT], root / "merged" / names[HOT], version_name=names[HOT],
                               max_rank=32, device="cuda")
        result["merge"] = {"seconds": round(time.perf_counter() - t, 2), "merged_weights": merged.merged_weights,
                           "scale": merged.scale}
        print(f"merged {names[HOT]} in {result['merge']['seconds']}s", flush=True)

        spec = variant_spec("hot-lora")
        launch = variant_launch("hot-lora", str(root / "model"), str(root), port=LORA_PORT)
        profiled = _profiler_available()
        if profiled:
            launch = with_profiler(launch, trace_dir)
        lora = start_launch(launch, "hot-lora", root, out / "hot-lora-server.log")
        result["startup"]["lora_ready_s"] = wait_ready(lora, 600)
        for domain in domains:
            r = httpx.post(f"{lora_url}/v1/load_lora_adapter", timeout=120,
                           json={"lora_name": names[domain], "lora_path": adapters[domain]})
            r.raise_for_status()

        replica = MergedReplicaSpec(alias=HOT, gpu_memory_utilization=0.35, port=MERGED_PORT, max_num_seqs=256)
        mlaunch = merged_launch(spec, replica, version_name=names[HOT], model_path=str(merged.path),
                                layout=device_layout(str(root), "hot"))
        mstate = start_launch(mlaunch, "hot-merged", root, out / "hot-merged-server.log", name="merged",
                              served=names[HOT])
        result["startup"]["merged_ready_s"] = wait_ready(mstate, 600)

        key = secrets.token_hex(16)
        argv = [sys.executable, "-m", "benchmarks.device", "gateway", "--upstream", lora_url, "--upstream", merged_url,
                "--port", str(GATEWAY_PORT), "--admin-port", str(ADMIN_PORT),
                *[a for d in domains for a in ("--alias", f"{d}={names[d]}")]]
        start_process(argv, {"EXAONE_GATEWAY_ADMIN_KEY": key}, "gateway", root, out / "gateway.log", "gateway", gw_url)
        wait_gateway(gw_url, list(domains))
        result["meta"] = metadata(lora_url, lora["argv"], "hot", {
            "description": "LoRA replica (utilization 0.5) + merged replica of `medical` (0.35) on one GPU, "
                           "gateway in front", "merged_argv": mstate["argv"], "gateway_argv": argv,
            "sizes": sizes.__dict__, "hot_alias": HOT})

        async def suites() -> None:
            via_gateway = Target(gw_url, "exaone", {}, loaded=list(domains))
            direct_lora = Target(lora_url, "exaone", {}, loaded=[names[d] for d in domains])
            direct_merged = Target(merged_url, names[HOT], {})
            await warmup(via_gateway, sizes)
            await warmup(direct_merged, sizes)
            for name, target in (("test1_direct_lora", direct_lora), ("test1_direct_merged", direct_merged),
                                 ("test1", via_gateway)):
                result["suites"][name] = await suite_test1(target, sizes)
                print(f"suite {name} done", flush=True)
            result["suites"]["test2"] = await suite_test2(via_gateway, sizes)
            result["suites"]["saturation"] = await suite_saturation(via_gateway, sizes)
            print("suite saturation done", flush=True)
            result["gateway_routes"] = await gateway_routes(f"http://127.0.0.1:{ADMIN_PORT}")  # metrics: admin listener
            if profiled:
                result["profile"] = [await profile_one(lora_url, m, trace_dir) for m in ("exaone", names["legal"])]
                print("profiles done", flush=True)

        asyncio.run(suites())
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"[-3000:]
        raise
    finally:
        for name in ("gateway", "merged", "server"):
            stop_server(root, name)
        write_json(path, result)
    return path
