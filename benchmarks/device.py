"""Run the benchmarks on a GPU machine: make the model, start a variant's server, time it, bench, stop.

    python -m benchmarks.device prepare --root /root/bench
    python -m benchmarks.device cycle seed --root /root/bench --out "$OUT" [--sizes full|tiny] [--restart]

`cycle` starts the variant's server (cold on a fresh machine; a later pass of the same variant finds its compile
cache kept, and that start is recorded as warm), waits for /health, runs the suites, stops it, and with
`--restart` starts it again on the kept cache (warm) and times that too. The server runs
in its own process session so it survives a call that times out; `stop` ends it by its recorded pid.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.servers import start_launch, stop_server, wait_ready, write_json
from benchmarks.suites import SUITES, SuiteSizes, Target, run_all
from benchmarks.variants import VARIANTS, device_layout, variant_launch, variant_spec

DOMAINS = ("medical", "legal", "customer_support", "code")
PORT = 8081


def prepare(root: Path, size: str = "full", device: str = "cuda", rank: int = 32) -> dict[str, str]:
    """The random-weight checkpoint and one adapter per domain, written on this machine (too big to carry)."""
    from exaone_lora.checkpoints import make_adapter, make_checkpoint

    start = time.perf_counter()
    ckpt = make_checkpoint(root / "model", size, device=device)
    adapters = {}
    layout = device_layout(str(root), "any")
    for i, domain in enumerate(DOMAINS):
        adapters[domain] = str(make_adapter(ckpt, Path(str(layout.adapter_dir(domain))), rank=rank, seed=10 + i,
                                            dtype="bfloat16"))
    (root / "adapters.json").write_text(json.dumps(adapters))
    print(f"prepared {ckpt.path} and {len(adapters)} rank-{rank} adapters in {time.perf_counter() - start:.1f}s",
          flush=True)
    return adapters


def start_server(variant: str, root: Path, log: Path) -> dict[str, Any]:
    return start_launch(variant_launch(variant, str(root / "model"), str(root), port=PORT), variant, root, log)


STARTUP_PATTERN = re.compile(r"(took|seconds|secs|Available KV cache|GPU KV cache size|Maximum concurrency|"
                             r"Graph capturing|torch.compile|Capturing CUDA)", re.IGNORECASE)


def startup_lines(log: Path, limit: int = 60) -> list[str]:
    """vLLM's own startup timings (model load, torch.compile, graph capture, KV cache size) from its log."""
    lines = [line.strip()[-300:] for line in log.read_text(errors="replace").splitlines() if STARTUP_PATTERN.search(line)]
    return lines[:limit]


def compile_cache_kept(env: dict[str, str]) -> bool:
    """Whether an earlier start of this variant left vLLM's torch.compile cache: a start on it is a warm one,
    whatever its place in the runner's order (a second pass of a variant on the same machine is)."""
    cache_root = env.get("VLLM_CACHE_ROOT")
    return cache_root is not None and any(p.is_file() for p in (Path(cache_root) / "torch_compile_cache").rglob("*"))


