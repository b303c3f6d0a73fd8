"""The parts of `docs/benchmarks.md` that come from `benchmarks/issue23.py`'s phase files (`issue23-*.json`):
ready times, gateway vs direct, adapter scaling (table and plot), hot adapter, and their issue-23 target rows;
and the training side by side (`issue23-training-*.json`, `benchmarks/train_speed.py` runs of one device call).

`report.py` owns the document; this module turns one run's phase files into target verdicts and sections.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

# Issue 23's thresholds (one place): restart and cold ready seconds, gateway/direct, hot/base, 64/4 adapters.
RESTART_MAX_S, COLD_MAX_S = 45.0, 150.0
GATEWAY_MIN, HOT_MIN, SCALING_MIN = 0.95, 1.0, 0.8
TRAINING_MIN_SAMPLES_S = 100.0
SCALING_KEY = "64"  # adapters whose aggregate is compared with the first (4) count


def load_issue23(results: Path) -> dict[str, dict[str, Any]]:
    """Phase name (`ready`, `gateway`, `scaling-4`, `hot`, ...) -> its JSON; the side-by-side phase is left to
    the side-by-side renderer."""
    return {p.stem.removeprefix("issue23-"): json.loads(p.read_text()) for p in sorted(results.glob("issue23-*.json"))
            if p.stem != "issue23-sidebyside"}


def is_issue23_phase(path: Path) -> bool:
    return path.stem.startswith("issue23-") and path.stem != "issue23-sidebyside"


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "missed")


def _median(spread: dict[str, Any] | None) -> float | None:
    return None if not spread else spread.get("median")


def _spread_cell(spread: dict[str, Any] | None, digits: int = 2) -> str:
    if not spread or spread.get("median") is None:
        return "–"
    return f"{_f(spread['median'], digits)} ({_f(spread['min'], digits)}–{_f(spread['max'], digits)})"


def scaling_runs(i23: dict[str, dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(GPU slots, phase JSON) of every scaling run, fewest slots (the tier's) first."""
    runs = [(int(d["meta"]["gpu_slots"]), d) for k, d in i23.items() if k.startswith("scaling-") and d.get("passes")]
    return sorted(runs, key=lambda r: r[0])


def training_runs(i23: dict[str, dict[str, Any]]) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any] | None]:
    """(name, train_speed JSON) of the shipped configuration's runs, in call order, and the reference's run."""
    shipped = sorted(((k.removeprefix("training-"), d) for k, d in i23.items() if k.startswith("training-shipped")),
                     key=lambda r: r[1].get("provenance", {}).get("order_in_call", 0))
    return shipped, i23.get("training-reference")


def _loss_gap(a: dict[str, Any], b: dict[str, Any]) -> tuple[int, float, int, float]:
    """(steps compared, largest |loss difference|, the step it is at, largest from step 3 on) over the steps both
    runs made."""
    gaps = [abs(x - y) for x, y in zip(a["loss_curve"], b["loss_curve"], strict=False)]
    at = max(range(len(gaps)), key=gaps.__getitem__)
    return len(gaps), gaps[at], at + 1, max(gaps[2:], default=0.0)


