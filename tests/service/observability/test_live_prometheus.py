"""A real Prometheus on 127.0.0.1 scraping the real CPU vLLM and a real gateway in front of it.

One module fixture: gateway up with alias `obsmed` -> `obsmed-v1` (a real LoRA loaded at runtime), Prometheus
started from `prometheus_config` with a 1 s interval and the shipped alert rules, then a few requests.
The tests check targets, per-adapter series, every dashboard query and every rule against that live data,
and that every metric name the rules and the dashboard use is one vLLM or the gateway really exports.
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from exaone_lora.spec import load_spec
from service.gateway import create_gateway
from service.gateway.server import RunningGateway, gateway_in_thread
from service.observability import dashboard as d
from service.observability import metrics as m
from service.observability.prometheus import ScrapeTarget, render_prometheus_yml
from service.observability.rules import SHIPPED_ALERTS, alert_rules
from tests.support.processes import REPO, RunningProcess, free_port, run_process
from tests.support.promql import exposed_names, metric_names, tool

pytestmark = pytest.mark.vllm

ALIAS, VERSION_NAME = "obsmed", "obsmed-v1"
ADAPTER_REQUESTS = 3
ALIAS_REQUESTS = ADAPTER_REQUESTS + 1  # plus one streamed


@dataclass
class LiveStack:
    prometheus: str
    gateway: RunningGateway
    vllm: RunningProcess

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        return list(body["data"]["result"])

    def wait_for(self, expr: str, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)

    def wait_scrapes(self, count: int, timeout: float = 60) -> None:
        """Until Prometheus has scraped both servers `count` more times: what rates need, counted, not slept for
        (a loaded machine stretches the scrape interval)."""
        def scraped() -> dict[str, float]:
            return {s["metric"]["job"]: float(s["value"][1])
                    for s in self.query(f'count_over_time(up{{job=~"{m.GATEWAY_JOB}|{m.VLLM_JOB}"}}[1h])')}

        start = scraped()
        deadline = time.monotonic() + timeout
        while True:
            now = scraped()
            if all(now.get(job, 0) >= start.get(job, 0) + count for job in (m.GATEWAY_JOB, m.VLLM_JOB)):
                return
            assert time.monotonic() < deadline, f"fewer than {count} scrapes in {timeout:.0f} s: {start} -> {now}"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def live(vllm: RunningProcess, tiny_adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
         logs_dir: Path) -> Iterator[LiveStack]:
    admin_key = secrets.token_urlsafe(24)
    auth = {"Authorization": f"Bearer {admin_key}"}
    # The gateway loads versions only from under its adapter root, from a folder named after the version.
    adapter_root = tmp_path_factory.mktemp("lora-adapters")
    shutil.copytree(tiny_adapters["medical"], adapter_root / VERSION_NAME)
    apps = create_gateway([vllm.url], admin_key=admin_key, served_name="exaone", refresh_seconds=1.0,
                          adapter_root=str(adapter_root))
    workdir = tmp_path_factory.mktemp("prometheus")
    try:
        with gateway_in_thread(apps, ("127.0.0.1", free_port()), ("127.0.0.1", free_port())) as gw:
            loaded = httpx.post(f"{gw.admin_url}/admin/versions", headers=auth, timeout=60,
                                json={"name": VERSION_NAME, "path": str(adapter_root / VERSION_NAME)})
            assert loaded.status_code == 200, loaded.text
            switched = httpx.put(f"{gw.admin_url}/admin/aliases/{ALIAS}", headers=auth, json={"version": 1}, timeout=120)
            assert switched.status_code == 200, switched.text

            port = free_port()
            # The gateway's metrics are on its admin listener (loopback only), as `scrape_targets` renders.
            targets = [ScrapeTarget(m.VLLM_JOB, vllm.url.removeprefix("http://"), {"replica": "0"}),
                       ScrapeTarget(m.GATEWAY_JOB, gw.admin_url.removeprefix("http://"), {})]
            spec = load_spec("dev", REPO)
            shutil.copy(SHIPPED_ALERTS, workdir / "alerts.yml")
            (workdir / "prometheus.yml").write_text(
                render_prometheus_yml(spec, targets=targets, scrape_interval_seconds=1, prometheus_port=port))
            cmd = [tool("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
                   f"--web.listen-address=127.0.0.1:{port}", f"--storage.tsdb.path={workdir / 'data'}",
                   "--storage.tsdb.retention.time=1h"]
            with run_process(cmd, logs_dir / "prometheus.log", f"http://127.0.0.1:{port}/-/ready", 60):
                stack = LiveStack(f"http://127.0.0.1:{port}", gw, vllm)
                # Two scrapes of the idle state first, so rates have a starting point.
                assert stack.wait_for(f'up{{job="{m.GATEWAY_JOB}"}} == 1') and stack.wait_for(f'up{{job="{m.VLLM_JOB}"}} == 1')
                stack.wait_scrapes(2)
                with httpx.Client(timeout=120) as client:
                    for i in range(ADAPTER_REQUESTS):
                        r = client.post(f"{gw.public_url}/v1/completions",
                                        json={"model": ALIAS, "prompt": f"Patient {i}:", "max_tokens": 4, "temperature": 0})
                        assert r.status_code == 200, r.text
                        if i == 0:
                            # A labelled series is born at its first request; let Prometheus see it once so
                            # the following requests show up as an increase (rate() ignores a series' birth).
                            assert stack.wait_for(f'exaone_gateway_requests_total{{alias="{ALIAS}"}}')
                            stack.wait_scrapes(1)
                    # A streamed request: time to first token is measured on streams only.
                    with client.stream("POST", f"{gw.public_url}/v1/completions",
                                       json={"model": ALIAS, "prompt": "Stream:", "max_tokens": 4, "stream": True}) as sse:
                        assert sse.status_code == 200 and "[DONE]" in "".join(sse.iter_text())
                    r = client.post(f"{gw.public_url}/v1/completions", json={"model": "exaone", "prompt": "hi", "max_tokens": 4})
                    assert r.status_code == 200, r.text
                    r = client.post(f"{gw.public_url}/v1/completions", json={"model": "cardiology", "prompt": "x"})
                    assert r.status_code == 404
                yield stack
    finally:
        # The session vLLM is shared: leave it as we found it.
        httpx.post(f"{vllm.url}/v1/unload_lora_adapter", json={"lora_name": VERSION_NAME}, timeout=30)


def test_prometheus_scrapes_every_target(live: LiveStack) -> None:
    targets = httpx.get(f"{live.prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    health = {t["labels"]["job"]: t["health"] for t in targets}
    assert health == {m.VLLM_JOB: "up", m.GATEWAY_JOB: "up", m.PROMETHEUS_JOB: "up"}, targets


def test_per_adapter_series_after_requests(live: LiveStack) -> None:
    ok = live.wait_for(f'sum(exaone_gateway_requests_total{{alias="{ALIAS}",status="200"}}) >= {ALIAS_REQUESTS}')
    assert ok and float(ok[0]["value"][1]) == ALIAS_REQUESTS
    by_version = live.wait_for(f'exaone_gateway_request_duration_seconds_count{{alias="{ALIAS}"}} >= {ALIAS_REQUESTS}')
    assert [(s["metric"]["version"], float(s["value"][1])) for s in by_version] == [(VERSION_NAME, ALIAS_REQUESTS)]
    assert live.wait_for(f'exaone_gateway_ttft_seconds_count{{alias="{ALIAS}",version="{VERSION_NAME}"}} >= 1')
    assert float(live.wait_for(f'exaone_gateway_alias_version{{alias="{ALIAS}"}}')[0]["value"][1]) == 1
    assert live.wait_for(f'exaone_gateway_generated_tokens_total{{alias="{ALIAS}"}} >= {ADAPTER_REQUESTS}')
    assert live.wait_for('exaone_gateway_requests_total{alias="exaone",version="base",status="200"}')
    assert live.wait_for('exaone_gateway_request_errors_total{alias="unknown",reason="model_not_found"}')
    # vLLM's own per-adapter view: the scheduler saw the version's requests.
    lora = live.wait_for(f'vllm:lora_requests_info{{running_lora_adapters=~"(.*,)?{VERSION_NAME}(,.*)?"}}')
    assert lora and lora[0]["metric"]["max_lora"] == "2"
    rate = live.wait_for(f'sum by (alias) (rate(exaone_gateway_requests_total{{alias="{ALIAS}"}}[1m])) > 0')
    assert rate and rate[0]["metric"] == {"alias": ALIAS}


def test_every_dashboard_query_runs_against_live_data(live: LiveStack) -> None:
    live.wait_for(f'exaone_gateway_ttft_seconds_count{{alias="{ALIAS}"}}')
    live.wait_scrapes(2)  # a couple more scrapes so rates over the new samples exist
    empty = []
    for expr in d.dashboard_queries(d.dashboard()):
        if not live.query(d.grafana_variables_for_prometheus(expr)):
            empty.append(expr)
    # Only ratios over counters that stay 0 here (no preemptions, no errors of a real alias) may be empty.
    may_be_empty = {m.VLLM_PREEMPTIONS, m.GW_ERRORS}
    for expr in empty:
        if expr.startswith("changes("):
            continue  # the alias-switch annotation: an event, none happened while this Prometheus ran
        assert metric_names(d.grafana_variables_for_prometheus(expr)) & may_be_empty, f"no data: {expr}"
    per_alias = live.query(d.grafana_variables_for_prometheus(
        next(q for q in d.dashboard_queries(d.dashboard()) if q.startswith("histogram_quantile(0.95, sum by (alias, version"))))
    assert {(s["metric"]["alias"], s["metric"]["version"]) for s in per_alias} >= {(ALIAS, VERSION_NAME)}


def test_rules_evaluate_without_errors_and_stay_silent_on_a_healthy_idle_server(live: LiveStack) -> None:
    deadline = time.monotonic() + 20
    while True:
        groups = httpx.get(f"{live.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        evaluated = all(r.get("lastEvaluation", "").startswith("20") for r in rules)
        if evaluated or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    expected = {r["alert"] for g in alert_rules()["groups"] for r in g["rules"]}
    assert {r["name"] for r in rules} == expected
    assert [(r["name"], r["lastError"]) for r in rules if r["health"] != "ok"] == []
    # The requests are done: nothing runs or waits, and no rule may be pending or firing (idle is healthy).
    deadline = time.monotonic() + 15
    while (active := [a["labels"]["alertname"] for a in httpx.get(f"{live.prometheus}/api/v1/alerts").json()["data"]["alerts"]]):
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert active == []


def test_every_metric_name_in_rules_and_dashboard_is_exported(live: LiveStack) -> None:
    """Names come from the servers themselves: vLLM's /metrics after requests, the gateway's /metrics
    (which declares every family, observed or not)."""
    exported = exposed_names(httpx.get(f"{live.vllm.url}/metrics", timeout=10).text)
    gateway = exposed_names(httpx.get(f"{live.gateway.admin_url}/metrics", timeout=10).text)
    assert {m.GW_REQUESTS, m.GW_ERRORS, m.GW_ALIAS_SWITCH, m.bucket(m.GW_TTFT)} <= gateway
    known = exported | gateway | {"up"}
    used: dict[str, str] = {}
    for rule in (r for g in alert_rules()["groups"] for r in g["rules"]):
        used |= dict.fromkeys(metric_names(rule["expr"]), f"alert {rule['alert']}")
    for expr in d.dashboard_queries(d.dashboard()):
        used |= dict.fromkeys(metric_names(d.grafana_variables_for_prometheus(expr)), "dashboard")
    unknown = {name: where for name, where in used.items() if name not in known}
    assert unknown == {}, f"metrics nobody exports: {unknown}"
