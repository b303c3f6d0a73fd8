"""`install-monitoring`: the distribution's Prometheus and Alertmanager on the serving host, both bound to
loopback, with the stack's scrape config, alert rules and alert routes rendered by `service.observability`
(never a second copy). Secrets the routes need (webhook token, SMTP password) are host files the operator
writes; this task checks they exist and tightens their owner and mode, and never reads or writes their content."""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path

from fabric import Connection

from exaone_lora.spec import DeploymentSpec
from provisioning.bootstrap import missing_packages
from provisioning.remote import http_status, ok, put_bytes, sh, wait_for
from provisioning.results import Change
from service.observability import alertmanager as am
from service.observability.render import (
    ALERTMANAGER_DEFAULTS,
    ALERTMANAGER_FILE,
    ALERTS_FILE,
    PROMETHEUS_DEFAULTS,
    PROMETHEUS_FILE,
    render_stack,
)

PROMETHEUS_FILES = {PROMETHEUS_FILE: "/etc/prometheus/prometheus.yml", ALERTS_FILE: "/etc/prometheus/alerts.yml",
                    PROMETHEUS_DEFAULTS: "/etc/default/prometheus"}
ALERTMANAGER_FILES = {ALERTMANAGER_FILE: str(am.CONFIG_FILE), ALERTMANAGER_DEFAULTS: str(am.DEBIAN_DEFAULTS)}
PACKAGES = ("prometheus", "prometheus-alertmanager")
# While the packages install, policy-rc.d stops them from starting with Debian's default config, which would
# listen on every address (Alertmanager also on its cluster port) before ours (loopback only) is in place.
NO_AUTOSTART = "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d"


class MissingSecret(RuntimeError):
    """A route of the stack needs a secret file that is not on the host."""


def _install_packages(c: Connection) -> list[Change]:
    missing = missing_packages(c, PACKAGES)
    if not missing:
        return []
    names = " ".join(shlex.quote(p) for p in missing)
    sh(c, f"{NO_AUTOSTART} && apt-get update -qq && apt-get install -y -qq --no-install-recommends "
          f"-o Dpkg::Options::=--force-confold {names}; status=$?; rm -f /usr/sbin/policy-rc.d; exit $status",
       env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=1800)
    return [Change(f"package {p}", True, "installed from the distribution") for p in missing]


def _check_secrets(c: Connection, spec: DeploymentSpec) -> list[Change]:
    changes = []
    for path in map(str, am.secret_files(spec)):
        q = shlex.quote(path)
        if not ok(c, f"test -s {q}"):
            raise MissingSecret(
                f"stack {spec.stack}: monitoring.alertmanager needs the secret file {path} on the host; create it "
                f"(as root): install -d -m 0750 -o root -g {am.SERVICE_USER} {am.SECRETS_DIR} && "
                f"install -m 0600 -o {am.SERVICE_USER} /dev/stdin {path}  (paste the secret, then Ctrl-D)")
        owner = f"{am.SERVICE_USER} 600"
        fixed = not ok(c, f"[ \"$(stat -c '%U %a' {q})\" = '{owner}' ]")
        if fixed:
            sh(c, f"chown {am.SERVICE_USER} {q} && chmod 0600 {q}")
        changes.append(Change(f"secret {path}", fixed, "present; owner and mode set to "
                              f"{am.SERVICE_USER} 0600" if fixed else "present, owner and mode right"))
    return changes


def _restart(c: Connection, unit: str, written: bool, url: str, timeout: float) -> list[Change]:
    changes = []
    if written or not ok(c, f"systemctl is-active --quiet {unit}"):
        sh(c, f"systemctl enable {unit} >/dev/null 2>&1; systemctl restart {unit}")
        changes.append(Change(f"restart {unit}", True, "config changed" if written else "was not running"))
    wait_for(lambda: http_status(c, url) == 200, timeout, interval=1, what=f"{url} ready")
    return changes


def install_monitoring(c: Connection, spec: DeploymentSpec, health_timeout: float = 120) -> list[Change]:
    if spec.target == "aks":
        raise ValueError("on AKS Prometheus scrapes through the PodMonitor (`exaone-lora obs render`), not a host package")
    changes = _install_packages(c)
    changes += _check_secrets(c, spec)
    with tempfile.TemporaryDirectory(prefix="exaone-obs-") as tmp:
        render_stack(spec, Path(tmp))
        written = {dest for name, dest in (PROMETHEUS_FILES | ALERTMANAGER_FILES).items()
                   if put_bytes(c, (Path(tmp) / name).read_bytes(), dest)}
    changes += [Change(f"file {dest}", dest in written, "rendered from the spec")
                for dest in (PROMETHEUS_FILES | ALERTMANAGER_FILES).values()]
    sh(c, f"amtool check-config {am.CONFIG_FILE} >/dev/null")
    sh(c, "promtool check config /etc/prometheus/prometheus.yml >/dev/null")
    # Alertmanager first: Prometheus sends to it from its first rule evaluation.
    changes += _restart(c, "prometheus-alertmanager", bool(written & set(ALERTMANAGER_FILES.values())),
                        f"{am.alertmanager_url(spec)}/-/ready", health_timeout)
    changes += _restart(c, "prometheus", bool(written & set(PROMETHEUS_FILES.values())),
                        f"http://127.0.0.1:{spec.monitoring.prometheus_port}/-/ready", health_timeout)
    return changes
