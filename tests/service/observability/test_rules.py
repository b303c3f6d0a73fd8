"""Alert rules: valid for promtool, unit-tested (each fires and stays silent), shipped file up to date."""

from __future__ import annotations

from pathlib import Path

import yaml

from service.observability.rules import SHIPPED_ALERTS, AlertThresholds, alert_rules, render_alerts_yml
from tests.support.promql import metric_names, promtool

HERE = Path(__file__).parent
UNIT_TESTS = HERE / "alerts_test.yml"
REFERENCE_FIVE = {"VllmKvCacheNearlyFull", "VllmE2eLatencyP99High", "VllmQueueBacklog", "VllmPreemptionStorm",
                  "VllmThroughputStalled"}


def _rules() -> dict[str, dict]:
    return {r["alert"]: r for g in alert_rules()["groups"] for r in g["rules"]}


def test_shipped_alerts_file_is_the_rendered_one() -> None:
    assert SHIPPED_ALERTS.read_text() == render_alerts_yml(), "run `exaone-lora obs ship`"


def test_promtool_check_rules_accepts_the_shipped_rules() -> None:
    result = promtool("check", "rules", SHIPPED_ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_reference_alerts_are_present_with_their_thresholds_and_severities() -> None:
    rules = _rules()
    assert set(rules) >= REFERENCE_FIVE
    assert {"GatewayAliasErrorRatioHigh", "GatewayAliasSwitchLatencyRegression"} <= set(rules)
    expect = {"VllmKvCacheNearlyFull": ("critical", "5m", "> 0.95"), "VllmE2eLatencyP99High": ("warning", None, "> 5"),
              "VllmQueueBacklog": ("warning", "2m", "> 50"), "VllmPreemptionStorm": ("critical", None, "> 1"),
              "VllmThroughputStalled": ("critical", "1m", "== 0")}
    for name, (severity, for_, threshold) in expect.items():
        assert rules[name]["labels"]["severity"] == severity, name
        if for_:
            assert rules[name]["for"] == for_, name
        assert threshold in rules[name]["expr"], name
    p99 = rules["VllmE2eLatencyP99High"]["expr"]
    assert "histogram_quantile(0.99, sum by (job, instance, le) (rate(vllm:e2e_request_latency_seconds_bucket[5m])))" in p99
    assert "vllm:kv_cache_usage_perc" in rules["VllmKvCacheNearlyFull"]["expr"]
    assert "rate(vllm:num_preemptions_total[5m])" in rules["VllmPreemptionStorm"]["expr"]


def test_thresholds_are_parameters() -> None:
    rules = {r["alert"]: r for g in alert_rules(AlertThresholds(waiting_requests=80))["groups"] for r in g["rules"]}
    assert rules["VllmQueueBacklog"]["expr"].endswith("> 80")


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", UNIT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_rule_has_a_case_that_fires_and_one_that_stays_silent() -> None:
    cases = yaml.safe_load(UNIT_TESTS.read_text())
    fires: set[str] = set()
    silent: set[str] = set()
    for test in cases["tests"]:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    missing_fire = set(_rules()) - fires
    missing_silent = set(_rules()) - silent
    assert not missing_fire, f"rules without a firing unit test: {sorted(missing_fire)}"
    assert not missing_silent, f"rules without a silent unit test: {sorted(missing_silent)}"


def test_the_reference_throughput_rule_would_fire_on_an_idle_server(tmp_path: Path) -> None:
    """The unit tests catch the reference design's mistake: the naive rule fires on an idle server."""
    document = alert_rules()
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == "VllmThroughputStalled":
                rule["expr"] = "sum by (job, instance) (rate(vllm:generation_tokens_total[1m])) == 0"
    (tmp_path / "service" / "observability").mkdir(parents=True)
    (tmp_path / "service" / "observability" / "alerts.yml").write_text(yaml.safe_dump(document))
    (tmp_path / "tests" / "service" / "observability").mkdir(parents=True)
    (tmp_path / "tests" / "service" / "observability" / "alerts_test.yml").write_text(UNIT_TESTS.read_text())
    result = promtool("test", "rules", tmp_path / "tests" / "service" / "observability" / "alerts_test.yml")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert 'instance="idle:8081"' in output and 'instance="fresh:8081"' in output


def test_rule_metric_names_are_the_expected_ones() -> None:
    used = set().union(*(metric_names(r["expr"]) for r in _rules().values()))
    assert used == {
        "vllm:kv_cache_usage_perc", "vllm:e2e_request_latency_seconds_bucket", "vllm:num_requests_waiting",
        "vllm:num_requests_running", "vllm:num_preemptions_total", "vllm:generation_tokens_total", "up",
        "exaone_gateway_request_errors_total", "exaone_gateway_requests_total",
        "exaone_gateway_request_duration_seconds_bucket", "exaone_gateway_request_duration_seconds_count",
        "exaone_gateway_alias_switch_timestamp_seconds", "exaone_gateway_canary_weight_percent",
        "exaone_gateway_canary_ended_total",
    }
