"""The Grafana dashboard (JSON model) and its provisioning files, generated so that every query is tested.

Queries use Grafana's `$__rate_interval` and the `$instance` / `$alias` variables; `dashboard_queries`
lists every PromQL expression (panels, annotations, variables) for the tests that parse and run them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.observability import metrics as m
from service.observability._yaml import dump

DASHBOARD_UID = "exaone-lora"
DATASOURCE_UID = "exaone-prometheus"
GRAFANA_DIR = Path(__file__).with_name("grafana")
SHIPPED_DASHBOARD = GRAFANA_DIR / "exaone-lora.json"
SHIPPED_PROVIDER = GRAFANA_DIR / "provisioning" / "dashboards" / "exaone-lora.yml"
SHIPPED_DATASOURCE = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
# Where provisioning puts the JSON on a host; the provider file points Grafana there.
HOST_DASHBOARD_DIR = "/var/lib/grafana/dashboards/exaone-lora"

DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
INSTANCE = 'instance=~"$instance"'
ALIAS = 'alias=~"$alias"'


@dataclass
class Query:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclass
class Panel:
    title: str
    queries: list[Query]
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    width: int = 8
    thresholds: list[tuple[float, str]] = field(default_factory=list)


def _quantiles(histogram: str, selector: str, title: str, description: str) -> Panel:
    queries = [
        Query(f"histogram_quantile({q}, sum by (le) (rate({m.bucket(histogram)}{{{selector}}}[{RATE}])))", f"p{round(q * 100)}")
        for q in (0.5, 0.95, 0.99)
    ]
    return Panel(title, queries, unit="s", description=description)


def engine_panels() -> list[Panel]:
    return [
        Panel("Generation throughput", [
            Query(f"sum by (instance) (rate({m.VLLM_GENERATION_TOKENS}{{{INSTANCE}}}[{RATE}]))", "{{instance}} generated"),
            Query(f"sum by (instance) (rate({m.VLLM_PROMPT_TOKENS}{{{INSTANCE}}}[{RATE}]))", "{{instance}} prompt"),
        ], unit="tokens/s", description="Tokens per second out of (generated) and into (prompt) each replica."),
        Panel("Finished requests", [
            Query(f"sum by (finished_reason) (rate({m.VLLM_REQUEST_SUCCESS}{{{INSTANCE}}}[{RATE}]))", "{{finished_reason}}"),
        ], unit="reqps", description="Requests finished per second by reason (stop, length, abort, error)."),
        Panel("KV cache usage", [
            Query(f"max by (instance) ({m.VLLM_KV_USAGE}{{{INSTANCE}}})", "{{instance}}"),
        ], unit="percentunit", thresholds=[(0.95, "red")], description="Alert VllmKvCacheNearlyFull above 95% for 5m."),
        _quantiles(m.VLLM_TTFT, INSTANCE, "Time to first token", "Prefill plus queueing, all adapters together."),
        _quantiles(m.VLLM_ITL, INSTANCE, "Inter-token latency", "Decode step time seen by a stream."),
        _quantiles(m.VLLM_E2E, INSTANCE, "End-to-end request latency", "Alert VllmE2eLatencyP99High: p99 above 5 s."),
        Panel("Queue", [
            Query(f"sum by (instance) ({m.VLLM_RUNNING}{{{INSTANCE}}})", "{{instance}} running"),
            Query(f"sum by (instance) ({m.VLLM_WAITING}{{{INSTANCE}}})", "{{instance}} waiting"),
        ], description="Requests in the batch and in the queue; alert VllmQueueBacklog above 50 waiting for 2m."),
        Panel("Preemptions", [
            Query(f"sum by (instance) (rate({m.VLLM_PREEMPTIONS}{{{INSTANCE}}}[{RATE}]))", "{{instance}}"),
        ], unit="ops", thresholds=[(1, "red")], description="KV cache evictions; should stay near 0 (alert above 1/s)."),
        Panel("Prefix cache hit ratio", [
            Query(f"sum by (instance) (rate({m.VLLM_PREFIX_HITS}{{{INSTANCE}}}[{RATE}]))\n"
                  f"/ sum by (instance) (rate({m.VLLM_PREFIX_QUERIES}{{{INSTANCE}}}[{RATE}]))", "{{instance}}"),
        ], unit="percentunit", description="Prompt tokens served from the prefix cache."),
        Panel("LoRA adapters: running and waiting (vLLM scheduler)", [
            # One series per scheduler state whose value is that state's time: the newest is the current one.
            Query(f"{m.VLLM_LORA_INFO}{{{INSTANCE}}}\n== on (instance) group_left ()\n"
                  f"max by (instance) ({m.VLLM_LORA_INFO}{{{INSTANCE}}})", instant=True),
        ], kind="table", width=24,
            description="running_lora_adapters hold GPU LoRA slots (max_lora); waiting_lora_adapters have queued requests."),
    ]


def gateway_panels() -> list[Panel]:
    duration, ttft = m.bucket(m.GW_DURATION), m.bucket(m.GW_TTFT)
    return [
        Panel("Requests per alias", [
            Query(f"sum by (alias) (rate({m.GW_REQUESTS}{{{ALIAS}}}[{RATE}]))", "{{alias}}"),
        ], unit="reqps"),
        Panel("Error ratio per alias", [
            Query(f"sum by (alias) (rate({m.GW_ERRORS}{{{ALIAS}}}[{RATE}]))\n"
                  f"/ sum by (alias) (rate({m.GW_REQUESTS}{{{ALIAS}}}[{RATE}]))", "{{alias}}"),
        ], unit="percentunit", thresholds=[(0.05, "red")], description="Alert GatewayAliasErrorRatioHigh above 5% for 5m."),
        Panel("Responses by status", [
            Query(f"sum by (alias, status) (rate({m.GW_REQUESTS}{{{ALIAS}}}[{RATE}]))", "{{alias}} {{status}}"),
        ], unit="reqps"),
        Panel("p95 request duration per alias and version", [
            Query(f"histogram_quantile(0.95, sum by (alias, version, le) (rate({duration}{{{ALIAS}}}[{RATE}])))",
                  "{{alias}} {{version}}"),
        ], unit="s", description="A switch shows as a new version line; alert GatewayAliasSwitchLatencyRegression."),
        Panel("p95 time to first token per alias and version", [
            Query(f"histogram_quantile(0.95, sum by (alias, version, le) (rate({ttft}{{{ALIAS}}}[{RATE}])))",
                  "{{alias}} {{version}}"),
        ], unit="s"),
        Panel("Generated tokens per alias", [
            Query(f"sum by (alias) (rate({m.GW_TOKENS}{{{ALIAS}}}[{RATE}]))", "{{alias}}"),
        ], unit="tokens/s"),
        Panel("In-flight requests per alias", [
            Query(f"sum by (alias) ({m.GW_IN_FLIGHT}{{{ALIAS}}})", "{{alias}}"),
        ]),
        Panel("Current version per alias", [
            Query(f"max by (alias) ({m.GW_ALIAS_VERSION}{{{ALIAS}}})", "{{alias}}", instant=True),
        ], kind="stat"),
        Panel("Requests for unknown models", [
            # Routing errors before an alias is resolved carry alias="unknown"; they are client mistakes,
            # so the per-alias error alert ignores them (no requests_total series to divide by).
            Query(f'sum by (reason) (rate({m.GW_ERRORS}{{alias="unknown"}}[{RATE}]))', "{{reason}}"),
        ], unit="reqps"),
        Panel("Time since last alias switch", [
            Query(f"time() - max by (alias) ({m.GW_ALIAS_SWITCH}{{{ALIAS}}})", "{{alias}}", instant=True),
        ], kind="stat", unit="s"),
    ]


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    targets = []
    for i, q in enumerate(panel.queries):
        target: dict[str, Any] = {"datasource": DS, "expr": q.expr, "legendFormat": q.legend, "refId": chr(ord("A") + i)}
        if q.instant or panel.kind == "table":
            target.update(instant=True, range=False, format="table" if panel.kind == "table" else "time_series")
        targets.append(target)
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    steps += [{"color": color, "value": value} for value, color in panel.thresholds]
    result: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DS,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit, "thresholds": {"mode": "absolute", "steps": steps}}, "overrides": []},
        "options": {},
        "targets": targets,
    }
    if panel.kind == "table":
        result["transformations"] = [{"id": "organize", "options": {
            "excludeByName": {"Time": True, "Value": True, "__name__": True},
            "indexByName": {"instance": 0, "max_lora": 1, "running_lora_adapters": 2, "waiting_lora_adapters": 3}}}]
    return result


def _variable(name: str, label: str, metric: str) -> dict[str, Any]:
    query = f"label_values({metric}, {name})"
    return {"name": name, "label": label, "type": "query", "datasource": DS, "query": {"query": query, "refId": name},
            "definition": query, "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1}


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y, next_id = 0, 1
    for title, group in (("vLLM engines", engine_panels()), ("Gateway: per alias", gateway_panels())):
        panels.append({"id": next_id, "type": "row", "title": title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id, y, x = next_id + 1, y + 1, 0
        for panel in group:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(_panel_json(panel, next_id, x, y))
            next_id, x = next_id + 1, x + panel.width
        y += 8
    return {
        "uid": DASHBOARD_UID,
        "title": "EXAONE multi-LoRA serving",
        "description": "vLLM engines and the per-alias gateway of exaone-lora (generated by service/observability/dashboard.py).",
        "tags": ["exaone-lora", "vllm", "lora"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {"text": "Prometheus", "value": DATASOURCE_UID}},
            _variable("instance", "vLLM replica", m.VLLM_RUNNING),
            _variable("alias", "Alias", m.GW_REQUESTS),
        ]},
        "annotations": {"list": [{
            "name": "Alias switches", "datasource": DS, "enable": True, "iconColor": "orange",
            "expr": f"changes({m.GW_ALIAS_VERSION}{{{ALIAS}}}[2m]) > 0", "titleFormat": "alias {{alias}} switched",
            "textFormat": "now version {{alias}}", "step": "1m",
        }]},
        "panels": panels,
    }


def render_dashboard_json() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=False) + "\n"


_LABEL_VALUES = re.compile(r"^label_values\((?P<metric>[^,]+),\s*\w+\)$")


def dashboard_queries(document: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard JSON: panel targets, annotations and variable queries
    (for `label_values(metric, label)` the metric selector itself)."""
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(document.get("panels", []))
    exprs.extend(a["expr"] for a in document.get("annotations", {}).get("list", []) if a.get("expr"))
    for variable in document.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = _LABEL_VALUES.match(query)
            exprs.append(match["metric"] if match else query)
    return exprs


