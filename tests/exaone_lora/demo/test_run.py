"""The README's main command, as a test: the same demo code end to end, on free ports and a temporary workdir."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from exaone_lora.demo.report import DemoReport
from exaone_lora.demo.run import DemoOptions, down, run_demo
from exaone_lora.demo.traffic import BoundedTraffic
from tests.support.processes import REPO, free_port


@pytest.fixture
def stack_root(tmp_path: Path) -> Path:
    """The dev stack with free ports, so the test never collides with a kept demo on 8080-8082."""
    root = tmp_path / "stacks"
    root.mkdir()
    for name in ("Pulumi.yaml", "Pulumi.dev.yaml", "Pulumi.poc.yaml", "Pulumi.registry.yaml"):  # poc reads the registry stack
        shutil.copy(REPO / name, root / name)
    dev = yaml.safe_load((root / "Pulumi.dev.yaml").read_text())
    dev["config"]["exaone-lora:port"] = free_port()
    dev["config"]["exaone-lora:gateway"] = {"enginePort": free_port(), "adminPort": free_port()}
    dev["config"]["exaone-lora:monitoring"] = {"prometheusPort": free_port(), "alertmanager": {"port": free_port()}}
    (root / "Pulumi.dev.yaml").write_text(yaml.safe_dump(dev))
    return root


def test_demo_runs_end_to_end_and_leaves_nothing_running(stack_root: Path, tmp_path: Path) -> None:
    console = Console(width=140, record=True)
    options = DemoOptions(root=stack_root, workdir=tmp_path / "demo", traffic_seconds=30, train_steps=4, samples=16)
    report = DemoReport(console)
    run_demo(options, console, report)
    assert report.ok, report.steps
    assert [s.name.split()[0] for s in report.steps] == [str(i) for i in range(1, 10)]
    traffic = report.facts["traffic"]
    assert isinstance(traffic, dict) and not traffic["failed"] and sum(traffic["ok"].values()) > 0
    canary = report.facts["canary"]
    assert isinstance(canary, dict) and canary["state"] == "promoted" and canary["failed"] == 0, canary
    served = report.facts["gateway_series"]
    assert isinstance(served, dict) and {"medical@medical-v1", "medical@medical-v2", "legal@legal-v1"} <= set(served)
    up = report.facts["prometheus_up"]
    assert isinstance(up, dict) and up["exaone-vllm"] and up["exaone-gateway"], up
    lifecycle = report.facts["lifecycle"]
    assert isinstance(lifecycle, dict) and lifecycle["passed"] and len(lifecycle["steps"]) == 8
    assert not options.state_file.exists()  # not --keep: nothing recorded, everything stopped
    report.write(options.workdir / "report.json")
    assert json.loads((options.workdir / "report.json").read_text())["ok"] is True


def test_down_without_a_kept_demo_says_so(tmp_path: Path) -> None:
    assert down(DemoOptions(workdir=tmp_path), Console()) is False


def test_traffic_is_bounded_by_count_even_when_nothing_stops_it(vllm: object) -> None:
    url = f"{vllm.url}/v1"  # type: ignore[attr-defined]
    with BoundedTraffic(url, "none", ["exaone"], workers=2, max_requests=6, max_seconds=60) as traffic:
        pass  # leaving the block stops the loop; the count bound must hold regardless
    assert traffic.result.total <= 6
    with BoundedTraffic(url, "none", ["no-such-model"], workers=1, max_requests=2, max_seconds=30) as traffic:
        import time

        deadline = time.monotonic() + 30  # the loop's own time bound; two 404s take milliseconds on an idle machine
        while traffic.result.failures < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert traffic.result.failures == 2 and "no-such-model" in traffic.result.errors[0]
