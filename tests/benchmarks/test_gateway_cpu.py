"""The gateway CPU benchmark: the stand-in replica speaks what the real gateway expects, the load is counted
exactly, and the report shows every level. Tiny sizes; the numbers in docs/gateway-benchmarks.md come from
`python -m benchmarks.gateway_cpu run` (README there)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks import gateway_cpu
from benchmarks.sse_upstream import SERVED_NAME
from exaone_lora.local.processes import free_port, run_process


def test_cpu_seconds_counts_this_process() -> None:
    before = gateway_cpu.cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    assert gateway_cpu.cpu_seconds(os.getpid()) - before >= 0.1


def test_stand_in_replica_speaks_what_the_gateway_expects(tmp_path: Path) -> None:
    port = free_port()
    with run_process([sys.executable, "-m", "benchmarks.sse_upstream", "--port", str(port), "--interval-ms", "1",
                      "--adapter", "medical-v1"], tmp_path / "stand-in.log", f"http://127.0.0.1:{port}/health", 60,
                     cwd=gateway_cpu.REPO):
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"]
        assert [(m["id"], m["parent"]) for m in models] == [(SERVED_NAME, None), ("medical-v1", SERVED_NAME)]
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions",
                          json={"model": "medical-v1", "prompt": "x", "max_tokens": 5, "stream": True}) as response:
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and json.loads(events[-2])["usage"]["completion_tokens"] == 5
        assert [json.loads(e)["model"] for e in events[:5]] == ["medical-v1"] * 5
        missing = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"model": "nope", "stream": True})
        assert missing.status_code == 404  # the gateway's retry path relies on vLLM's 404 for an unknown model
        # A bare load straight at it: every token counted, none lost.
        load = asyncio.run(gateway_cpu.run_load(port, "medical-v1", streams=3, requests=6, tokens=7, deadline_s=30))
        assert (load["requests_ok"], load["requests_failed"], load["events"]) == (6, 0, 42)


def test_measure_and_report_through_the_real_gateway() -> None:
    result = gateway_cpu.measure(gateway_cpu.REPO, [1, 4], interval_ms=1.0, tokens=16, requests_per_stream=2,
                                 deadline_s=60, gateway_args=["--served-name", "exaone"], rounds=2)
    assert [(lv["streams"], lv["round"]) for lv in result["levels"]] == [(1, 0), (4, 0), (1, 1), (4, 1)]
    for level in result["levels"]:
        for path in ("gateway", "direct"):
            assert level[path]["requests_ok"] == level["requests"] and level[path]["requests_failed"] == 0, level
            assert level[path]["events"] == level["requests"] * 16
        assert level["gateway_cpu_us_per_event"] == level["gateway_cpu_s"] / level["gateway"]["events"] * 1e6
        assert 0 <= level["gateway_new_upstream_connections"] <= level["streams"]  # reused, not one per request
    result |= {"label": "ci", "gateway_args": ["--served-name", "exaone"], "gateway_src_commit": "abc1234", "cpu": "test",
               "cores": 2, "python": "3.11", "runtime": {"aiohttp": "3.0", "httptools": None}}
    rows = gateway_cpu.summary_rows(result)
    assert [(r["streams"], r["rounds"], r["requests"], r["failed"]) for r in rows] == [(1, 2, 4, 0), (4, 2, 16, 0)]
    text = gateway_cpu.render_report([result], "# Gateway\n\npreface")
    assert text.startswith("# Gateway\n\npreface\n\n## Results")
    assert "| ci | `abc1234` | 4 |" in text and "gateway args --served-name exaone" in text and "httptools" not in text


def test_cli_refuses_bad_levels_and_sources(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "benchmarks.gateway_cpu", "run", "--label", "x", "--out", str(tmp_path / "x.json")]
    # Wide enough that Rich's error box does not wrap a message holding a long temporary path.
    wide = {**os.environ, "COLUMNS": "500"}
    bad = subprocess.run([*base, "--streams", "0,8"], capture_output=True, text=True, cwd=gateway_cpu.REPO, env=wide)
    assert bad.returncode == 2 and "1 to 512 streams" in bad.stderr
    elsewhere = subprocess.run([*base, "--gateway-src", str(tmp_path)], capture_output=True, text=True, cwd=gateway_cpu.REPO,
                               env=wide)
    assert elsewhere.returncode == 2 and "has no service/gateway" in elsewhere.stderr
    assert not (tmp_path / "x.json").exists()
