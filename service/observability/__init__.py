"""Observability rendered from the deployment spec: Prometheus scrape config, alert rules, Alertmanager routes,
Grafana dashboard. Every module is a pure renderer; the CLI and provisioning write the files."""
