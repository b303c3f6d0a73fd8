"""Write every observability file of one stack into a directory (what provisioning copies to a host)."""

from __future__ import annotations

import json
from pathlib import Path

from exaone_lora.spec import DeploymentSpec
from service.observability import alertmanager, dashboard, prometheus, rules
from service.observability._yaml import dump

ALERTS_FILE = "alerts.yml"
PROMETHEUS_FILE = "prometheus.yml"
ALERTMANAGER_FILE = "alertmanager.yml"
PROMETHEUS_DEFAULTS = "prometheus.defaults"
ALERTMANAGER_DEFAULTS = "alertmanager.defaults"


def render_stack(spec: DeploymentSpec, out: Path) -> list[Path]:
    """Render into `out` (created); returns the files written. Rule files are referenced by a relative
    path, so `promtool check config out/prometheus.yml` and a Prometheus started in `out` find them."""
    files: dict[str, str] = {ALERTS_FILE: rules.render_alerts_yml()}
    if spec.target != "aks":
        files[PROMETHEUS_FILE] = prometheus.render_prometheus_yml(spec, rule_files=(ALERTS_FILE,))
        files[PROMETHEUS_DEFAULTS] = prometheus.debian_defaults(spec)
        files[ALERTMANAGER_FILE] = alertmanager.render_alertmanager_yml(spec)
        files[ALERTMANAGER_DEFAULTS] = alertmanager.debian_defaults(spec)
    files |= {
        "grafana/exaone-lora.json": dashboard.render_dashboard_json(),
        "grafana/provisioning/dashboards/exaone-lora.yml": dashboard.dashboard_provider_yaml(),
        "grafana/provisioning/datasources/prometheus.yml": dashboard.datasource_yaml(spec.monitoring.prometheus_port),
    }
    if spec.target == "aks":
        files["kubernetes/pod-monitor.yaml"] = dump(prometheus.pod_monitor(spec))
        files["kubernetes/scrape-annotations.json"] = json.dumps(prometheus.kubernetes_scrape_annotations(spec), indent=2) + "\n"
    written = []
    for name, text in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def write_shipped() -> list[Path]:
    """Regenerate the files shipped inside the package (alerts.yml, the Grafana dashboard and provisioning);
    tests fail when these differ from what the code renders."""
    files = {
        rules.SHIPPED_ALERTS: rules.render_alerts_yml(),
        dashboard.SHIPPED_DASHBOARD: dashboard.render_dashboard_json(),
        dashboard.SHIPPED_PROVIDER: dashboard.dashboard_provider_yaml(),
        dashboard.SHIPPED_DATASOURCE: dashboard.datasource_yaml(),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(files)
