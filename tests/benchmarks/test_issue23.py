"""Issue 23's runner (`benchmarks/issue23.py`) at tiny sizes against the session's CPU vLLM, and the report
sections its phase files feed (`benchmarks/report_issue23.py`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.issue23 import make_scaling_adapters, measure_scaling
from benchmarks.suites import load_adapter, unload_adapter
from exaone_lora.checkpoints import Checkpoint
from tests.support.processes import RunningProcess


def test_scaling_adapters_are_distinct_folders_linking_the_real_files(tiny_adapters: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    real = {d: str(p) for d, p in list(tiny_adapters.items())[:2]}
    made = make_scaling_adapters(real, tmp_path / "scaling", 5)
    assert list(made) == ["s000", "s001", "s002", "s003", "s004"]
    assert len(set(made.values())) == 5
    for i, folder in enumerate(made.values()):
        source = Path(list(real.values())[i % 2])  # round-robin over the real adapters
        files = sorted(Path(folder).iterdir())
        assert [f.name for f in files] == sorted(f.name for f in source.iterdir())
        assert all(f.is_symlink() and f.resolve() == (source / f.name).resolve() for f in files)
    assert make_scaling_adapters(real, tmp_path / "scaling", 5) == made  # a second run reuses the folders


def test_scaling_measures_every_adapter_count_per_pass(vllm: RunningProcess, tiny_adapters: dict[str, Path],
                                                       tmp_path: Path) -> None:
    from benchmarks.client_pool import client_pool

    real = {d: str(p) for d, p in list(tiny_adapters.items())[:2]}
    made = make_scaling_adapters(real, tmp_path / "scaling", 4)
    names = [f"i23-{n}" for n in made]  # own names on the shared session server
    for name, folder in zip(names, made.values(), strict=True):
        asyncio.run(load_adapter(vllm.url, name, folder))
    args = argparse.Namespace(scaling_passes=2, scaling_streams=2, scaling_rounds=1, max_tokens=3, client_processes=2)
    result: dict[str, Any] = {}
    saves: list[int] = []
    try:
        with client_pool(2) as pool:
            measure_scaling(vllm.url, names, [2, 4], args, pool, result, lambda: saves.append(len(result["passes"])))
    finally:
        for name in names:
            asyncio.run(unload_adapter(vllm.url, name))
    assert saves == [1, 2]  # written after every pass
    assert len(result["passes"]) == 2
    for one in result["passes"]:
        for n in ("2", "4"):
            assert one[n]["ok"] == one[n]["requests"] == 2 and one[n]["output_tokens"] == 6
            assert one[n]["lora_gauge"]["samples"] >= 1
    assert result["summary"]["2"]["n"] == 2 and result["summary_over_first"]["2"]["median"] == 1.0
    ratios = [q["4"]["aggregate_tok_s"] / q["2"]["aggregate_tok_s"] for q in result["passes"]]
    assert result["summary_over_first"]["4"]["median"] == pytest.approx(sum(ratios) / 2)


def _stat(value: float, over: float) -> dict[str, float]:
    return {"median": value, "min": value, "max": value, "n": 3, "over_reference_median": over,
            "over_reference_min": over, "over_reference_max": over}


def _phase_files(results: Path, restart_s: float, gateway: float, scaling_64: float) -> None:
    from benchmarks.report import SBS_ROWS

    meta = {"variant": "sidebyside", "runner": "issue23", "reference": "reference", "shipped": "shipped-x",
            "gpu": "NVIDIA H200, 1 MiB", "levels": [128, 256]}
    summary = {"reference": {k: _stat(100.0, 1.0) for k, _, _ in SBS_ROWS},
               "shipped-x": {k: _stat(101.0, 1.01) for k, _, _ in SBS_ROWS}}
    (results / "issue23-sidebyside.json").write_text(json.dumps({
        "meta": meta, "servers": {}, "passes": [{"order": ["reference", "shipped-x"], "variants": {}}],
        "summary": summary}))
    start = {"ready_s": restart_s, "timeline_s": {"model_loaded": 9.0}, "vllm_durations_s": {"torch_compile_s": 20.0}}
    (results / "issue23-ready.json").write_text(json.dumps({"meta": {"variant": "issue23-ready"}, "starts": {
        "shipped_cold": start | {"ready_s": 120.0}, "reference_cold": start, "shipped_restart": start}}))
    spread = {"median": gateway, "min": gateway, "max": gateway, "n": 3}
    lv = {"aggregate_tok_s": 1000.0}
    (results / "issue23-gateway.json").write_text(json.dumps({
        "meta": {"variant": "issue23-gateway", "gateway_argv": ["py", "-m", "service.cli", "gateway"]},
        "passes": [{"order": ["direct", "gateway"], "direct": {"base_only": lv, "mixed_adapters": lv},
                    "gateway": {"base_only": lv, "mixed_adapters": lv}, "base_only_gateway_over_direct": gateway,
                    "mixed_adapters_gateway_over_direct": gateway}],
        "summary": {"base_only_gateway_over_direct": spread, "mixed_adapters_gateway_over_direct": spread}}))
    _scaling_file(results, 4, scaling_64)


def _scaling_file(results: Path, slots: int, scaling_64: float) -> None:
    gauge = {"samples": 3, "running_adapters_max": 4, "running_adapters_median": 4, "waiting_adapters_median": 10}
    counts = [4, 64]
    (results / f"issue23-scaling-{slots}.json").write_text(json.dumps({
        "meta": {"variant": "issue23-scaling", "gpu_slots": slots, "counts": counts, "streams": 128},
        "passes": [{str(n): {"aggregate_tok_s": 1000.0, "lora_gauge": gauge} for n in counts}],
        "summary": {"4": {"median": 1000.0, "min": 1000.0, "max": 1000.0, "n": 1},
                    "64": {"median": 1000.0 * scaling_64, "min": 1.0, "max": 1.0, "n": 1}},
        "summary_over_first": {"4": {"median": 1.0, "min": 1.0, "max": 1.0, "n": 1},
                               "64": {"median": scaling_64, "min": scaling_64, "max": scaling_64, "n": 1}}}))


@pytest.mark.parametrize(("restart_s", "gateway", "scaling_64", "verdict"),
                         [(30.0, 0.97, 0.85, "**met**"), (60.0, 0.90, 0.30, "missed")])
def test_the_report_marks_the_runner_phases_targets(tmp_path: Path, restart_s: float, gateway: float,
                                                    scaling_64: float, verdict: str) -> None:
    from benchmarks.report import SBS_TARGET_LABELS, generate

    results = tmp_path / "results"
    results.mkdir()
    (results / "run.json").write_text(json.dumps({"meta": {"variant": "plain"}, "suites": {}}))
    _phase_files(results, restart_s, gateway, scaling_64)
    text = generate(results, tmp_path / "docs" / "benchmarks.md", tmp_path / "docs" / "img").read_text()
    section = text.split("## Reference vs shipped config, same machine (issue 23)")[1].split("\n## ")[0]
    rows = {key: next(line for line in section.splitlines() if line.startswith(f"| {label}"))
            for key, label in SBS_TARGET_LABELS.items()}
    assert "(**met**)" in rows["every_row"] and "shipped-x" in section
    for key in ("ready", "gateway_128", "adapter_scaling"):
        assert f"({verdict})" in rows[key], rows[key]
    assert "(not measured)" in rows["merged_hot"]
    assert "256 streams base-only (tok/s)" in section and "### Scaling with the number of adapters" in section
    assert (tmp_path / "docs" / "img" / "adapter_scaling.png").stat().st_size > 0
    assert "](img/adapter_scaling.png)" in section
    # Phase files are neither issue-9 runs nor side-by-side runs of their own.
    issue9 = text.split("## Targets (issue 9)")[1].split("##")[0]
    assert "| plain |" in issue9 and "issue23" not in issue9
    assert "Earlier side-by-side run" not in text


@pytest.mark.parametrize(("more_slots_64", "verdict"), [(0.81, "**met**"), (0.79, "missed"), (None, "missed")])
def test_adapter_scaling_is_met_by_any_measured_slot_count(tmp_path: Path, more_slots_64: float | None,
                                                           verdict: str) -> None:
    """GPU slots are a stack setting (`maxLoras`): the target holds when some measured slot count reaches it, and
    the cell names every slot count's ratio, fewest slots first."""
    from benchmarks.report_issue23 import load_issue23, targets

    _scaling_file(tmp_path, 4, 0.13)
    if more_slots_64 is not None:
        _scaling_file(tmp_path, 64, more_slots_64)
    cell, got = targets(load_issue23(tmp_path))["adapter_scaling"]
    assert got == verdict
    assert cell.startswith("0.13 (4 GPU slots)")
    assert cell.endswith("(4 GPU slots)" if more_slots_64 is None else f"; {more_slots_64:.2f} (64 GPU slots)")


