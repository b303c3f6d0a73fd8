"""The rollout analysis, pure: decisions from synthetic gateway metrics (real prometheus_client histograms)."""

from __future__ import annotations

import pytest

from service.gateway.metrics import GatewayMetrics
from service.rollout.analysis import Series, Thresholds, judge, parse_metrics, quantile, window

S, C = "medical-v1", "medical-v2"


def traffic(metrics: GatewayMetrics, version: str, ok: int, errors: int = 0, ttft: float = 0.02,
            tpot: float = 0.01) -> None:
    for _ in range(ok):
        metrics.requests.labels("medical", version, "200").inc()
        metrics.ttft.labels("medical", version).observe(ttft)
        metrics.tpot.labels("medical", version).observe(tpot)
    for _ in range(errors):
        metrics.requests.labels("medical", version, "500").inc()
        metrics.errors.labels("medical", version, "upstream_error").inc()
    metrics.requests.labels("medical", version, "404").inc(5)  # a client's mistake never counts against a version


def judged(ok_s: int, ok_c: int, err_c: int = 0, err_s: int = 0, ttft_c: float = 0.02, tpot_c: float = 0.01,
           t: Thresholds | None = None) -> tuple[str, str]:
    m = GatewayMetrics()
    traffic(m, S, 3, 1)  # before the window: ignored
    before = parse_metrics([m.render().decode()])
    traffic(m, S, ok_s, err_s)
    traffic(m, C, ok_c, err_c, ttft=ttft_c, tpot=tpot_c)
    after = parse_metrics([m.render().decode()])
    j = judge(window(before, after, "medical", S), window(before, after, "medical", C), t or Thresholds())
    return j.verdict, j.reason


def test_a_candidate_like_the_stable_version_passes() -> None:
    assert judged(100, 30)[0] == "pass"


def test_too_few_candidate_requests_wait() -> None:
    verdict, reason = judged(100, 10)
    assert verdict == "wait" and "20 needed" in reason


def test_errors_above_the_absolute_limit_fail() -> None:
    verdict, reason = judged(100, 20, err_c=10)
    assert verdict == "fail" and "error rate 33.3% > 5.0%" in reason


def test_errors_above_the_stable_rate_fail_even_under_the_absolute_limit() -> None:
    t = Thresholds(max_error_rate=0.5, max_error_rate_increase=0.02)
    assert judged(100, 45, err_c=5, t=t)[0] == "fail"  # 10 % vs 0 %
    assert judged(90, 45, err_c=5, err_s=10, t=t)[0] == "pass"  # 10 % vs 10 %: the stable version is as bad


def test_slow_first_tokens_or_slow_decoding_fail() -> None:
    verdict, reason = judged(100, 30, ttft_c=2.0)
    assert verdict == "fail" and "TTFT p95" in reason
    verdict, reason = judged(100, 30, tpot_c=0.5)
    assert verdict == "fail" and "TPOT p95" in reason
    assert judged(100, 30, ttft_c=0.04)[0] == "pass"  # within ratio x stable + slack


def test_quantile_matches_prometheus_histogram_quantile() -> None:
    buckets = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.7, buckets) == pytest.approx(0.3)
    assert quantile(0.95, buckets) == pytest.approx(0.75)
    assert quantile(0.5, {}) is None and quantile(0.5, {1.0: 0.0}) is None
    assert quantile(0.99, {1.0: 1.0, float("inf"): 5.0}) == 1.0


def test_several_gateways_are_summed() -> None:
    a, b = GatewayMetrics(), GatewayMetrics()
    traffic(a, C, 10, 1)
    traffic(b, C, 20, 2)
    snap = parse_metrics([a.render().decode(), b.render().decode()])
    series = window({}, snap, "medical", C)
    assert (series.requests, series.errors) == (33, 3)  # 30 ok + 3 errors; the 2 x 5 client errors left out
    assert window({}, snap, "medical", "medical-v9") == Series()
