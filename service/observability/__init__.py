"""Observability rendered from the deployment spec: Prometheus scrape config, alert rules, Grafana dashboard,
Azure Monitor export settings. Every module is a pure renderer; the CLI and provisioning write the files."""
