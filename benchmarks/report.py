"""Write `docs/benchmarks.md` (tables) and PNG plots under `docs/img/` from the kept JSON results.

    python -m benchmarks.report [--results benchmarks/results] [--doc docs/benchmarks.md] [--img docs/img]

Every number in the document comes from a JSON file in the results folder (one file per variant, as
`benchmarks.device cycle` writes them); the variant's exact server argv, vLLM version, GPU and commit are
printed beside its numbers.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import report_issue23

# Targets of issue 9: (key, label, comparison, threshold).
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("lora_over_base", "LoRA single-stream / base single-stream", ">=", 0.85),
    ("mixed_over_base_128", "mixed-adapter / base-only aggregate tok/s at concurrency 128", ">=", 0.90),
    ("base_tok_s", "base single-stream decode tok/s", ">=", 400.0),
    ("warm_ready_s", "ready after a restart, compile cache kept (s)", "<=", 60.0),
    ("swap_p50_s", "swap (load + first token) p50 from local disk (s)", "<=", 0.150),
)


@dataclass(frozen=True)
class Run:
    name: str
    path: Path
    data: dict[str, Any]

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.data.get("meta", {}))

    @property
    def suites(self) -> dict[str, Any]:
        return dict(self.data.get("suites", {}))


# Runs with their own layout (not one server through the suites): rendered by their own sections.
SPECIAL = ("dual",)


def load_runs(results: Path) -> list[Run]:
    runs = []
    for path in sorted(results.glob("*.json")):
        data = json.loads(path.read_text())
        # A side-by-side run (benchmarks/sidebyside.py, with "passes") has its own section.
        if ("meta" in data and data["meta"].get("variant") not in SPECIAL and "passes" not in data
                and not report_issue23.is_issue23_phase(path)):
            runs.append(Run(str(data["meta"].get("variant", path.stem)), path, data))
    if not runs:
        raise FileNotFoundError(f"no benchmark result JSON (with a 'meta' block) in {results}")
    return runs


def key_numbers(run: Run) -> dict[str, float | None]:
    s = run.suites
    test1 = s.get("test1", {})
    sat = s.get("saturation", {})
    swap = s.get("swap", {})
    paired = s.get("paired", {})
    startup = run.data.get("startup", {})
    return {
        "base_tok_s": test1.get("base_decode_tok_s"),
        "lora_tok_s": test1.get("lora_decode_tok_s_mean"),
        "lora_over_base": test1.get("lora_over_base"),
        # The paired suite's median when a run has it: its two sides ran back to back, several times.
        "mixed_over_base_128": ((paired.get("aggregate_ratio") or {}).get("median") if paired.get("concurrency") == 128
                                else (sat.get("mixed_over_base") or {}).get("128")),
        "cold_ready_s": startup.get("cold_ready_s"),
        "warm_ready_s": startup.get("warm_ready_s"),
        "swap_p50_s": (swap.get("disk") or {}).get("p50"),
        "cpu_tier_ttft_p50_s": (swap.get("cpu_tier_first_token") or {}).get("p50"),
    }


def merged_numbers(run: Run) -> dict[str, float | None]:
    """The merged-replica run: the hot alias (served merged) against the base, both through the gateway."""
    per_model = (run.suites.get("test1") or {}).get("per_model") or {}
    hot = run.meta.get("hot_alias", "medical")
    base = (per_model.get("exaone") or {}).get("mean_decode_tok_s")
    fast = (per_model.get(hot) or {}).get("mean_decode_tok_s")
    others = [m["mean_decode_tok_s"] for name, m in per_model.items() if name not in ("exaone", hot)
              and m.get("mean_decode_tok_s")]
    return {"base_tok_s": base, "hot_tok_s": fast, "hot_over_base": fast / base if fast and base else None,
            "lora_over_base": (sum(others) / len(others)) / base if others and base else None}


def render_hot(run: Run) -> list[str]:
    s, nums = run.suites, merged_numbers(run)
    hot = run.meta.get("hot_alias", "medical")
    lines = ["## Merged replica of the hot adapter (run `hot`)", "",
             f"One GPU shared by the LoRA replica (utilization 0.5) and a merged replica serving `{hot}-v1` with the "
             "adapter folded into the weights (`service.merge`, utilization 0.35); the gateway routes by what each "
             "replica's `/v1/models` lists. Test 1, 15 sequential requests per model, 128 tokens.", "",
             "| path | model | decode tok/s | ITL p50 (ms) | / base (same path) |", "|---|---|---|---|---|"]
    for suite, label in (("test1_direct_lora", "LoRA replica, direct"), ("test1_direct_merged", "merged replica, direct"),
                         ("test1", "through the gateway")):
        per_model = (s.get(suite) or {}).get("per_model") or {}
        base = (per_model.get("exaone") or {}).get("mean_decode_tok_s")
        for model, summ in per_model.items():
            ratio = summ["mean_decode_tok_s"] / base if base and summ["mean_decode_tok_s"] else None
            lines.append(f"| {label} | {model} | {_fmt(summ['mean_decode_tok_s'], 1)} | "
                         f"{_fmt(_ms(summ['itl_s']['p50']), 2)} | {_fmt(ratio)} |")
    lines += ["", f"Through the gateway: `{hot}` (merged) / base = **{_fmt(nums['hot_over_base'])}**; the other "
              f"adapters (LoRA) / base = {_fmt(nums['lora_over_base'])}.", ""]
    routes = run.data.get("gateway_routes") or {}
    if routes:
        lines += ["Gateway routing counters after the run (`exaone_gateway_routed_requests_total`): " +
                  ", ".join(f"`{k}` {v:.0f}" for k, v in sorted(routes.items())), ""]
    for prof in run.data.get("profile") or []:
        lines += [f"Profile of one {prof['output_tokens']}-token request to `{prof['model']}` on the LoRA replica: "
                  f"GPU kernels {prof['kernel_ms_per_token']} ms per token ({prof['kernel_launches_per_token']} "
                  f"launches per token); the profiled request's own ITL p50 was {prof['itl_p50_ms']} ms (profiler "
                  "overhead; unprofiled ITLs are in the table above).", "",
                  "| kernel | ms per token | calls | share |", "|---|---|---|---|"]
        lines += [f"| `{k['kernel'][:90]}` | {k['ms_per_token']} | {k['calls']} | {_fmt(k['share'])} |"
                  for k in prof["top"][:10]]
        lines.append("")
    return lines


def _target_digits(key: str) -> int:
    return 3 if key.endswith("_s") and not key.endswith("tok_s") else 1 if key.endswith("tok_s") else 2


def _gpu_short(run: Run) -> str:
    """`NVIDIA H100 80GB HBM3, 81559 MiB, 580...` -> `H100 80GB HBM3`."""
    return str(run.data.get("meta", {}).get("gpu", "?")).split(",")[0].removeprefix("NVIDIA ").strip()


def _target_cell(run: Run, key: str, value: float | None, digits: int, op: str, threshold: float) -> str:
    if run.name == "hot" and key == "lora_over_base":
        # The hot run's single-stream target is the hot alias through its merged replica; LoRA-served shown beside.
        m = merged_numbers(run)
        return (f"{_fmt(m['hot_over_base'], digits)} ({_met(m['hot_over_base'], op, threshold)}, merged replica; "
                f"LoRA-served {_fmt(m['lora_over_base'], digits)})")
    return f"{_fmt(value, digits)} ({_met(value, op, threshold)})"


def render_dual(data: dict[str, Any]) -> list[str]:
    meta = data.get("meta", {})
    lines = ["## Two replicas, one per GPU (prod-small, issue 11, run `dual`)", "",
             f"{meta.get('description', '')}. GPU: {'; '.join(str(meta.get('gpu')).splitlines())}, "
             f"vLLM {meta.get('vllm_version')}, commit "
             f"`{meta.get('git_commit')}`. Mixed adapters (4), 128 tokens, {meta.get('saturation_rounds')} × "
             f"concurrency requests per level, {meta.get('client_processes')} client processes.", "",
             "| concurrency | one replica tok/s | two, client-balanced tok/s | two via gateway tok/s | "
             "two direct / one | two via gateway / one | failed |", "|---|---|---|---|---|---|---|"]
    for level, row in (data.get("saturation") or {}).items():
        failed = sum(row[k]["requests"] - row[k]["ok"] for k in ("one_replica", "two_direct", "two_gateway"))
        lines.append(f"| {level} | {_fmt(row['one_replica']['aggregate_tok_s'], 0)} | "
                     f"{_fmt(row['two_direct']['aggregate_tok_s'], 0)} | {_fmt(row['two_gateway']['aggregate_tok_s'], 0)} | "
                     f"{_fmt(row['two_direct_over_one'])} | {_fmt(row['two_gateway_over_one'])} | {failed} |")
    sw = data.get("switch_under_load")
    if sw:
        lines += ["", f"Switch `medical` v1 → v2 on both replicas through the gateway under load: HTTP "
                      f"{sw['switch_status']} in {_fmt(sw['switch_s'])} s; {sw['ok']}/{sw['requests']} requests ok, "
                      f"**{sw['failed']} failed**; alias after: `{(sw.get('alias_after') or {}).get('name')}`."]
    if data.get("error"):
        lines += ["", f"Run error: `{data['error'][:300]}`"]
    lines += ["", "```", *[" ".join(map(str, a)) for a in meta.get("replica_argv", [])], "```", ""]
    return lines


# Issue 23's side-by-side runs: the shipped poc config and (in the first run) the candidate tier default, each
# divided by the reference variant measured in the same passes. A run names its shipped variant in
# meta["shipped"] (benchmarks/issue23.py); the first run (machine 8) shipped capture sizes + dual-stream + tiles.
LEGACY_SHIPPED = "capture-dual-stream-lora-tuned"
CANDIDATE = "dual-stream-lora-tuned"
# (summary key, label, digits): the rows of issue 23's table; "every row >= reference" covers the tok/s rows.
SBS_ROWS: tuple[tuple[str, str, int], ...] = (
    ("base_1", "base, one stream (tok/s)", 1),
    ("adapter_1", "adapter, one stream (tok/s)", 1),
    ("adapter_over_base_1", "adapter / base, one stream", 2),
    ("all_models_per_stream", "5 models at once, per stream (tok/s)", 1),
    ("base_8", "8 streams base-only (tok/s)", 0),
    ("mixed_8", "8 streams mixed (tok/s)", 0),
    ("base_32", "32 streams base-only (tok/s)", 0),
    ("mixed_32", "32 streams mixed (tok/s)", 0),
    ("base_128", "128 streams base-only (tok/s)", 0),
    ("mixed_128", "128 streams mixed (tok/s)", 0),
    ("base_256", "256 streams base-only (tok/s)", 0),
    ("mixed_256", "256 streams mixed (tok/s)", 0),
    ("mixed_over_base_128", "128 streams mixed / base-only", 2),
    ("mixed_over_base_256", "256 streams mixed / base-only", 2),
    ("base_itl_p50_ms_32", "32 streams base-only ITL p50 (ms, lower is better)", 2),
    ("base_itl_p50_ms_128", "128 streams base-only ITL p50 (ms, lower is better)", 2),
    ("mixed_itl_p50_ms_128", "128 streams mixed ITL p50 (ms, lower is better)", 2),
    ("base_itl_p50_ms_256", "256 streams base-only ITL p50 (ms, lower is better)", 2),
)
SBS_THROUGHPUT_ROWS = ("base_1", "adapter_1", "all_models_per_stream", "base_8", "mixed_8", "base_32", "mixed_32",
                       "base_128", "mixed_128", "base_256", "mixed_256")


def _stat(summary: dict[str, Any], variant: str, key: str) -> dict[str, Any]:
    return dict((summary.get(variant) or {}).get(key) or {})


def _ratio_cell(st: dict[str, Any]) -> str:
    if st.get("over_reference_median") is None:
        return "–"
    return (f"{_fmt(st['over_reference_median'])} ({_fmt(st['over_reference_min'])}–"
            f"{_fmt(st['over_reference_max'])})")


def _value_cell(st: dict[str, Any], digits: int) -> str:
    if st.get("median") is None:
        return "–"
    return f"{_fmt(st['median'], digits)} ({_fmt(st['min'], digits)}–{_fmt(st['max'], digits)})"


def sbs_targets(summary: dict[str, Any], variant: str,
                measured: dict[str, tuple[str, str]] | None = None) -> list[tuple[str, str, str]]:
    """(target id, value, verdict) of issue 23's targets for one variant of a side-by-side run; `measured`
    holds the rows the issue-23 runner's other phases measured (`report_issue23.targets`)."""
    measured = measured or {}
    # Rows a run did not measure (levels it left out) are no verdict either way.
    below = [key for key in SBS_THROUGHPUT_ROWS
             if (r := _stat(summary, variant, key).get("over_reference_median")) is not None and r < 1.0]
    every = ("all rows ≥ 1.00" if not below else
             "below on " + ", ".join(f"{k} {_fmt(_stat(summary, variant, k).get('over_reference_median'))}"
                                     for k in below))
    adapter = _stat(summary, variant, "adapter_over_base_1").get("median")
    mixed = _stat(summary, variant, "mixed_over_base_128").get("median")
    return [("every_row", every, "**met**" if not below else "missed"),
            ("adapter_over_base", _fmt(adapter), _met(adapter, ">=", 0.90)),
            ("mixed_over_base_128", _fmt(mixed), _met(mixed, ">=", 0.90)),
            *[(t, *measured.get(t, ("–", "not measured")))
              for t in ("gateway_128", "ready", "merged_hot", "adapter_scaling", "training")]]


