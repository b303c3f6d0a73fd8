"""`install-monitoring`: the distribution's Prometheus on the serving host, bound to loopback, with the
stack's scrape config and the tested alert rules rendered by `service.observability` (never a second copy)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fabric import Connection

from exaone_lora.spec import DeploymentSpec
from provisioning.bootstrap import missing_packages
from provisioning.remote import http_status, ok, put_bytes, sh, wait_for
from provisioning.results import Change
from service.observability.render import ALERTS_FILE, PROMETHEUS_FILE, render_stack

FILES = {PROMETHEUS_FILE: "/etc/prometheus/prometheus.yml", ALERTS_FILE: "/etc/prometheus/alerts.yml",
         "prometheus.defaults": "/etc/default/prometheus"}
# While the package installs, policy-rc.d stops it from starting with Debian's default config, which
# would listen on every address before ours (loopback only) is in place.
NO_AUTOSTART = "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d"


def install_monitoring(c: Connection, spec: DeploymentSpec, health_timeout: float = 120) -> list[Change]:
    if spec.target == "aks":
        raise ValueError("on AKS Prometheus scrapes through the PodMonitor (`exaone-lora obs render`), not a host package")
    changes: list[Change] = []
    if missing_packages(c, ("prometheus",)):
        sh(c, f"{NO_AUTOSTART} && apt-get update -qq && apt-get install -y -qq --no-install-recommends "
              "-o Dpkg::Options::=--force-confold prometheus; status=$?; rm -f /usr/sbin/policy-rc.d; exit $status",
           env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=1800)
        changes.append(Change("package prometheus", True, "installed from the distribution"))
    with tempfile.TemporaryDirectory(prefix="exaone-obs-") as tmp:
        render_stack(spec, Path(tmp))
        written = [dest for name, dest in FILES.items() if put_bytes(c, (Path(tmp) / name).read_bytes(), dest)]
    changes += [Change(f"file {dest}", dest in written, "rendered from the spec") for dest in FILES.values()]
    sh(c, "promtool check config /etc/prometheus/prometheus.yml >/dev/null")
    if written or not ok(c, "systemctl is-active --quiet prometheus"):
        sh(c, "systemctl enable prometheus >/dev/null 2>&1; systemctl restart prometheus")
        changes.append(Change("restart prometheus", True, "config changed" if written else "was not running"))
    url = f"http://127.0.0.1:{spec.monitoring.prometheus_port}/-/ready"
    wait_for(lambda: http_status(c, url) == 200, health_timeout, interval=1, what=f"{url} ready")
    return changes
