"""The seed's 8-step lifecycle and the swap benchmark against the real CPU vLLM server, via the CLI too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from service.cli import app
from service.lifecycle import run_lifecycle, swap_benchmark
from tests.support.processes import REPO, RunningProcess

pytestmark = pytest.mark.vllm

STEPS = ["initial state", "load 4 adapters", "list adapters", "query each adapter", "unload one adapter",
         "query the unloaded adapter", "reload as a new version", "clean up"]


def _adapters(vllm: RunningProcess) -> set[str]:
    return {m["id"] for m in httpx.get(f"{vllm.url}/v1/models").json()["data"] if m.get("parent")}


def test_eight_step_lifecycle(vllm: RunningProcess, tiny_adapters: dict[str, Path]) -> None:
    before = _adapters(vllm)
    result = run_lifecycle(vllm.url, tiny_adapters, run_id="t1")
    assert [s["name"] for s in result["steps"]] == STEPS
    assert result["passed"], json.dumps(result, indent=1)
    steps = {s["name"]: s["details"] for s in result["steps"]}
    assert set(steps["list adapters"]["listed"]) >= {f"lct1-{d}-v1" for d in tiny_adapters}
    unloaded = steps["query the unloaded adapter"]
    assert unloaded["status"] == 404 and "lct1-medical-v1" in unloaded["error"]
    # Four adapters with other weights: the same greedy prompt gives other tokens through each.
    assert steps["query each adapter"]["distinct_outputs"] >= 2
    assert steps["reload as a new version"]["name"] == "lct1-medical-v2"
    assert _adapters(vllm) == before  # cleaned up
    json.dumps(result)  # JSON-able as is


def test_lifecycle_fails_loudly_on_a_bad_adapter(vllm: RunningProcess, tiny_adapters: dict[str, Path],
                                                 tmp_path: Path) -> None:
    before = _adapters(vllm)
    result = run_lifecycle(vllm.url, {"medical": tiny_adapters["medical"], "ghost": tmp_path / "missing"}, run_id="t2")
    assert not result["passed"]
    load = result["steps"][1]
    assert not load["passed"] and load["details"]["loads"]["lct2-ghost-v1"]["status"] != 200
    assert result["steps"][-1]["name"] == "clean up" and result["steps"][-1]["passed"]
    assert _adapters(vllm) == before


def test_swap_benchmark_and_cli_json(vllm: RunningProcess, tiny_adapters: dict[str, Path], tmp_path: Path) -> None:
    result = swap_benchmark(vllm.url, tiny_adapters["code"], cycles=3)
    assert result["passed"] and result["completed"] == 3, result["errors"]
    for key in ("load_s", "first_token_s", "unload_s", "swap_to_first_token_s"):
        assert 0 < result["summary"][key]["p50"] <= result["summary"][key]["max"] < 60
    cli = CliRunner().invoke(app, ["swap-bench", "--url", vllm.url, "--adapter", str(tiny_adapters["legal"]),
                                   "--cycles", "2"])
    assert cli.exit_code == 0, cli.output
    printed = json.loads(cli.stdout)
    assert printed["kind"] == "swap-benchmark" and printed["completed"] == 2
    for name in ("Pulumi.yaml", "Pulumi.dev.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    cli = CliRunner().invoke(app, ["lifecycle", "--url", vllm.url, *[f"--adapter={d}={p}" for d, p in tiny_adapters.items()],
                                   "--evidence-stack", "dev", "--root", str(tmp_path)])
    assert cli.exit_code == 0, cli.output
    printed = json.loads(cli.stdout)
    assert printed["passed"] is True
    evidence = Path(printed["evidence"])
    assert evidence.parent == tmp_path / "evidence" / "dev" and evidence.name.startswith("lifecycle-")
    assert json.loads(evidence.read_text())["passed"] is True
    bad = CliRunner().invoke(app, ["swap-bench", "--url", vllm.url, "--adapter", "/nonexistent"])
    assert bad.exit_code == 2 and "not an adapter directory" in bad.output