SBS_TARGET_LABELS = {
    "every_row": "shipped / reference ≥ 1.00 on every tok/s row (medians of per-pass ratios)",
    "adapter_over_base": "adapter one stream ≥ 0.90× base (LoRA replica)",
    "mixed_over_base_128": "mixed / base-only at 128 streams ≥ 0.90",
    "gateway_128": "through the gateway, 128 streams ≥ 0.95× direct",
    "ready": "ready after restart ≤ 45 s, cold ≤ 150 s with tuned tiles restored",
    "merged_hot": "hot adapter through the gateway and its merged replica ≥ 1.0× base",
    "adapter_scaling": "128 streams over 64 adapters ≥ 0.8× of 4 adapters",
    "training": "training ≥ 100 samples/s at the reference hyperparameters, same loss curve, beside the reference",
}


def render_sidebyside(data: dict[str, Any], path: Path, limits: dict[str, str],
                      measured: dict[str, tuple[str, str]] | None = None,
                      heading: str = "## Reference vs shipped config, same machine (issue 23)") -> list[str]:
    """One side-by-side run: its table and issue 23's target rows (with `measured` from the runner's other
    phases), then every variant's medians and argv."""
    meta, summary = data.get("meta", {}), data.get("summary") or {}
    shipped_v = meta.get("shipped", LEGACY_SHIPPED)
    variants = list(summary)
    reference = meta.get("reference", variants[0] if variants else "reference")
    passes = data.get("passes") or []
    runner = "benchmarks/issue23.py" if meta.get("runner") == "issue23" else "benchmarks/sidebyside.py"
    lines = [heading, "",
             f"One run of `{runner}` (`{path.name}`): GPU {str(meta.get('gpu')).split(',')[0]}, "
             f"vLLM {meta.get('vllm_version')}, commit `{meta.get('git_commit')}`, {meta.get('utc')}. Every variant's "
             f"server up at once on the one GPU, each at `--gpu-memory-utilization {meta.get('utilization')}` and "
             "`--max-num-seqs 256` (same KV capacity for all; "
             + ", ".join(f"`{v}` {_fmt(s.get('preemptions'), 0)}" for v, s in (data.get("servers") or {}).items())
             + " preemptions), only the measured one loaded; "
             f"{len(passes)} passes, each measuring every variant, in reverse order every other pass "
             f"({' → '.join(passes[0]['order']) if passes else ''} first). Per variant and pass: "
             f"{meta.get('single_requests')} sequential requests to the base and to the adapters in turn, the 5 models "
             f"at once, and base-only / mixed (4 adapters) at {', '.join(map(str, meta.get('levels', [])))} streams "
             f"({meta.get('rounds')} × streams requests, {meta.get('client_processes')} client processes, the two "
             f"modes alternating which goes first); {meta.get('max_tokens')} forced output tokens. Cells: median "
             "(min–max) over passes; ratios are medians of the per-pass ratio to the reference (min–max).", ""]
    if reference in summary and shipped_v in summary:
        extra = CANDIDATE in summary and shipped_v != CANDIDATE
        lines += [f"| measure | reference (`{reference}`) | shipped (`{shipped_v}`) | shipped / reference |"
                  + (f" candidate (`{CANDIDATE}`) | candidate / reference |" if extra else ""),
                  "|---|---|---|---|" + ("---|---|" if extra else "")]
        for key, label, digits in SBS_ROWS:
            ref, ship = _stat(summary, reference, key), _stat(summary, shipped_v, key)
            row = f"| {label} | {_value_cell(ref, digits)} | {_value_cell(ship, digits)} | {_ratio_cell(ship)} |"
            if extra:
                cand = _stat(summary, CANDIDATE, key)
                row += f" {_value_cell(cand, digits)} | {_ratio_cell(cand)} |"
            lines.append(row)
        lines += ["", "### Targets of issue 23", "",
                  f"| target | shipped (`{shipped_v}`) |" + (f" candidate (`{CANDIDATE}`) |" if extra else "")
                  + " what limits it |", "|---|---|" + ("---|" if extra else "") + "---|"]
        shipped = sbs_targets(summary, shipped_v, measured)
        cand_targets = dict((t, (v, m)) for t, v, m in sbs_targets(summary, CANDIDATE)) if extra else {}
        for target, value, verdict in shipped:
            cv, cm = cand_targets.get(target, ("–", "not measured"))
            lines.append(f"| {SBS_TARGET_LABELS[target]} | {value} ({verdict}) | " + (f"{cv} ({cm}) | " if extra else "")
                         + f"{limits.get(target, '')} |")
        lines.append("")
    lines += ["### One factor at a time", "",
              "Median over passes (and the median per-pass ratio to the reference).", "",
              "| measure | " + " | ".join(f"`{v}`" for v in variants) + " |", "|---|" + "---|" * len(variants)]
    for key, label, digits in SBS_ROWS:
        cells = []
        for v in variants:
            st = _stat(summary, v, key)
            ratio = st.get("over_reference_median")
            cells.append(f"{_fmt(st.get('median'), digits)}" + ("" if v == reference or ratio is None
                                                                 else f" (×{_fmt(ratio)})"))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "<details><summary>Server argv and environment of each variant</summary>", ""]
    for v, server in (data.get("servers") or {}).items():
        env = {k: val for k, val in (server.get("env") or {}).items() if k.startswith("VLLM_L")}
        lines += [f"- `{v}`: {server.get('description', '')}; env {env}", "", "```",
                  " ".join(map(str, server.get("argv", []))), "```", ""]
    lines += ["</details>", ""]
    return lines


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _met(value: float | None, op: str, threshold: float) -> str:
    if value is None:
        return "not measured"
    ok = value >= threshold if op == ">=" else value <= threshold
    return "**met**" if ok else "missed"


