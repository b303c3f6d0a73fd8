"""The benchmark client, suites and report generator, run against the session's real CPU vLLM at tiny sizes.

The H100 numbers come from `benchmarks.device`; these tests keep that code from rotting where CI has no GPU.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.client import Job, percentile, run_jobs, summarize
from benchmarks.report import generate, key_numbers, load_runs
from benchmarks.suites import DOMAIN_PROMPTS, GENERIC_PROMPT, SuiteSizes, Target, prompt_for, run_all
from benchmarks.variants import REPO_ROOT, VARIANTS, variant_launch
from exaone_lora.spec import load_spec
from tests.support.processes import RunningProcess


def test_stream_counts_tokens_from_the_stream_not_the_text(vllm: RunningProcess) -> None:
    jobs = [Job("exaone", "hello", 6), Job("exaone", "world", 6)]
    results, wall = asyncio.run(run_jobs(vllm.url, jobs, concurrency=2, timeout_s=120))
    assert wall > 0
    for r in results:
        assert r.ok, r.error
        # ignore_eos + max_tokens: exactly the asked length, even if random weights decode to "".
        assert r.output_tokens == 6
        assert r.ttft_s is not None and 0 < r.ttft_s <= r.e2e_s
        assert len(r.itl_s) == 5
    summary = summarize(results, wall)
    assert summary["ok"] == 2 and summary["output_tokens"] == 12
    assert summary["aggregate_tok_s"] > 0


def test_a_bad_model_is_an_error_result_not_an_exception(vllm: RunningProcess) -> None:
    results, _ = asyncio.run(run_jobs(vllm.url, [Job("no-such-adapter", "x", 2)], concurrency=1, timeout_s=60))
    assert not results[0].ok
    assert "HTTP 404" in (results[0].error or "") or "HTTP 400" in (results[0].error or "")


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0


def test_variants_render_through_the_shipped_launcher() -> None:
    seed = variant_launch("seed", "/m", "/root/bench")
    assert "--max-loras" in seed.args and seed.args[seed.args.index("--gpu-memory-utilization") + 1] == "0.9"
    tuned = variant_launch("tuned", "/m", "/root/bench")
    assert "--compilation-config" in tuned.args
    # Each variant's caches are its own, so its first start on a machine is a cold start.
    assert tuned.env["VLLM_CACHE_ROOT"] != seed.env["VLLM_CACHE_ROOT"]
    assert set(VARIANTS) >= {"poc-shipped", "seed", "tuned"}
    dual = variant_launch("seed-dual-stream", "/m", "/root/bench")
    assert dual.env["VLLM_LORA_ENABLE_DUAL_STREAM"] == "1" and dual.args == seed.args  # the seed config plus one option
    assert "VLLM_LORA_ENABLE_DUAL_STREAM" not in seed.env
    # The poc stack's own serverArgs/serverEnv never leak into a variant: the seed stays vLLM's defaults.
    assert "--compilation-config" not in seed.args and load_spec("poc", REPO_ROOT).server_env
    capture, capture_dual = variant_launch("capture", "/m", "/r"), variant_launch("capture-dual-stream", "/m", "/r")
    assert "--compilation-config" in capture.args and capture_dual.args == capture.args
    assert "VLLM_LORA_ENABLE_DUAL_STREAM" not in capture.env and capture_dual.env["VLLM_LORA_ENABLE_DUAL_STREAM"] == "1"


def test_every_run_sends_an_adapter_its_own_domain_prompt() -> None:
    for name in ("medical", "bench-medical", "medical-v12"):
        assert prompt_for(name) == DOMAIN_PROMPTS["medical"], name
    assert prompt_for("customer_support-v3") == DOMAIN_PROMPTS["customer_support"]
    assert prompt_for("exaone") == GENERIC_PROMPT


def test_suites_and_report_end_to_end(vllm: RunningProcess, tiny_adapters: dict[str, Path], tmp_path: Path) -> None:
    # Two adapters keep it short; max_loras matches the session server's two GPU slots.
    adapters = {d: str(p) for d, p in list(tiny_adapters.items())[:2]}
    target = Target(url=vllm.url, base_model="exaone", adapter_dirs=adapters, name_prefix="bench-")
    argv = ["python", "-m", "vllm.entrypoints.openai.api_server", "--model", "tiny"]
    # Level 2 goes through two client processes (client_pool), level 1 through the in-process client.
    result = run_all(target, replace(SuiteSizes.tiny(), client_processes=2), argv, "ci-tiny", max_loras=2)
    meta = result["meta"]
    assert meta["server_argv"] == argv and meta["vllm_version"] and meta["git_commit"]
    s = result["suites"]
    assert set(s["test1"]["per_model"]) == {"exaone", "bench-medical", "bench-legal"}
    assert s["test1"]["lora_over_base"] > 0
    assert s["quality"]["all_ok"] and {c["output_tokens"] for c in s["quality"]["cells"]} == {8}
    assert set(s["saturation"]["modes"]) == {"base_only", "mixed_adapters"}
    for mode in ("base_only", "mixed_adapters"):
        one, two = s["saturation"]["modes"][mode]
        assert one["ok"] == one["requests"] == 2 and "client_processes" not in one
        assert two["ok"] == two["requests"] == 2 and two["client_processes"] == 2, two
        assert two["output_tokens"] == 16 and two["aggregate_tok_s"] > 0 and two["itl_s"]["p50"] > 0
        assert len(two["itl_p50_s_by_process"]) == 2
    paired = s["paired"]
    assert paired["concurrency"] == 2 and [p["first"] for p in paired["pairs"]] == ["base_only", "mixed_adapters"]
    for pair in paired["pairs"]:
        assert pair["base_only"]["ok"] == pair["mixed_adapters"]["ok"] == 2
        assert pair["aggregate_ratio"] == pytest.approx(
            pair["mixed_adapters"]["aggregate_tok_s"] / pair["base_only"]["aggregate_tok_s"])
    ratios = sorted(p["aggregate_ratio"] for p in paired["pairs"])
    assert paired["aggregate_ratio"] == {"median": pytest.approx(sum(ratios) / 2), "min": ratios[0], "max": ratios[1]}
    assert s["swap"]["disk"]["n"] == 1 and s["swap"]["disk"]["p50"] > 0
    # Everything loaded was unloaded again: the shared server is left as found.
    names = {m["id"] for m in httpx.get(f"{vllm.url}/v1/models", timeout=30).json()["data"]}
    assert not any(n.startswith(("bench-", "swap-", "cpu-")) for n in names)

    results_dir = tmp_path / "results"
    results_dir.mkdir()
    result["startup"] = {"cold_ready_s": 50.0, "warm_ready_s": 20.0}
    (results_dir / "ci-tiny.json").write_text(json.dumps(result))
    doc = generate(results_dir, tmp_path / "docs" / "benchmarks.md", tmp_path / "docs" / "img")
    text = doc.read_text()
    assert "## Targets (issue 9)" in text and "ci-tiny" in text and " ".join(argv) in text
    assert "ready after a restart" in text and "20.000 (**met**)" in text
    assert "## Paired: mixed adapters vs base only, back to back" in text
    for png in ("throughput_vs_concurrency.png", "latency_vs_concurrency.png", "lora_base_ratios.png"):
        assert (tmp_path / "docs" / "img" / png).stat().st_size > 1000
    assert key_numbers(load_runs(results_dir)[0])["warm_ready_s"] == 20.0


def test_parallel_saturation_splits_the_load_over_client_processes(vllm: RunningProcess) -> None:
    from benchmarks.dual import parallel_saturation

    # Two targets (the same server twice), one client process each: the shape of the two-replica run.
    level = parallel_saturation([(vllm.url, ["exaone"]), (vllm.url, ["exaone"])], concurrency=2, requests=4,
                                max_tokens=4, processes=2)
    assert level["concurrency"] == 2 and level["client_processes"] == 2
    assert level["ok"] == level["requests"] == 4 and level["output_tokens"] == 16, level
    assert level["wall_s"] > 0 and len(level["ttft_p50_s_by_process"]) == 2


def test_a_start_on_a_kept_compile_cache_is_recorded_as_warm(tmp_path: Path) -> None:
    from benchmarks.device import compile_cache_kept

    env = variant_launch("seed", str(tmp_path / "model"), str(tmp_path)).env
    assert compile_cache_kept(env) is False  # no cache folder at all: a fresh machine
    cache = Path(env["VLLM_CACHE_ROOT"]) / "torch_compile_cache" / "abc123" / "rank_0_0"
    cache.mkdir(parents=True)
    assert compile_cache_kept(env) is False  # folders without artefacts (a start that died early) are not a cache
    (cache / "vllm_compile_cache.py").write_text("# artefacts")
    assert compile_cache_kept(env) is True
    other = variant_launch("capture", str(tmp_path / "model"), str(tmp_path)).env
    assert compile_cache_kept(other) is False  # each variant has its own cache


def test_side_by_side_measures_each_variant_per_pass_and_divides_by_the_reference(
        vllm: RunningProcess, tiny_adapters: dict[str, Path]) -> None:
    import argparse

    from benchmarks.client_pool import client_pool
    from benchmarks.sidebyside import measure, summary
    from benchmarks.suites import load_domain_adapters, unload_all

    adapters = {d: str(p) for d, p in list(tiny_adapters.items())[:2]}
    target = Target(url=vllm.url, base_model="exaone", adapter_dirs=adapters, name_prefix="sbs-")
    asyncio.run(load_domain_adapters(target))
    args = argparse.Namespace(single_requests=2, max_tokens=4, levels=[2], rounds=1, client_processes=2)
    try:
        with client_pool(2) as pool:
            # The same server under two names stands in for two variants; pass 1 runs them in reverse order.
            passes: list[dict[str, Any]] = [{"order": order, "variants": {v: measure(target, args, pool, p) for v in order}}
                                            for p, order in enumerate((["ref", "other"], ["other", "ref"]))]
    finally:
        asyncio.run(unload_all(target))
    one = passes[0]["variants"]["ref"]
    assert one["single"]["base"]["ok"] == 2 and one["single"]["adapter"]["ok"] == 2
    assert one["single"]["adapter_over_base"] > 0 and one["all_models"]["per_stream_decode_tok_s_mean"] > 0
    lv = one["levels"]["2"]
    assert lv["base_only"]["ok"] == lv["mixed_adapters"]["ok"] == 2 and lv["base_only"]["client_processes"] == 2
    assert lv["mixed_over_base"] == pytest.approx(
        lv["mixed_adapters"]["aggregate_tok_s"] / lv["base_only"]["aggregate_tok_s"])
    # Which mode goes first alternates between passes.
    assert {passes[0]["variants"]["ref"]["levels"]["2"]["first"],
            passes[1]["variants"]["ref"]["levels"]["2"]["first"]} == {"base_only", "mixed_adapters"}
    table = summary(["ref", "other"], passes, "ref")
    assert table["ref"]["base_2"]["n"] == 2 and table["ref"]["base_2"]["over_reference_median"] == 1.0
    ratios = [passes[p]["variants"]["other"]["levels"]["2"]["base_only"]["aggregate_tok_s"]
              / passes[p]["variants"]["ref"]["levels"]["2"]["base_only"]["aggregate_tok_s"] for p in (0, 1)]
    assert table["other"]["base_2"]["over_reference_median"] == pytest.approx(sum(ratios) / 2)
    assert table["other"]["base_2"]["over_reference_min"] == pytest.approx(min(ratios))


def _sbs_summary(ratio: float) -> dict[str, Any]:
    from benchmarks.report import SBS_ROWS

    def stat(value: float, over: float) -> dict[str, float]:
        return {"median": value, "min": value, "max": value, "n": 3, "over_reference_median": over,
                "over_reference_min": over, "over_reference_max": over}

    return {"reference": {key: stat(100.0, 1.0) for key, _, _ in SBS_ROWS},
            "shipped": {key: stat(100.0 * ratio, ratio) for key, _, _ in SBS_ROWS}}


@pytest.mark.parametrize(("ratio", "verdict"), [(1.02, "**met**"), (0.95, "missed")])
def test_the_report_marks_issue_23_targets_from_the_side_by_side_json(tmp_path: Path, ratio: float,
                                                                      verdict: str) -> None:
    from benchmarks import report
    from benchmarks.report import SBS_TARGET_LABELS, generate

    summary_table = _sbs_summary(ratio)
    summary_table[report.LEGACY_SHIPPED] = summary_table.pop("shipped")
    results = tmp_path / "results"
    results.mkdir()
    (results / "run.json").write_text(json.dumps({"meta": {"variant": "plain"}, "suites": {}}))
    (results / "sbs.json").write_text(json.dumps({
        "meta": {"variant": "sidebyside", "reference": "reference", "gpu": "NVIDIA H200, 1 MiB", "levels": [128]},
        "servers": {}, "passes": [{"order": ["reference", report.LEGACY_SHIPPED], "variants": {}}],
        "summary": summary_table}))
    text = generate(results, tmp_path / "docs" / "benchmarks.md", tmp_path / "img").read_text()
    assert "## Reference vs shipped config, same machine (issue 23)" in text
    every_row = next(line for line in text.splitlines() if line.startswith(f"| {SBS_TARGET_LABELS['every_row']}"))
    assert f"({verdict})" in every_row, every_row
    # The side-by-side file is not read as a plain run: the issue-9 table lists only `plain`.
    issue9 = text.split("## Targets (issue 9)")[1].split("##")[0]
    assert "| plain |" in issue9 and "sidebyside" not in issue9