@pytest.fixture(scope="module")
def cpu_training_run(tiny_checkpoint: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real `benchmarks.train_speed` run on the CPU (the GPU's command at tiny sizes): the JSON the
    training rows of the report read."""
    root = tmp_path_factory.mktemp("train-speed")
    done = subprocess.run([sys.executable, "-m", "benchmarks.train_speed", "--checkpoint", str(tiny_checkpoint.path),
                           "--root", str(root), "--steps", "3", "--warmup-steps", "1", "--micro-batch", "4",
                           "--grad-accum", "2", "--sample-tokens", "60", "--max-length", "128",
                           "--inductor", "coordinate_descent_tuning=true"],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout))


def test_train_speed_refuses_unknown_inductor_settings(tiny_checkpoint: Checkpoint, tmp_path: Path) -> None:
    for bad, message in (("no_such_setting=1", "not a torch._inductor.config setting"),
                         ("coordinate_descent_tuning=yes", "is not JSON")):
        done = subprocess.run([sys.executable, "-m", "benchmarks.train_speed", "--checkpoint",
                               str(tiny_checkpoint.path), "--root", str(tmp_path), "--inductor", bad],
                              capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
        assert done.returncode == 2 and message in done.stderr, done.stderr


@pytest.mark.parametrize(("shipped_rates", "verdict"), [((101.0, 99.5, 100.2), "**met**"), ((99.9, 99.0), "missed")])
def test_the_report_marks_training_beside_its_reference(cpu_training_run: dict[str, Any], tmp_path: Path,
                                                        shipped_rates: tuple[float, ...], verdict: str) -> None:
    """The training target is the median of the shipped configuration's runs in one call, against the
    reference run of that call, with how far their loss curves are apart."""
    from benchmarks.report_issue23 import load_issue23, render, targets

    run = cpu_training_run
    assert run["steps_timed"] == 3 and len(run["loss_curve"]) == 4 and run["samples_per_step"] == 8
    assert run["settings"]["inductor"] == [["coordinate_descent_tuning", True]]
    for order, rate in enumerate(shipped_rates):
        name = "shipped" if order == 0 else f"shipped-{order}"
        (tmp_path / f"issue23-training-{name}.json").write_text(json.dumps(
            {**run, "samples_per_s": rate, "provenance": {"order_in_call": order}}))
    shifted = [x + 0.5 for x in run["loss_curve"]]
    (tmp_path / "issue23-training-reference.json").write_text(json.dumps(
        {**run, "samples_per_s": 10.0, "loss_curve": shifted, "provenance": {"order_in_call": 9}}))
    phases = load_issue23(tmp_path)
    cell, got = targets(phases)["training"]
    median = statistics.median(shipped_rates)
    assert got == verdict
    assert cell.startswith(f"{median:.1f} samples/s") and f"{len(shipped_rates)} runs" in cell
    assert "reference 10.0" in cell and "loss within 0.500" in cell
    section = "\n".join(render(phases, tmp_path / "img", tmp_path / "benchmarks.md")[0])
    assert "### Training speed side by side (issue 23)" in section
    assert section.count("| 4 × 2 |") == len(shipped_rates) + 1
    # Every step is 0.5 apart: the largest difference is named at the first step where it occurs.
    assert "largest difference 0.500 (step 1), 0.500 from step 3 on" in section


@pytest.mark.parametrize("phases", ["scaling-4,hot,scaling-64", "hot", "ready,sidebyside,gateway,scaling,hot",
                                    "scaling,hot"])
def test_phases_run_in_the_order_given(phases: str) -> None:
    from benchmarks.issue23 import _phases

    assert _phases(phases) == phases.split(",")


@pytest.mark.parametrize(("phases", "message"), [("scaling-x", "unknown phase"), ("scaling-0", "unknown phase"),
                                                 ("hot,warm", "unknown phase"), ("gateway,scaling", "add ready"),
                                                 ("sidebyside", "add ready")])
def test_phases_refuse_what_cannot_run(phases: str, message: str) -> None:
    from benchmarks.issue23 import _phases

    with pytest.raises(argparse.ArgumentTypeError, match=message):
        _phases(phases)