def grafana_variables_for_prometheus(expr: str, rate_interval: str = "1m") -> str:
    """The expression as Grafana sends it with every variable on All (used to run queries in tests)."""
    return expr.replace("$__rate_interval", rate_interval).replace("$instance", ".*").replace("$alias", ".*")


def dashboard_provider_yaml(path: str = HOST_DASHBOARD_DIR) -> str:
    """Grafana's dashboard provider: load the JSON files under `path`, read-only in the UI."""
    return dump({"apiVersion": 1, "providers": [{
        "name": "exaone-lora", "orgId": 1, "folder": "EXAONE LoRA", "type": "file", "disableDeletion": True,
        "allowUiUpdates": False, "updateIntervalSeconds": 60, "options": {"path": path, "foldersFromFilesStructure": False},
    }]}, "# Grafana dashboard provisioning (copy to /etc/grafana/provisioning/dashboards/).\n")


def datasource_yaml(prometheus_port: int = 9090) -> str:
    """Grafana's Prometheus data source on the same host (Prometheus listens on loopback only)."""
    return dump({"apiVersion": 1, "datasources": [{
        "name": "Prometheus", "uid": DATASOURCE_UID, "type": "prometheus", "access": "proxy",
        "url": f"http://127.0.0.1:{prometheus_port}", "isDefault": True, "editable": False,
        "jsonData": {"timeInterval": "15s"},
    }]}, "# Grafana data source provisioning (copy to /etc/grafana/provisioning/datasources/).\n")
