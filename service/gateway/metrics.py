"""Per-adapter Prometheus metrics of the gateway (names are a contract with dashboards and alerts).

Each gateway owns its registry (no process-global state), so tests and several gateways in one
process do not collide. Label values come from the alias table, never from raw client input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Mean time per output token of one streamed request (an H100 decodes a token in 5-15 ms, the CPU build in 10-500 ms).
TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("exaone_gateway_requests", "Requests answered, by alias, version and HTTP status",
                                ["alias", "version", "status"], registry=r)
        self.errors = Counter("exaone_gateway_request_errors", "Failed requests, by alias, version and reason",
                              ["alias", "version", "reason"], registry=r)
        self.ttft = Histogram("exaone_gateway_ttft_seconds", "Time to the first streamed token",
                              ["alias", "version"], buckets=TTFT_BUCKETS, registry=r)
        self.duration = Histogram("exaone_gateway_request_duration_seconds", "Whole request duration",
                                  ["alias", "version"], buckets=DURATION_BUCKETS, registry=r)
        # Per request, not per token: one observation at the end of a stream costs nothing per token, and its
        # quantiles are what a canary is judged on beside TTFT (service.rollout.analysis).
        self.tpot = Histogram("exaone_gateway_time_per_output_token_seconds", "Mean inter-token latency of a streamed "
                              "request: (duration - TTFT) / (completion tokens - 1)", ["alias", "version"],
                              buckets=TPOT_BUCKETS, registry=r)
        self.tokens = Counter("exaone_gateway_generated_tokens", "Completion tokens generated",
                              ["alias", "version"], registry=r)
        # From vLLM's usage (the final stream chunk, or the body of an answer that is not streamed).
        self.prompt_tokens = Counter("exaone_gateway_prompt_tokens", "Prompt tokens processed",
                                     ["alias", "version"], registry=r)
        self.in_flight = Gauge("exaone_gateway_in_flight_requests", "Requests in flight, by alias", ["alias"], registry=r)
        self.alias_version = Gauge("exaone_gateway_alias_version", "Version number an alias points to", ["alias"],
                                   registry=r)
        self.alias_switched = Gauge("exaone_gateway_alias_switch_timestamp_seconds", "Unix time of the last alias switch",
                                    ["alias"], registry=r)
        # A canary's weight by candidate version (the series is removed when the canary ends), and how canaries
        # ended: `promoted` (the alias switched to the candidate) or `rolled_back` (ended without that).
        self.canary_weight = Gauge("exaone_gateway_canary_weight_percent", "Share of an alias's requests sent to its "
                                   "canary version", ["alias", "version"], registry=r)
        self.canary_ended = Counter("exaone_gateway_canary_ended", "Canaries ended, by outcome (promoted, rolled_back)",
                                    ["alias", "version", "outcome"], registry=r)
        # Shadow requests: mirrored to a candidate, answers discarded; apart from the clients' own metrics.
        self.shadow_requests = Counter("exaone_gateway_shadow_requests", "Shadow requests to a candidate, by HTTP status "
                                       "(`error`: no answer)", ["alias", "version", "status"], registry=r)
        self.shadow_duration = Histogram("exaone_gateway_shadow_duration_seconds", "Whole duration of a shadow request",
                                         ["alias", "version"], buckets=DURATION_BUCKETS, registry=r)
        self.shadow_tokens = Counter("exaone_gateway_shadow_generated_tokens", "Completion tokens of shadow requests",
                                     ["alias", "version"], registry=r)
        self.shadow_skipped = Counter("exaone_gateway_shadow_skipped", "Requests not mirrored because the shadow cap "
                                      "was reached", ["alias"], registry=r)
        self.routed = Counter("exaone_gateway_routed_requests", "Requests placed on a replica, by alias and path "
                              "(base, lora, merged)", ["alias", "path"], registry=r)
        # Which replica (its index in the gateway's --upstream list) took each version's requests: LoRA affinity
        # (service.gateway.scoring) shows here as each version staying on few replicas.
        self.placed = Counter("exaone_gateway_replica_requests", "Requests placed, by replica index and version",
                              ["replica", "version"], registry=r)
        self.healed = Counter("exaone_gateway_healed_loads", "Versions re-loaded into a replica that had lost them "
                              "(restart)", ["version"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