def plot_saturation(runs: list[Run], img: Path) -> list[Path]:
    """Throughput and p50/p99 end-to-end latency vs concurrency, one line per variant and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    fig_lat, ax_lat = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        for mode, levels in (run.suites.get("saturation", {}).get("modes") or {}).items():
            conc = [lv["concurrency"] for lv in levels]
            style = "-" if mode == "base_only" else "--"
            ax.plot(conc, [lv.get("aggregate_tok_s") or 0 for lv in levels], style, marker="o", label=f"{run.name} {mode}")
            ax_lat.plot(conc, [lv["e2e_s"]["p50"] or 0 for lv in levels], style, marker="o", label=f"{run.name} {mode} p50")
            ax_lat.plot(conc, [lv["e2e_s"]["p99"] or 0 for lv in levels], style, marker="x", alpha=0.6,
                        label=f"{run.name} {mode} p99")
    for axis, fig_, title, ylabel, name in (
        (ax, fig, "Aggregate throughput vs concurrency", "output tok/s", "throughput_vs_concurrency.png"),
        (ax_lat, fig_lat, "End-to-end latency vs concurrency", "seconds per request", "latency_vs_concurrency.png"),
    ):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent requests")
        axis.set_ylabel(ylabel)
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
        fig_.tight_layout()
        path = img / name
        fig_.savefig(path, dpi=110)
        made.append(path)
        plt.close(fig_)
    return made


def plot_ratios(runs: list[Run], img: Path) -> Path:
    """LoRA/base single-stream and mixed/base (concurrency 128) per variant, against the targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in runs]
    nums = [key_numbers(r) for r in runs]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    xs = range(len(runs))
    ax.bar([x - width / 2 for x in xs], [n["lora_over_base"] or 0 for n in nums], width, label="LoRA / base, single stream")
    ax.bar([x + width / 2 for x in xs], [n["mixed_over_base_128"] or 0 for n in nums], width,
           label="mixed / base-only, concurrency 128")
    ax.axhline(0.85, color="C0", linestyle=":", label="target 0.85")
    ax.axhline(0.90, color="C1", linestyle=":", label="target 0.90")
    ax.set_xticks(list(xs), names)
    ax.set_ylim(0, 1.2)
    ax.set_title("LoRA / base ratios")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = img / "lora_base_ratios.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ttft(runs: list[Run], img: Path) -> Path:
    """TTFT p50/p99 vs concurrency (mixed adapters), the latency users feel first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        for mode, levels in (run.suites.get("saturation", {}).get("modes") or {}).items():
            conc = [lv["concurrency"] for lv in levels]
            style = "-" if mode == "base_only" else "--"
            ax.plot(conc, [lv["ttft_s"]["p50"] or 0 for lv in levels], style, marker="o", label=f"{run.name} {mode} p50")
            ax.plot(conc, [lv["ttft_s"]["p99"] or 0 for lv in levels], style, marker="x", alpha=0.6,
                    label=f"{run.name} {mode} p99")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("TTFT seconds")
    ax.set_title("Time to first token vs concurrency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = img / "ttft_vs_concurrency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(runs: list[Run], images: list[Path], doc: Path, preface: str = "",
           dual: dict[str, Any] | None = None,
           sidebyside: list[tuple[Path, dict[str, Any]]] | None = None,
           limits: dict[str, dict[str, str]] | None = None, issue23: dict[str, dict[str, Any]] | None = None,
           extra_lines: list[str] | None = None) -> str:
    rel = [os.path.relpath(p, doc.parent) for p in images]
    lines = ["# Serving benchmarks", "",
             "Generated by `python -m benchmarks.report` from the JSON in `benchmarks/results/`; do not edit by hand.",
             ""]
    if preface:
        lines += [preface.strip(), ""]
    # The issue-23 runner's side-by-side file is the current run; earlier side-by-side runs follow it.
    ordered = sorted(sidebyside or [], key=lambda pd: pd[1].get("meta", {}).get("runner") != "issue23")
    for i, (path, data) in enumerate(ordered):
        current = data.get("meta", {}).get("runner") == "issue23"
        heading = ("## Reference vs shipped config, same machine (issue 23)" if i == 0 else
                   f"## Earlier side-by-side run (`{path.name}`, issue 23)")
        lines += render_sidebyside(data, path, (limits or {}).get(path.name, {}),
                                   report_issue23.targets(issue23 or {}) if current else None, heading)
        if current and extra_lines:
            lines += extra_lines

    # One row per run: the runs outnumber the targets, and a row reads as one configuration's verdict.
    lines += ["## Targets (issue 9)", "",
              "| run | GPU | " + " | ".join(f"{label} {op} {threshold:g}" for _, label, op, threshold in TARGETS) + " |",
              "|---|---|" + "---|" * len(TARGETS)]
    for run in runs:
        nums = key_numbers(run)
        cells = [_target_cell(run, key, nums[key], _target_digits(key), op, threshold)
                 for key, _, op, threshold in TARGETS]
        lines.append(f"| {run.name} | {_gpu_short(run)} | " + " | ".join(cells) + " |")
    lines.append("")

    paired_runs = [r for r in runs if r.suites.get("paired")]
    if paired_runs:
        lines += ["## Paired: mixed adapters vs base only, back to back", "",
                  "Each pair runs both modes at one concurrency seconds apart, alternating which goes first; the "
                  "target column above uses the median aggregate ratio of such runs.", "",
                  "| run | streams | pairs | aggregate mixed/base median (min–max) | "
                  "ITL p50 base/mixed median (min–max) |", "|---|---|---|---|---|"]
        for run in paired_runs:
            p = run.suites["paired"]
            agg = p["aggregate_ratio"] or {"median": None, "min": None, "max": None}
            itl = p["itl_p50_ratio"] or {"median": None, "min": None, "max": None}
            lines.append(f"| {run.name} | {p['concurrency']} | {len(p['pairs'])} | {_fmt(agg['median'], 2)} "
                         f"({_fmt(agg['min'], 2)}–{_fmt(agg['max'], 2)}) | {_fmt(itl['median'], 2)} "
                         f"({_fmt(itl['min'], 2)}–{_fmt(itl['max'], 2)}) |")
        lines.append("")

    lines += ["## Seed Test 1: sequential, one stream per model", "",
              "| variant | model | requests | decode tok/s | e2e tok/s | TTFT p50 (ms) | ITL p50 (ms) |",
              "|---|---|---|---|---|---|---|"]
    for run in runs:
        for model, summ in (run.suites.get("test1", {}).get("per_model") or {}).items():
            lines.append(f"| {run.name} | {model} | {summ['ok']}/{summ['requests']} | {_fmt(summ['mean_decode_tok_s'], 1)} | "
                         f"{_fmt(summ['mean_e2e_tok_s'], 1)} | {_fmt(_ms(summ['ttft_s']['p50']), 1)} | "
                         f"{_fmt(_ms(summ['itl_s']['p50']), 2)} |")
    lines.append("")

    lines += ["## Seed Test 2: every model at once", "",
              "| variant | rounds | per-stream decode tok/s (min–max) | round wall (s) |", "|---|---|---|---|"]
    for run in runs:
        t2 = run.suites.get("test2")
        if t2:
            walls = ", ".join(_fmt(r["wall_s"]) for r in t2["rounds"])
            lines.append(f"| {run.name} | {len(t2['rounds'])} | {_fmt(t2['per_stream_decode_tok_s_min'], 1)}–"
                         f"{_fmt(t2['per_stream_decode_tok_s_max'], 1)} | {walls} |")
    lines.append("")

    lines += ["## Saturation: aggregate throughput and latency", "",
              "Client processes: how many processes sent the level (one Python process falls behind at ~13k stream "
              "chunks/s, so single-process rows at 128+ streams measure the client too).", "",
              "| variant | mode | concurrency | client processes | requests | agg tok/s | TTFT p50 / p99 (ms) | "
              "e2e p50 / p99 (s) | ITL p50 (ms) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for mode, levels in (run.suites.get("saturation", {}).get("modes") or {}).items():
            for lv in levels:
                lines.append(
                    f"| {run.name} | {mode} | {lv['concurrency']} | {lv.get('client_processes', 1)} | "
                    f"{lv['ok']}/{lv['requests']} | "
                    f"{_fmt(lv.get('aggregate_tok_s'), 0)} | {_fmt(_ms(lv['ttft_s']['p50']), 0)} / "
                    f"{_fmt(_ms(lv['ttft_s']['p99']), 0)} | {_fmt(lv['e2e_s']['p50'])} / {_fmt(lv['e2e_s']['p99'])} | "
                    f"{_fmt(_ms(lv['itl_s']['p50']), 2)} |")
    lines.append("")
    lines += ["| variant | mixed / base-only aggregate, by concurrency |", "|---|---|"]
    for run in runs:
        ratios = run.suites.get("saturation", {}).get("mixed_over_base") or {}
        lines.append(f"| {run.name} | " + ", ".join(f"{c}: {_fmt(v)}" for c, v in ratios.items()) + " |")
    lines.append("")

    lines += ["## Adapter swap and time to ready", "",
              "| variant | load+first token p50 / p90 (ms) | load only p50 (ms) | CPU-tier first token p50 (ms) | "
              "base first token p50 (ms) | ready cold (s) | ready warm (s) |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        swap = run.suites.get("swap") or {}
        disk = swap.get("disk") or {}
        startup = run.data.get("startup", {})
        lines.append(f"| {run.name} | {_fmt(_ms(disk.get('p50')), 0)} / {_fmt(_ms(disk.get('p90')), 0)} | "
                     f"{_fmt(_ms((swap.get('disk_load_only') or {}).get('p50')), 0)} | "
                     f"{_fmt(_ms((swap.get('cpu_tier_first_token') or {}).get('p50')), 0)} | "
                     f"{_fmt(_ms((swap.get('base_first_token') or {}).get('p50')), 0)} | "
                     f"{_fmt(startup.get('cold_ready_s'), 0)} | {_fmt(startup.get('warm_ready_s'), 0)} |")
    lines.append("")

    lines += ["## Quality-matrix shape", "",
              "Random weights make the text meaningless; the matrix checks every (prompt, model) cell answers with the "
              "requested length.", "", "| variant | cells | all answered | output tokens per cell |", "|---|---|---|---|"]
    for run in runs:
        q = run.suites.get("quality")
        if q:
            toks = sorted({c["output_tokens"] for c in q["cells"]})
            lines.append(f"| {run.name} | {len(q['cells'])} | {q['all_ok']} | {', '.join(map(str, toks))} |")
    lines.append("")

    for run in runs:
        if run.name == "hot":
            lines += render_hot(run)
    if dual:
        lines += render_dual(dual)

    if images:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in rel] + [""]

    lines += ["## Exactly what ran", ""]
    for run in runs:
        m = run.meta
        lines += [f"### {run.name}", "", f"- {m.get('description', '')}", f"- vLLM {m.get('vllm_version')}, GPU: "
                  f"{m.get('gpu')}, commit `{m.get('git_commit')}`, at {m.get('utc')}", f"- result file: `{run.path.name}`",
                  *([f"- note: {m['note']}"] if m.get("note") else []),
                  "", "```", " ".join(str(a) for a in m.get("server_argv", [])), "```", ""]
        log = run.data.get("startup", {}).get("cold_log") or []
        if log:
            lines += ["<details><summary>vLLM startup log lines (cold)</summary>", "", "```", *log[:30], "```",
                      "</details>", ""]
    return "\n".join(lines) + "\n"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def generate(results: Path, doc: Path, img: Path, preface_file: Path | None = None) -> Path:
    runs = load_runs(results)
    img.mkdir(parents=True, exist_ok=True)
    images = [*plot_saturation(runs, img), plot_ttft(runs, img), plot_ratios(runs, img)]
    preface = preface_file.read_text() if preface_file and preface_file.exists() else ""
    doc.parent.mkdir(parents=True, exist_ok=True)
    dual_path = results / "dual.json"
    dual = json.loads(dual_path.read_text()) if dual_path.exists() else None
    sidebyside = [(p, data) for p in sorted(results.glob("*.json")) if not report_issue23.is_issue23_phase(p)
                  and "passes" in (data := json.loads(p.read_text())) and "meta" in data]
    # Hand-written "what limits it" texts, per side-by-side result file.
    limits_path = Path(__file__).with_name("sidebyside_limits.json")
    limits = json.loads(limits_path.read_text()) if limits_path.exists() else {}
    issue23 = report_issue23.load_issue23(results)
    extra_lines, _ = report_issue23.render(issue23, img, doc)
    doc.write_text(render(runs, images, doc, preface, dual, sidebyside, limits, issue23, extra_lines))
    return doc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--doc", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--img", type=Path, default=Path("docs/img"))
    parser.add_argument("--preface", type=Path, default=Path("benchmarks/preface.md"),
                        help="hand-written analysis placed above the generated tables")
    args = parser.parse_args(argv)
    print(generate(args.results, args.doc, args.img, args.preface))


if __name__ == "__main__":
    main()
