"""The Grafana dashboard: generated file shipped, every query valid PromQL, every panel asked for present."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from service.observability import dashboard as d
from tests.support.promql import metric_names, promtool


def test_shipped_dashboard_and_provisioning_are_the_generated_ones() -> None:
    assert json.loads(d.SHIPPED_DASHBOARD.read_text()) == d.dashboard()
    assert d.SHIPPED_DASHBOARD.read_text() == d.render_dashboard_json()
    assert d.SHIPPED_PROVIDER.read_text() == d.dashboard_provider_yaml()
    assert d.SHIPPED_DATASOURCE.read_text() == d.datasource_yaml()
    provider = yaml.safe_load(d.SHIPPED_PROVIDER.read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"] == d.HOST_DASHBOARD_DIR
    source = yaml.safe_load(d.SHIPPED_DATASOURCE.read_text())["datasources"][0]
    assert source["uid"] == d.DATASOURCE_UID and source["url"] == "http://127.0.0.1:9090"


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each expression (as a recording rule) with Grafana's variables filled in."""
    queries = d.dashboard_queries(d.dashboard())
    assert len(queries) >= 25
    rules = [{"record": f"dashboard:query_{i}", "expr": d.grafana_variables_for_prometheus(q)} for i, q in enumerate(queries)]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_panels_cover_the_engine_and_every_alias_view() -> None:
    document = d.dashboard()
    titles = {p["title"] for p in document["panels"]}
    for title in ("Generation throughput", "Time to first token", "Inter-token latency", "End-to-end request latency",
                  "KV cache usage", "Queue", "Preemptions", "LoRA adapters: running and waiting (vLLM scheduler)",
                  "Requests per alias", "Error ratio per alias", "p95 request duration per alias and version",
                  "Current version per alias", "Time since last alias switch"):
        assert title in titles, title
    used = set().union(*(metric_names(d.grafana_variables_for_prometheus(q)) for q in d.dashboard_queries(document)))
    assert "vllm:lora_requests_info" in used and "exaone_gateway_ttft_seconds_bucket" in used
    assert {"vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
            "vllm:e2e_request_latency_seconds_bucket"} <= used


def test_layout_is_valid_for_grafana() -> None:
    document = d.dashboard()
    ids = [p["id"] for p in document["panels"]]
    assert len(ids) == len(set(ids))
    for panel in document["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert document["uid"] == d.DASHBOARD_UID and document["schemaVersion"] >= 36
    variables = {v["name"] for v in document["templating"]["list"]}
    assert variables == {"datasource", "instance", "alias"}


def test_metric_name_extraction_ignores_labels_functions_and_keywords() -> None:
    expr = ('histogram_quantile(0.95, sum by (alias, le) (rate(a_bucket{alias=~"x|y", le!="1"}[5m] offset 10m)))\n'
            '> on (alias) group_left () max by (alias) (vllm:b) unless c and time() - d_total')
    assert metric_names(expr) == {"a_bucket", "vllm:b", "c", "d_total"}
