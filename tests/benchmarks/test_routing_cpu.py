"""The replica-choice benchmark at a tiny size: it runs both policies on two real CPU vLLM replicas and writes
well-formed results and a report. The numbers in docs/routing-benchmarks.md come from
`python -m benchmarks.routing_cpu run` (benchmarks/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import routing_cpu
from service.gateway.scoring import POLICIES


def test_sequence_is_seeded_and_config_is_checked() -> None:
    config = routing_cpu.Config(adapters=5, max_loras=2, requests=40, seed=3)
    assert routing_cpu.request_sequence(config) == routing_cpu.request_sequence(config)
    assert set(routing_cpu.request_sequence(config)) <= set(range(5)) and len(routing_cpu.request_sequence(config)) == 40
    with pytest.raises(ValueError, match="must exceed the slots of both replicas"):
        routing_cpu.Config(adapters=4, max_loras=2).check()


@pytest.mark.vllm
@pytest.mark.slow
def test_tiny_run_produces_well_formed_results(tmp_path: Path) -> None:
    config = routing_cpu.Config(adapters=3, max_loras=1, requests=6, concurrency=2, max_tokens=2, passes=2)
    result = routing_cpu.measure(config, tmp_path)
    assert [p["order"] for p in result["passes"]] == [list(POLICIES), list(reversed(POLICIES))]
    for p in result["passes"]:
        for run in p["runs"]:
            assert run["requests_ok"] == 6 and run["requests_failed"] == 0, run
            assert len(run["slot_loads"]) == 2 and run["slot_loads_total"] == sum(run["slot_loads"]) >= 0
            assert sum(n for by in run["placements"].values() for n in by.values()) == 6
            assert run["latency_ms"]["p50"] <= run["latency_ms"]["p99"]
    assert set(result["summary"]) == set(POLICIES)
    assert all(s["passes"] == 2 and s["requests"] == 12 for s in result["summary"].values())
    result |= {"commit": "abc1234", "cpu": "test", "cores": 2, "machine": routing_cpu.MACHINE_NOTE, "python": "3.11"}
    text = routing_cpu.render_report(result, "# Routing\n\npreface")
    assert text.startswith("# Routing\n\npreface\n\n## Results")
    assert "| `scored` |" in text and "| `least-outstanding` |" in text and "pass 1:" in text
