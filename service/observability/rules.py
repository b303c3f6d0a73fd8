"""Prometheus alert rules for the vLLM engines and the gateway's per-alias metrics.

The reference design's five alerts, corrected:
- p99 latency: `histogram_quantile` needs `rate(..._bucket[5m])` summed by `le`; the reference
  applied it to the bare histogram name, which is not a series and never matches.
- throughput zero: the reference fired on every idle server (no traffic means zero tokens); here it
  fires only while requests are running or waiting and no token comes out (a stuck engine).
- every rule aggregates `by (job, instance)`, so a two-replica host names the replica in trouble.
Plus target-down rules (a dead engine exports no vLLM series at all, so the rules above go silent)
and the per-alias rules that only the gateway can give (vLLM has no per-adapter latency).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.observability import metrics as m
from service.observability._yaml import dump

SHIPPED_ALERTS = Path(__file__).with_name("alerts.yml")


@dataclass(frozen=True)
class AlertThresholds:
    kv_cache_usage: float = 0.95
    p99_e2e_seconds: float = 5.0
    waiting_requests: int = 50
    preemptions_per_second: float = 1.0
    alias_error_ratio: float = 0.05
    # A freshly switched version is a regression when its p95 exceeds the previous version's by this factor.
    latency_regression_factor: float = 1.5
    switch_window_minutes: int = 10
    # How much pre-switch history forms the previous version's baseline.
    baseline_minutes: int = 30
    # A canary candidate fails more than this share of its requests (5xx): the rollout controller rolls it back
    # within one window; the alert is for the canaries nobody is watching (one set by hand, a controller gone).
    canary_error_ratio: float = 0.05
    canary_rollback_window_minutes: int = 30


def _alert(name: str, expr: str, severity: str, component: str, summary: str, description: str,
           for_: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr.strip() + "\n" if "\n" in expr.strip() else expr.strip()}
    if for_:
        rule["for"] = for_
    rule["labels"] = {"severity": severity, "component": component}
    rule["annotations"] = {"summary": summary, "description": description}
    return rule


def vllm_rules(t: AlertThresholds) -> list[dict[str, Any]]:
    by = "by (job, instance)"
    return [
        _alert(
            "VllmKvCacheNearlyFull",
            f"max {by} ({m.VLLM_KV_USAGE}) > {t.kv_cache_usage}",
            "critical", "vllm",
            "KV cache above {{ $value | humanizePercentage }} on {{ $labels.instance }}",
            "The KV cache has been nearly full for 5 minutes: new requests queue and running ones get preempted. "
            "Lower max_num_seqs or max_model_len, or add a replica.",
            "5m",
        ),
        _alert(
            "VllmE2eLatencyP99High",
            f"histogram_quantile(0.99, sum by (job, instance, le) (rate({m.bucket(m.VLLM_E2E)}[5m])))\n"
            f"  > {t.p99_e2e_seconds:g}",
            "warning", "vllm",
            "p99 end-to-end latency {{ $value | humanizeDuration }} on {{ $labels.instance }}",
            f"The slowest 1% of requests took more than {t.p99_e2e_seconds:g} s over the last 5 minutes "
            "(an idle server has no rate and stays silent).",
            "5m",
        ),
        _alert(
            "VllmQueueBacklog",
            f"sum {by} ({m.VLLM_WAITING}) > {t.waiting_requests}",
            "warning", "vllm",
            "{{ $value }} requests waiting on {{ $labels.instance }}",
            f"More than {t.waiting_requests} requests have waited for 2 minutes: the replica is saturated.",
            "2m",
        ),
        _alert(
            "VllmPreemptionStorm",
            f"sum {by} (rate({m.VLLM_PREEMPTIONS}[5m])) > {t.preemptions_per_second:g}",
            "critical", "vllm",
            "{{ $value | humanize }} preemptions/s on {{ $labels.instance }}",
            "vLLM is evicting running requests to free KV cache and recomputing them; throughput collapses.",
        ),
        _alert(
            "VllmThroughputStalled",
            f"sum {by} (rate({m.VLLM_GENERATION_TOKENS}[1m])) == 0\n"
            f"and on (job, instance)\n"
            f"sum {by} ({m.VLLM_RUNNING} + {m.VLLM_WAITING}) > 0",
            "critical", "vllm",
            "No tokens generated on {{ $labels.instance }} while requests are pending",
            "Requests are running or waiting but no token has been generated for over a minute: the engine is stuck. "
            "An idle server (nothing running or waiting) does not fire.",
            "1m",
        ),
        _alert(
            "VllmTargetDown",
            f'up{{job="{m.VLLM_JOB}"}} == 0',
            "critical", "vllm",
            "vLLM replica {{ $labels.instance }} is not answering /metrics",
            "Prometheus cannot scrape this replica; every other vLLM alert is blind to it. Check the systemd unit.",
            "2m",
        ),
    ]


def gateway_rules(t: AlertThresholds) -> list[dict[str, Any]]:
    window = f"{t.switch_window_minutes}m"
    baseline = f"[{t.baseline_minutes}m] offset {window}"
    duration = m.bucket(m.GW_DURATION)
    return [
        _alert(
            "GatewayAliasErrorRatioHigh",
            f"sum by (alias) (rate({m.GW_ERRORS}[5m]))\n"
            f"/\n"
            f"sum by (alias) (rate({m.GW_REQUESTS}[5m]))\n"
            f"> {t.alias_error_ratio}",
            "critical", "gateway",
            "Alias {{ $labels.alias }} fails {{ $value | humanizePercentage }} of its requests",
            f"More than {t.alias_error_ratio:.0%} of the requests to this alias failed for 5 minutes. "
            "If its version was switched recently, roll the alias back.",
            "5m",
        ),
        # The new version's p95 (by version label, last 5m) against the alias's p95 over the baseline window
        # that ended when the switch window began; that window only saw the previous version(s). Versions
        # that already had traffic before the switch are not "new" (drain of the old version, or a rollback
        # to a known version). No baseline (a new alias, a fresh Prometheus) gives no comparison, no alert.
        _alert(
            "GatewayAliasSwitchLatencyRegression",
            f"(\n"
            f"  histogram_quantile(0.95, sum by (alias, version, le) (rate({duration}[5m])))\n"
            f"  > on (alias) group_left\n"
            f"  {t.latency_regression_factor:g} * histogram_quantile(0.95, sum by (alias, le) (rate({duration}{baseline})))\n"
            f")\n"
            f"unless on (alias, version)\n"
            f"  (sum by (alias, version) (rate({m.GW_DURATION}_count{baseline})) > 0)\n"
            f"and on (alias)\n"
            f"  (time() - max by (alias) ({m.GW_ALIAS_SWITCH}) < {t.switch_window_minutes * 60})",
            "warning", "gateway",
            "Alias {{ $labels.alias }} version {{ $labels.version }} is slower than the version before the switch",
            f"The alias was switched in the last {window} and the new version's p95 request latency is more than "
            f"{t.latency_regression_factor:g}x the previous version's. Consider rolling the alias back.",
            "2m",
        ),
        _alert(
            "GatewayCanaryErrorRatioHigh",
            f"(\n"
            f'  sum by (alias, version) (rate({m.GW_REQUESTS}{{status=~"5.."}}[5m]))\n'
            f"  /\n"
            f"  sum by (alias, version) (rate({m.GW_REQUESTS}[5m]))\n"
            f"  > {t.canary_error_ratio}\n"
            f")\n"
            f"and on (alias, version)\n"
            f"  (max by (alias, version) ({m.GW_CANARY_WEIGHT}) > 0)",
            "warning", "gateway",
            "Canary {{ $labels.version }} of {{ $labels.alias }} fails {{ $value | humanizePercentage }} of its requests",
            f"A canary candidate with traffic has failed more than {t.canary_error_ratio:.0%} of its requests for 2 "
            "minutes. A running `exaone-lora adapters rollout` rolls it back by itself; otherwise end the canary with "
            "`exaone-lora adapters alias ALIAS CURRENT_VERSION` and `fab deploy-adapters`.",
            "2m",
        ),
        _alert(
            "GatewayCanaryRolledBack",
            f'sum by (alias, version) (increase({m.GW_CANARY_ENDED}{{outcome="rolled_back"}}'
            f"[{t.canary_rollback_window_minutes}m])) > 0",
            "warning", "gateway",
            "Canary {{ $labels.version }} of {{ $labels.alias }} was rolled back",
            "A canary ended without being promoted (the rollout controller's verdict, or an operator ended it). "
            "`exaone-lora adapters rollout-status ALIAS` shows the windows and the reason.",
        ),
        _alert(
            "GatewayTargetDown",
            f'up{{job="{m.GATEWAY_JOB}"}} == 0',
            "critical", "gateway",
            "Gateway {{ $labels.instance }} is not answering /metrics",
            "Prometheus cannot scrape the gateway: clients on this host get no answers and per-alias metrics stop.",
            "2m",
        ),
    ]


def alert_rules(thresholds: AlertThresholds | None = None) -> dict[str, Any]:
    """The rule file document (`groups:`), as loaded by Prometheus and `promtool check rules`."""
    t = thresholds or AlertThresholds()
    return {
        "groups": [
            {"name": "exaone-vllm", "rules": vllm_rules(t)},
            {"name": "exaone-gateway", "rules": gateway_rules(t)},
        ]
    }


def render_alerts_yml(thresholds: AlertThresholds | None = None) -> str:
    header = "# Generated by `exaone-lora obs render` (service/observability/rules.py); do not edit.\n"
    return dump(alert_rules(thresholds), header)