def cycle(variant: str, root: Path, out: Path, sizes: SuiteSizes, suites: tuple[str, ...], restart: bool,
          ready_timeout_s: float) -> Path:
    """First start (cold unless the variant's cache was kept), suites, stop, and (with `restart`) a warm restart
    on the kept caches; failures are recorded."""
    from benchmarks.report import Run, key_numbers

    stop_server(root)
    adapters = json.loads((root / "adapters.json").read_text())
    spec = variant_spec(variant)
    kept = compile_cache_kept(variant_launch(variant, str(root / "model"), str(root), port=PORT).env)
    result: dict[str, Any] = {"startup": {"first_start_on_kept_cache": kept}}
    path = out / f"{variant}.json"
    state = start_server(variant, root, out / f"{variant}-server.log")
    try:
        result["startup"]["warm_ready_s" if kept else "cold_ready_s"] = wait_ready(state, ready_timeout_s)
        result["startup"]["cold_log"] = startup_lines(Path(state["log"]))
        target = Target(url=state["url"], base_model=spec.model.served_name, adapter_dirs=adapters)
        bench = run_all(target, sizes, state["argv"], variant, suites, max_loras=spec.max_loras,
                        extra={"description": VARIANTS[variant][2], "server_env": state["env"],
                               "adapter_rank": 32, "sizes": sizes.__dict__})
        result = bench | result
    except Exception as exc:  # keep what was measured and say what broke
        result["error"] = f"{type(exc).__name__}: {exc}"[-3000:]
        result.setdefault("meta", {"variant": variant, "server_argv": state["argv"]})
        raise
    finally:
        stop_server(root)
        write_json(path, result)
    if restart:
        state = start_server(variant, root, out / f"{variant}-restart.log")
        try:
            result["startup"]["warm_ready_s"] = wait_ready(state, ready_timeout_s)
            result["startup"]["warm_log"] = startup_lines(Path(state["log"]))
        except Exception as exc:
            result["startup"]["warm_error"] = f"{type(exc).__name__}: {exc}"[-3000:]
        finally:
            stop_server(root)
            write_json(path, result)
    print(f"SUMMARY {variant}: " + json.dumps(key_numbers(Run(variant, path, result))), flush=True)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--size", default="full")
    p.add_argument("--device", default="cuda")
    c = sub.add_parser("cycle")
    c.add_argument("variant", choices=list(VARIANTS))
    c.add_argument("--root", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--sizes", choices=("full", "tiny"), default="full")
    c.add_argument("--suites", default=",".join(SUITES))
    c.add_argument("--restart", action="store_true")
    c.add_argument("--ready-timeout", type=float, default=480)
    c.add_argument("--saturation-rounds", type=int, default=None, help="requests per level = rounds x concurrency")
    c.add_argument("--client-processes", type=int, default=1,
                   help="send saturation levels from this many client processes (one falls behind at 128+ streams)")
    h = sub.add_parser("hot", help="LoRA replica + merged replica of the hot adapter + gateway (benchmarks/hot.py)")
    h.add_argument("--root", type=Path, required=True)
    h.add_argument("--out", type=Path, required=True)
    h.add_argument("--saturation-rounds", type=int, default=None)
    d = sub.add_parser("dual", help="two replicas (one per GPU) vs one, and a switch under load (benchmarks/dual.py)")
    d.add_argument("--root", type=Path, required=True)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--saturation-rounds", type=int, default=4)
    g = sub.add_parser("gateway", help="the project's gateway over the given upstreams (admin key from the env)")
    g.add_argument("--upstream", action="append", required=True)
    g.add_argument("--port", type=int, default=8080)
    g.add_argument("--admin-port", type=int, default=8082)
    g.add_argument("--alias", action="append", default=[], help="ALIAS=VERSION_NAME")
    s = sub.add_parser("stop")
    s.add_argument("--root", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args.root, args.size, args.device)
    elif args.cmd == "cycle":
        sizes = SuiteSizes.full() if args.sizes == "full" else SuiteSizes.tiny()
        if args.saturation_rounds:
            sizes = replace(sizes, saturation_rounds=args.saturation_rounds)
        sizes = replace(sizes, client_processes=args.client_processes)
        cycle(args.variant, args.root, args.out, sizes, tuple(args.suites.split(",")), args.restart, args.ready_timeout)
    elif args.cmd == "hot":
        from benchmarks.hot import run_hot

        sizes = SuiteSizes.full()
        if args.saturation_rounds:
            sizes = replace(sizes, saturation_rounds=args.saturation_rounds)
        run_hot(args.root, args.out, sizes, DOMAINS)
    elif args.cmd == "dual":
        from benchmarks.dual import run_dual

        run_dual(args.root, args.out, replace(SuiteSizes.full(), saturation_rounds=args.saturation_rounds), DOMAINS)
    elif args.cmd == "gateway":
        run_gateway(args.upstream, args.port, args.admin_port, dict(a.split("=", 1) for a in args.alias))
    else:
        stop_server(args.root)


def run_gateway(upstreams: list[str], port: int, admin_port: int, aliases: dict[str, str]) -> None:
    import asyncio

    from service.gateway import create_gateway
    from service.gateway.server import ADMIN_KEY_ENV, serve

    apps = create_gateway(upstreams, admin_key=os.environ[ADMIN_KEY_ENV], initial_aliases=aliases)
    asyncio.run(serve(apps, ("127.0.0.1", port), ("127.0.0.1", admin_port)))


if __name__ == "__main__":
    main()
