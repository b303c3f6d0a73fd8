"""Judge a canary window: the candidate's error rate and latency quantiles against the stable version's.

Pure functions over the gateway's Prometheus text (`/metrics` on its admin listener): a `Snapshot` is the
cumulative counters and histogram buckets per (alias, version), summed over gateways; a window is the difference
of two snapshots; `judge` turns a window into a verdict with its reason and the numbers it used.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field

REQUESTS = "exaone_gateway_requests"
TTFT = "exaone_gateway_ttft_seconds"
TPOT = "exaone_gateway_time_per_output_token_seconds"
# Statuses that count against a version: the server's fault. 4xx are the client's, 499 a client that went away.
_SERVER_ERROR = 500

Verdict = Literal["pass", "fail", "wait"]


class Thresholds(BaseModel):
    """When a candidate fails a window. Latency is compared only when both sides have `min_latency_samples`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_requests: int = Field(default=20, ge=1, description="candidate requests per window before it is judged")
    max_error_rate: float = Field(default=0.05, ge=0, le=1, description="candidate error rate above which it fails "
                                  "whatever the stable version does")
    max_error_rate_increase: float = Field(default=0.02, ge=0, le=1, description="allowed candidate error rate above "
                                           "the stable version's")
    quantile: float = Field(default=0.95, gt=0, lt=1)
    max_latency_ratio: float = Field(default=1.5, ge=1, description="candidate quantile / stable quantile allowed")
    latency_slack_s: float = Field(default=0.05, ge=0, description="absolute slack added to the allowed latency, so "
                                   "noise on tiny latencies does not fail a window")
    min_latency_samples: int = Field(default=10, ge=1)


@dataclass
class Series:
    """One version's cumulative numbers: requests answered by the server (2xx and 5xx; 4xx are left out), the 5xx
    among them, and histogram buckets (upper bound -> cumulative count)."""

    requests: float = 0.0
    errors: float = 0.0
    ttft: dict[float, float] = field(default_factory=dict)
    tpot: dict[float, float] = field(default_factory=dict)

    def minus(self, before: Series) -> Series:
        return Series(self.requests - before.requests, self.errors - before.errors,
                      {le: n - before.ttft.get(le, 0.0) for le, n in self.ttft.items()},
                      {le: n - before.tpot.get(le, 0.0) for le, n in self.tpot.items()})


Snapshot = dict[tuple[str, str], Series]  # (alias, version) -> Series


def parse_metrics(texts: Iterable[str]) -> Snapshot:
    """Sum the gateways' exposition texts into one snapshot."""
    out: Snapshot = defaultdict(Series)
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                key = (labels.get("alias", ""), labels.get("version", ""))
                if sample.name == f"{REQUESTS}_total":
                    status = int(labels["status"]) if labels.get("status", "").isdigit() else 0
                    if 400 <= status < _SERVER_ERROR:
                        continue  # the client's mistake (or a client that went away) says nothing of a version
                    out[key].requests += sample.value
                    if status >= _SERVER_ERROR:
                        out[key].errors += sample.value
                elif sample.name in (f"{TTFT}_bucket", f"{TPOT}_bucket"):
                    buckets = out[key].ttft if sample.name.startswith(TTFT) else out[key].tpot
                    le = float(labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + sample.value
    return dict(out)


def window(before: Snapshot, after: Snapshot, alias: str, version: str) -> Series:
    key = (alias, version)
    return after.get(key, Series()).minus(before.get(key, Series()))


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus's histogram_quantile over cumulative buckets: linear inside the bucket; None without samples."""
    ordered = sorted(buckets.items())
    total = ordered[-1][1] if ordered else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if le == float("inf"):
                return lower_bound  # as Prometheus: the highest finite bound
            span = count - lower_count
            return lower_bound + (le - lower_bound) * ((rank - lower_count) / span if span > 0 else 1.0)
        lower_bound, lower_count = le, count
    return lower_bound


def _samples(buckets: dict[float, float]) -> float:
    return max(buckets.values(), default=0.0)


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str
    measurements: dict[str, float | None]


def judge(stable: Series, candidate: Series, t: Thresholds) -> Judgement:
    """pass: the candidate held; fail: it did not (the reason names the check); wait: too little traffic to say."""
    def rate(s: Series) -> float | None:
        return s.errors / s.requests if s.requests > 0 else None

    m: dict[str, float | None] = {
        "stable_requests": stable.requests, "candidate_requests": candidate.requests,
        "stable_error_rate": rate(stable), "candidate_error_rate": rate(candidate),
    }
    for name, attr in (("ttft", "ttft"), ("tpot", "tpot")):
        m[f"stable_{name}_q"] = quantile(t.quantile, getattr(stable, attr))
        m[f"candidate_{name}_q"] = quantile(t.quantile, getattr(candidate, attr))
    if candidate.requests < t.min_requests:
        return Judgement("wait", f"{candidate.requests:.0f} candidate requests in the window, {t.min_requests} needed",
                         m)
    c_rate = rate(candidate) or 0.0
    if c_rate > t.max_error_rate:
        return Judgement("fail", f"candidate error rate {c_rate:.1%} > {t.max_error_rate:.1%}", m)
    s_rate = rate(stable)
    if s_rate is not None and stable.requests >= t.min_requests and c_rate > s_rate + t.max_error_rate_increase:
        return Judgement("fail", f"candidate error rate {c_rate:.1%} > stable {s_rate:.1%} + "
                                 f"{t.max_error_rate_increase:.1%}", m)
    for name, attr in (("ttft", "ttft"), ("tpot", "tpot")):
        if min(_samples(getattr(stable, attr)), _samples(getattr(candidate, attr))) < t.min_latency_samples:
            continue  # too few streamed requests on one side to compare this latency
        s_q, c_q = m[f"stable_{name}_q"], m[f"candidate_{name}_q"]
        assert s_q is not None and c_q is not None
        allowed = s_q * t.max_latency_ratio + t.latency_slack_s
        if c_q > allowed:
            return Judgement("fail", f"candidate {name.upper()} p{t.quantile * 100:g} {c_q:.3f} s > allowed {allowed:.3f}"
                                     f" s (stable {s_q:.3f} s x {t.max_latency_ratio:g} + {t.latency_slack_s:g} s)", m)
    return Judgement("pass", f"candidate held: error rate {c_rate:.1%} over {candidate.requests:.0f} requests", m)