def targets(i23: dict[str, dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Target id (report.SBS_TARGET_LABELS) -> (value cell, verdict) for what the phase files measured."""
    out: dict[str, tuple[str, str]] = {}
    starts = (i23.get("ready") or {}).get("starts") or {}
    restart = (starts.get("shipped_restart") or {}).get("ready_s")
    cold = (starts.get("shipped_cold") or {}).get("ready_s")
    if restart is not None or cold is not None:
        ok = None if restart is None or cold is None else restart <= RESTART_MAX_S and cold <= COLD_MAX_S
        out["ready"] = (f"restart {_f(restart, 1)} s, cold {_f(cold, 1)} s", _verdict(ok))
    gw = (i23.get("gateway") or {}).get("summary") or {}
    base, mixed = _median(gw.get("base_only_gateway_over_direct")), _median(gw.get("mixed_adapters_gateway_over_direct"))
    if base is not None or mixed is not None:
        out["gateway_128"] = (f"base-only {_f(base)}, mixed {_f(mixed)}",
                              _verdict(base is not None and mixed is not None and min(base, mixed) >= GATEWAY_MIN))
    hot = _median(((i23.get("hot") or {}).get("summary") or {}).get("hot_over_base"))
    if hot is not None:
        out["merged_hot"] = (_f(hot), _verdict(hot >= HOT_MIN))
    shipped, reference = training_runs(i23)
    if shipped and reference:
        rates = sorted(d["samples_per_s"] for _, d in shipped)
        median = statistics.median(rates)
        steps, _, _, later = _loss_gap(shipped[0][1], reference)
        out["training"] = (f"{_f(median, 1)} samples/s ({_f(rates[0], 1)}–{_f(rates[-1], 1)}, {len(rates)} runs) vs "
                           f"reference {_f(reference['samples_per_s'], 1)} (× {_f(median / reference['samples_per_s'], 1)}); "
                           f"loss within {_f(later, 3)} of the reference's from step 3 to {steps}",
                           _verdict(median >= TRAINING_MIN_SAMPLES_S))
    runs = scaling_runs(i23)
    if runs:
        # Met when any measured slot count reaches it: the slot count is a stack setting (`maxLoras`).
        ratios = [(slots, _median((run.get("summary_over_first") or {}).get(SCALING_KEY))) for slots, run in runs]
        cell = "; ".join(f"{_f(ratio)} ({slots} GPU slots)" for slots, ratio in ratios)
        measured = [ratio for _, ratio in ratios if ratio is not None]
        out["adapter_scaling"] = (cell, _verdict(max(measured) >= SCALING_MIN if measured else None))
    return out


def render(i23: dict[str, dict[str, Any]], img: Path, doc: Path) -> tuple[list[str], list[Path]]:
    """Markdown sections for the phases present, and the plots written."""
    lines: list[str] = []
    images: list[Path] = []
    ready = i23.get("ready")
    if ready:
        m = ready.get("meta", {})
        lines += ["### Ready times (issue 23 runner)", "",
                  f"`issue23-ready.json`: GPU {str(m.get('gpu')).split(',')[0]}, vLLM {m.get('vllm_version')}, commit "
                  f"`{m.get('git_commit')}`, {m.get('utc')}. {m.get('description', '')}; utilization "
                  f"{m.get('utilization')}; tiles: {ready.get('tiles', {})}. Timeline: seconds from process start to "
                  "the first log line of each milestone; vLLM's durations are its own log's.", "",
                  "| start | ready (s) | imports done | engine process up | model loaded | torch.compile done | "
                  "KV cache allocated | graph capture started | engine initialised | weights load (s) | "
                  "torch.compile (s) | graph capture (s) | init engine (s) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, st in (ready.get("starts") or {}).items():
            t, d = st.get("timeline_s") or {}, st.get("vllm_durations_s") or {}
            lines.append(f"| {name} | {_f(st.get('ready_s'), 1)} | " + " | ".join(
                _f(t.get(k), 1) for k in ("api_process_up", "engine_core_started", "model_loaded", "compile_done",
                                          "kv_cache_allocated", "graph_capture_started", "engine_initialised"))
                + " | " + " | ".join(
                _f(d.get(k), 1) for k in ("weights_load_s", "torch_compile_s", "graph_capture_s", "init_engine_s"))
                + " |")
        lines.append("")
    gw = i23.get("gateway")
    if gw:
        m = gw.get("meta", {})
        lines += ["### Through the gateway vs direct, 128 streams (issue 23 runner)", "",
                  f"`issue23-gateway.json`: the project's gateway (`{' '.join(m.get('gateway_argv', [])[1:6])} ...`, the "
                  f"command its systemd unit runs, loopback without an API key) over the shipped replica; "
                  f"{m.get('streams')} streams, {m.get('rounds')} × streams requests per measurement, "
                  f"{m.get('client_processes')} client processes, direct and gateway alternating which goes first.", "",
                  "| pass | first | base-only direct (tok/s) | base-only gateway | gateway / direct | mixed direct | "
                  "mixed gateway | gateway / direct |", "|---|---|---|---|---|---|---|---|"]
        for i, p in enumerate(gw.get("passes") or []):
            lines.append(f"| {i} | {p['order'][0]} | {_f(p['direct']['base_only']['aggregate_tok_s'], 0)} | "
                         f"{_f(p['gateway']['base_only']['aggregate_tok_s'], 0)} | {_f(p['base_only_gateway_over_direct'])} | "
                         f"{_f(p['direct']['mixed_adapters']['aggregate_tok_s'], 0)} | "
                         f"{_f(p['gateway']['mixed_adapters']['aggregate_tok_s'], 0)} | "
                         f"{_f(p['mixed_adapters_gateway_over_direct'])} |")
        s = gw.get("summary") or {}
        lines += [f"| median (min–max) | | | | {_spread_cell(s.get('base_only_gateway_over_direct'))} | | | "
                  f"{_spread_cell(s.get('mixed_adapters_gateway_over_direct'))} |", ""]
    runs = scaling_runs(i23)
    if runs:
        m = runs[0][1].get("meta", {})
        lines += ["### Scaling with the number of adapters (issue 23 runner)", "",
                  f"{m.get('streams')} streams spread round-robin over N distinct rank-32 adapters "
                  f"({m.get('adapters')}), {m.get('rounds')} × streams requests per measurement, "
                  f"{m.get('client_processes')} client processes, passes alternating the order of N; shipped config "
                  f"with `--max-cpu-loras {m.get('max_cpu_loras')}`. Aggregate tok/s median (min–max) over passes; "
                  "running adapters: adapters vLLM's `lora_requests_info` gauge showed running at once (median of its "
                  "samples / max, one value per pass), waiting: median adapters it listed as waiting.", "",
                  "| GPU slots | adapters | aggregate tok/s | × of 4 adapters | running adapters (median / max) | "
                  "waiting adapters | load all (s) | preemptions |", "|---|---|---|---|---|---|---|---|"]
        for slots, run in runs:
            for n in run["meta"]["counts"]:
                key = str(n)
                gauges = [p[key]["lora_gauge"] for p in run["passes"] if key in p]
                med = [g.get("running_adapters_median") for g in gauges]
                mx = [g.get("running_adapters_max") for g in gauges]
                wait = [g.get("waiting_adapters_median") for g in gauges]
                lines.append(f"| {slots} | {n} | {_spread_cell(run['summary'].get(key), 0)} | "
                             f"{_spread_cell(run['summary_over_first'].get(key))} | "
                             f"{', '.join(map(_f, med))} / {', '.join(map(_f, mx))} | {', '.join(map(_f, wait))} | "
                             f"{_f(run.get('load_all_s'), 1)} | {_f(run.get('preemptions'), 0)} |")
        lines.append("")
        images.append(plot_scaling(runs, img))
        lines += [f"![adapter scaling]({os.path.relpath(images[-1], doc.parent)})", ""]
    shipped, reference = training_runs(i23)
    if shipped and reference:
        lines += _training_section(shipped, reference)
    hot = i23.get("hot")
    if hot:
        s = hot.get("summary") or {}
        lines += ["### Hot adapter through the gateway: merged replica vs base (issue 23 runner)", "",
                  f"`issue23-hot.json`: merged replica of `{hot['meta'].get('hot_alias')}` beside the shipped LoRA "
                  f"replica, the gateway over both; {hot['meta'].get('requests')} sequential requests per model per "
                  f"pass, alternating. Hot / base single-stream decode: {_spread_cell(s.get('hot_over_base'))}; "
                  f"merge {hot.get('merge_s')} s, merged replica ready {hot.get('merged_ready_s')} s; gateway routes "
                  f"{hot.get('gateway_routes', {})}.", ""]
    return lines, images


def _training_section(shipped: list[tuple[str, dict[str, Any]]], reference: dict[str, Any]) -> list[str]:
    prov = reference.get("provenance", {})
    settings = reference.get("settings", {})
    steps, first, first_at, later = _loss_gap(shipped[0][1], reference)
    lines = ["### Training speed side by side (issue 23)", "",
             f"`issue23-training-*.json`: `benchmarks/train_speed.py` runs of device call {prov.get('device_call')}, "
             f"GPU {prov.get('gpu')}, " + ", ".join(f"{k} {v}" for k, v in (prov.get("versions") or {}).items())
             + f", tree of commit `{prov.get('tree')}`, {prov.get('date')}. Same random-weight 2.4B checkpoint, data "
             f"(seed {settings.get('seed')}, {reference.get('mean_sample_tokens')} tokens per sample), LoRA rank "
             f"{settings.get('rank')} on all linear modules, dropout {settings.get('lora_dropout')}, effective batch "
             f"{reference.get('rows_per_step')} samples, {settings.get('warmup_steps')} untimed then "
             f"{settings.get('steps')} timed steps. Command: `{prov.get('command')}`.", "",
             "| run | order in call | micro-batch × accumulation | samples/s | tokens/s | MFU | peak GiB | "
             "median step (ms) | loss step 1 | loss last timed step |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, run in [*shipped, ("reference", reference)]:
        st = run.get("settings", {})
        step_ms = sorted(run.get("step_ms") or [0.0])
        lines.append(f"| {name} | {run.get('provenance', {}).get('order_in_call')} | {st.get('micro_batch')} × "
                     f"{st.get('grad_accum')} | {_f(run['samples_per_s'], 1)} | {_f(run['tokens_per_s'], 0)} | "
                     f"{_f(run.get('mfu'))} | {_f(run.get('peak_memory_gib'), 1)} | {_f(step_ms[len(step_ms) // 2], 1)} | "
                     f"{_f(run['loss_curve'][0], 3)} | {_f(run['loss_curve'][steps - 1], 3)} |")
    return [*lines, "", f"Loss curves, shipped vs reference, steps 1–{steps}: largest difference {_f(first, 3)} "
            f"(step {first_at}), {_f(later, 3)} from step 3 on. Details and every other round-5 run: "
            "`docs/training-benchmarks.md`.", ""]


def plot_scaling(runs: list[tuple[int, dict[str, Any]]], img: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for slots, run in runs:
        counts = run["meta"]["counts"]
        ax.plot(counts, [run["summary"][str(n)]["median"] for n in counts], marker="o", label=f"{slots} GPU slots")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("distinct adapters (round-robin)")
    ax.set_ylabel(f"aggregate tok/s at {runs[0][1]['meta']['streams']} streams")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = img / "adapter_scaling.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
