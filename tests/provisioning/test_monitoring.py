"""`fab install-monitoring` against the real systemd test host: Debian's Prometheus and Alertmanager installed,
both on loopback, Alertmanager without its cluster port, the webhook's secret checked and tightened, Prometheus
wired to Alertmanager, and an alert posted to the installed Alertmanager reaching a receiver in this test
(the host shares this machine's network) with the token from the host's secrets file. A second run changes nothing.
"""

from __future__ import annotations

import json
import secrets
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from exaone_lora.local.testhost import TestHost, boot_testhost
from exaone_lora.spec import DeploymentSpec, build_spec, read_config, stack_file
from provisioning.monitoring import MissingSecret, install_monitoring
from provisioning.remote import out, sh, wait_for
from service.observability.alertmanager import WEBHOOK_TOKEN_FILE
from tests.support.processes import REPO, free_port
from tests.support.webhook import Receiver, receiver

pytestmark = [pytest.mark.testhost, pytest.mark.slow]


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[TestHost]:
    with boot_testhost(tmp_path_factory.mktemp("monitoring-host"), logs_dir / "monitoring-host.log") as booted:
        yield booted


@pytest.fixture(scope="module")
def hook() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


def _spec(hook: Receiver) -> DeploymentSpec:
    values = read_config(stack_file("dev", REPO))
    values["monitoring"] = {"prometheusPort": free_port(), "scrapeIntervalSeconds": 5,
                            "alertmanager": {"port": free_port(), "webhookUrl": hook.url, "webhookBearerToken": True,
                                             "groupWaitSeconds": 1}}
    return build_spec("dev", values, "Pulumi.dev.yaml (monitoring test)")


def test_install_monitoring_with_alertmanager_on_the_host(host: TestHost, hook: Receiver) -> None:
    c, spec = host.connection, _spec(hook)
    am_port = spec.monitoring.alertmanager.port

    with pytest.raises(MissingSecret, match=f"needs the secret file {WEBHOOK_TOKEN_FILE} on the host"):
        install_monitoring(c, spec)
    assert out(c, "systemctl is-active prometheus-alertmanager || true") != "active"  # nothing started without it

    token = secrets.token_urlsafe(24)
    sh(c, f"install -d {WEBHOOK_TOKEN_FILE.parent} && printf '%s\\n' {shlex.quote(token)} > {WEBHOOK_TOKEN_FILE} "
          f"&& chmod 0644 {WEBHOOK_TOKEN_FILE}")  # readable by all: the task must tighten it
    changes = {ch.step: ch for ch in install_monitoring(c, spec)}
    assert changes[f"secret {WEBHOOK_TOKEN_FILE}"].changed
    assert out(c, f"stat -c '%U %a' {WEBHOOK_TOKEN_FILE}") == "prometheus 600"
    # The packages went in on the first run (before the secret check); this run started the services.
    assert out(c, "dpkg-query -W -f='${Status}' prometheus-alertmanager") == "install ok installed"
    assert changes["restart prometheus-alertmanager"].changed and changes["restart prometheus"].changed
    assert token not in out(c, "cat /etc/prometheus/alertmanager.yml")

    # Loopback only, and no gossip listener (Debian's default would listen on *:9094).
    listeners = out(c, "ss -Hltnp | grep prometheus-ale || true").splitlines()
    assert [line.split()[3] for line in listeners] == [f"127.0.0.1:{am_port}"], listeners

    # Prometheus found its Alertmanager (its notifier's discovery runs just after start: poll, bounded).
    url = f"http://127.0.0.1:{spec.monitoring.prometheus_port}/api/v1/alertmanagers"

    def active() -> list[str]:
        return [a["url"] for a in json.loads(out(c, f"curl -s {url}"))["data"]["activeAlertmanagers"]]

    wait_for(lambda: active() != [], 60, interval=0.5, what="Prometheus lists an active Alertmanager")
    assert active() == [f"http://127.0.0.1:{am_port}/api/v2/alerts"]

    # An alert posted to the installed Alertmanager reaches the stack's webhook with the token from the file.
    sh(c, f"amtool --alertmanager.url=http://127.0.0.1:{am_port} alert add alertname=HostInstallCheck "
          "severity=warning stack=dev --annotation=summary='installed by install-monitoring'")
    authorization, body = hook.wait_for(
        lambda b: any(a["labels"].get("alertname") == "HostInstallCheck" for a in b.get("alerts", [])), timeout=90)[0]
    assert authorization == f"Bearer {token}" and body["receiver"] == "stack-operators"
    assert body["alerts"][0]["annotations"]["summary"] == "installed by install-monitoring"

    again = install_monitoring(c, spec)
    assert [ch.step for ch in again if ch.changed] == []
