"""prod-small's shape on a 2-GPU machine (issue 11): one replica vs two behind the gateway, and a live switch.

    python -m benchmarks.device dual --root /root/bench --out /root/bench/results

Both replicas are rendered from `Pulumi.prod.yaml` exactly as the VM would run them
(`vllm_launch(spec, replica=N)`: `CUDA_VISIBLE_DEVICES=N`, ports 8081/8091), with the four adapters loaded
as `<domain>-v1` on both. Saturation with mixed adapters at each concurrency:
- `one_replica`: straight to replica 0;
- `two_direct`: the same load split evenly over both replicas by the client (what ideal balancing gives);
- `two_gateway`: through the project's gateway (its own process) over both replicas.
The client runs in several processes (`benchmarks.client_pool`).
Finally `medical` is switched v1 -> v2 on both replicas through the gateway's admin API while a bounded
load runs, and every failed request is counted.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from benchmarks.client import Job
from benchmarks.client_pool import START_DELAY_S, run_jobs_in_processes
from benchmarks.servers import start_launch, start_process, stop_server, wait_gateway, wait_ready, write_json
from benchmarks.suites import SuiteSizes, metadata, prompt_for
from benchmarks.variants import REPO_ROOT, device_layout
from exaone_lora.spec import load_spec
from service.vllm_config import vllm_launch

GATEWAY_PORT, ADMIN_PORT = 8080, 8082
LEVELS = (32, 64, 128, 256)
CLIENT_PROCESSES = 8


def parallel_saturation(targets: list[tuple[str, list[str]]], concurrency: int, requests: int, max_tokens: int,
                        processes: int = CLIENT_PROCESSES) -> dict[str, Any]:
    """`requests` at `concurrency` in flight, spread over `processes` client processes and the given targets."""
    processes = max(1, min(processes, concurrency))
    shares = []
    for p in range(processes):
        url, models = targets[p % len(targets)]
        chosen = [models[(p + i) % len(models)] for i in range(requests // processes)]
        shares.append((url, [Job(model, prompt_for(model), max_tokens) for model in chosen]))
    return {"concurrency": concurrency, **run_jobs_in_processes(shares, concurrency // processes)}


def _switch_under_load(gw_url: str, admin_url: str, key: str, domains: tuple[str, ...], max_tokens: int) -> dict[str, Any]:
    """Bounded mixed load through the gateway while `medical` goes v1 -> v2 on both replicas."""
    aliases = list(domains)
    with ThreadPoolExecutor(1) as runner:
        load = runner.submit(parallel_saturation, [(gw_url, aliases)], 64, 800, max_tokens, 4)
        time.sleep(START_DELAY_S + 3)  # the switch lands while all four client processes are sending
        headers = {"Authorization": f"Bearer {key}"}
        t0 = time.perf_counter()
        switched = httpx.put(f"{admin_url}/admin/aliases/medical", json={"name": "medical-v2"}, headers=headers,
                             timeout=120)
        switch_s = time.perf_counter() - t0
        summary = load.result()
    state = httpx.get(f"{admin_url}/admin/state", headers=headers, timeout=30).json()
    return {"switch_status": switched.status_code, "switch_s": switch_s, "switch_body": switched.json(),
            "requests": summary["requests"], "ok": summary["ok"], "failed": summary["requests"] - summary["ok"],
            "errors": summary["errors"],
            "alias_after": state["aliases"].get("medical")}


def run_dual(root: Path, out: Path, sizes: SuiteSizes, domains: tuple[str, ...]) -> Path:

    adapters: dict[str, str] = json.loads((root / "adapters.json").read_text())
    spec = load_spec("prod", REPO_ROOT)
    layout = device_layout(str(root), "dual")
    path = out / "dual.json"
    result: dict[str, Any] = {"startup": {}, "saturation": {}}
    urls: list[str] = []
    gw_url, admin_url = f"http://127.0.0.1:{GATEWAY_PORT}", f"http://127.0.0.1:{ADMIN_PORT}"
    try:
        states = []
        for r in range(spec.gpus_per_node):
            launch = vllm_launch(spec, layout, model_path=str(root / "model"), replica=r)
            states.append(start_launch(launch, f"prod-replica-{r}", root, out / f"dual-replica-{r}.log", name=f"server{r}"))
            urls.append(f"http://127.0.0.1:{launch.port}")
        for r, state in enumerate(states):  # both start at once: one GPU each
            result["startup"][f"replica_{r}_ready_s"] = wait_ready(state, 900)
        names = {d: f"{d}-v1" for d in domains}
        for url in urls:
            for domain in domains:
                httpx.post(f"{url}/v1/load_lora_adapter", timeout=120,
                           json={"lora_name": names[domain], "lora_path": adapters[domain]}).raise_for_status()
            httpx.post(f"{url}/v1/load_lora_adapter", timeout=120,
                       json={"lora_name": "medical-v2", "lora_path": adapters["legal"]}).raise_for_status()
        key = secrets.token_hex(16)
        argv = [sys.executable, "-m", "benchmarks.device", "gateway", *[a for u in urls for a in ("--upstream", u)],
                "--port", str(GATEWAY_PORT), "--admin-port", str(ADMIN_PORT),
                *[a for d in domains for a in ("--alias", f"{d}={names[d]}")]]
        start_process(argv, {"EXAONE_GATEWAY_ADMIN_KEY": key}, "gateway", root, out / "dual-gateway.log", "gateway", gw_url)
        wait_gateway(gw_url, list(domains))
        result["meta"] = metadata(urls[0], states[0]["argv"], "dual", {
            "description": "Pulumi.prod.yaml (prod-small): one vLLM replica per GPU, gateway in front",
            "replica_argv": [s["argv"] for s in states], "gateway_argv": argv, "client_processes": CLIENT_PROCESSES,
            "max_tokens": sizes.max_tokens, "saturation_rounds": sizes.saturation_rounds})
        versions = [names[d] for d in domains]
        # Warm both replicas and the gateway path once (graphs, adapters in GPU slots).
        parallel_saturation([(u, versions) for u in urls], 32, 64, sizes.max_tokens)
        parallel_saturation([(gw_url, list(domains))], 32, 64, sizes.max_tokens)
        for level in LEVELS:
            n = sizes.saturation_rounds * level
            row: dict[str, Any] = {
                "one_replica": parallel_saturation([(urls[0], versions)], level, n, sizes.max_tokens),
                "two_direct": parallel_saturation([(u, versions) for u in urls], level, n, sizes.max_tokens),
                "two_gateway": parallel_saturation([(gw_url, list(domains))], level, n, sizes.max_tokens),
            }
            one = row["one_replica"]["aggregate_tok_s"] or 0
            row["two_direct_over_one"] = (row["two_direct"]["aggregate_tok_s"] or 0) / one if one else None
            row["two_gateway_over_one"] = (row["two_gateway"]["aggregate_tok_s"] or 0) / one if one else None
            result["saturation"][str(level)] = row
            print(f"level {level}: " + json.dumps({k: v for k, v in row.items() if k.endswith("_over_one")}), flush=True)
        result["switch_under_load"] = _switch_under_load(gw_url, admin_url, key, domains, sizes.max_tokens)
        print("switch under load: " + json.dumps({k: result["switch_under_load"][k]
                                                   for k in ("switch_status", "requests", "failed")}), flush=True)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"[-3000:]
        raise
    finally:
        for name in ("gateway", *[f"server{r}" for r in range(len(urls) or spec.gpus_per_node)]):
            stop_server(root, name)
        write_json(path, result)
    return path
