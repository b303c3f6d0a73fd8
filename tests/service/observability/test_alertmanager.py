"""Alertmanager: routes rendered from the stack, valid for amtool, secrets only by file; and an alert travelling
end to end with the real binaries on loopback: a real rule fires in Prometheus -> Alertmanager -> a webhook
receiver in this test, which checks what arrived (including the bearer token read from the secrets file)."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exaone_lora.spec import STACKS, DeploymentSpec, SpecError, build_spec, load_spec, read_config, stack_file
from service.observability import metrics as m
from service.observability.alertmanager import (
    BINARY,
    SMTP_PASSWORD_FILE,
    WEBHOOK_TOKEN_FILE,
    alertmanager_args,
    alertmanager_config,
    debian_defaults,
    render_alertmanager_yml,
    secret_files,
)
from service.observability.prometheus import ScrapeTarget, render_prometheus_yml
from service.observability.render import render_stack
from service.observability.rules import AlertThresholds, gateway_rules
from tests.support.processes import REPO, free_port, run_process
from tests.support.promql import tool
from tests.support.webhook import receiver

AM_HINT = "install Debian's `prometheus-alertmanager` package (apt-get install prometheus-alertmanager)"


def spec_with(stack: str, **monitoring: Any) -> DeploymentSpec:
    return build_spec(stack, {**read_config(stack_file(stack, REPO)), "monitoring": monitoring}, f"Pulumi.{stack}.yaml")


def amtool_check(path: Path) -> subprocess.CompletedProcess[str]:
    amtool = shutil.which("amtool")
    if amtool is None:
        raise RuntimeError(f"amtool is not installed; {AM_HINT}")
    return subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True, check=False, timeout=60)


FULL = {"alertmanager": {"webhookUrl": "https://alerts.example.com/hooks/exaone", "webhookBearerToken": True,
                         "email": {"to": "oncall@example.com", "from": "exaone@example.com",
                                   "smarthost": "smtp.example.com:587", "authUsername": "exaone@example.com"}}}


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_renders_a_valid_loopback_alertmanager(stack: str, tmp_path: Path) -> None:
    spec = load_spec(stack, REPO)
    render_stack(spec, tmp_path)
    result = amtool_check(tmp_path / "alertmanager.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    prometheus = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    assert prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]
    defaults = (tmp_path / "alertmanager.defaults").read_text()
    assert 'ARGS="--web.listen-address=127.0.0.1:9093 --cluster.listen-address="' in defaults  # gossip port off


def test_webhook_and_email_routes_read_their_secrets_from_files(tmp_path: Path) -> None:
    spec = spec_with("prod", **FULL)
    text = render_alertmanager_yml(spec)
    (tmp_path / "alertmanager.yml").write_text(text)
    result = amtool_check(tmp_path / "alertmanager.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    receiver = yaml.safe_load(text)["receivers"][0]
    hook, mail = receiver["webhook_configs"][0], receiver["email_configs"][0]
    assert hook["url"] == "https://alerts.example.com/hooks/exaone" and hook["send_resolved"] is True
    assert hook["http_config"]["authorization"] == {"type": "Bearer", "credentials_file": str(WEBHOOK_TOKEN_FILE)}
    assert (mail["to"], mail["from"], mail["smarthost"], mail["require_tls"]) == (
        "oncall@example.com", "exaone@example.com", "smtp.example.com:587", True)
    assert mail["auth_password_file"] == str(SMTP_PASSWORD_FILE) and "auth_password" not in mail
    assert secret_files(spec) == [WEBHOOK_TOKEN_FILE, SMTP_PASSWORD_FILE]
    assert secret_files(load_spec("prod", REPO)) == []  # no route, no secret needed
    assert "webhook_configs" not in alertmanager_config(load_spec("prod", REPO))["receivers"][0]


def test_removed_azure_monitor_key_is_a_clear_error() -> None:
    with pytest.raises(SpecError, match=r"monitoring: the key azureMonitor was removed"):
        spec_with("poc", azureMonitor=True)


def test_alertmanager_port_must_differ_from_prometheus() -> None:
    with pytest.raises(SpecError, match=r"alertmanager\.port: must differ from prometheusPort"):
        spec_with("poc", prometheusPort=9093)


_secret_name = st.sampled_from(["token", "api_key", "Password", "SECRET", "access_token", "sig_key"])
_text = st.text(st.characters(min_codepoint=48, max_codepoint=122, exclude_characters="?#&=@:/[]\\^`"), min_size=1,
                max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=_secret_name, value=_text, user=_text)
def test_webhook_urls_carrying_credentials_are_refused(name: str, value: str, user: str) -> None:
    for url, reason in ((f"https://hooks.example.com/x?{name}={value}", "query holds a secret"),
                        (f"https://{user}:{value}@hooks.example.com/x", "must not hold credentials"),
                        (f"http://hooks.example.com/{value}", "must be https")):
        with pytest.raises(SpecError, match=rf"monitoring\.alertmanager\.webhookUrl: .*{reason}"):
            spec_with("poc", alertmanager={"webhookUrl": url})


@settings(max_examples=40, deadline=None)
@given(prefix=_text, injected=st.sampled_from(["\n", "\r\nBcc: x@evil.example", " ", ",other@example.com", "\t"]))
def test_email_fields_refuse_header_injection(prefix: str, injected: str) -> None:
    address = f"{prefix}@example.com{injected}"
    for field in ("to", "from"):
        email = {"to": "oncall@example.com", "from": "exaone@example.com", "smarthost": "smtp.example.com:587",
                 field: address}
        with pytest.raises(SpecError, match=rf"monitoring\.alertmanager\.email\.{field}: .*not one e-mail address"):
            spec_with("poc", alertmanager={"email": email})


def test_a_real_rule_fires_and_reaches_the_webhook(tmp_path: Path, logs_dir: Path) -> None:
    """GatewayTargetDown (the shipped rule, `for:` shortened in a test-only rule file) fires because the gateway
    target's port has nothing listening; Prometheus sends it to Alertmanager, which posts it to our receiver
    with the bearer token it read from the secrets file."""
    token = secrets.token_urlsafe(24)
    (tmp_path / "webhook-token").write_text(token + "\n")
    (tmp_path / "webhook-token").chmod(0o600)
    am_port, prom_port, dead_port = free_port(), free_port(), free_port()
    with receiver() as hook:
        spec = spec_with("dev", alertmanager={"webhookUrl": hook.url, "webhookBearerToken": True, "groupWaitSeconds": 1})
        (tmp_path / "alertmanager.yml").write_text(render_alertmanager_yml(spec, secrets_dir=PurePosixPath(tmp_path)))
        assert token not in (tmp_path / "alertmanager.yml").read_text()
        rule = next(r for r in gateway_rules(AlertThresholds()) if r["alert"] == "GatewayTargetDown")
        (tmp_path / "test-alerts.yml").write_text(yaml.safe_dump(
            {"groups": [{"name": "test", "rules": [{**rule, "for": "1s"}]}]}, sort_keys=False))
        (tmp_path / "prometheus.yml").write_text(render_prometheus_yml(
            spec, targets=[ScrapeTarget(m.GATEWAY_JOB, f"127.0.0.1:{dead_port}", {})], rule_files=("test-alerts.yml",),
            scrape_interval_seconds=1, prometheus_port=prom_port, alertmanager_port=am_port))
        am_cmd = [tool(BINARY), *alertmanager_args(spec, config_file=str(tmp_path / "alertmanager.yml"),
                                                   storage_path=str(tmp_path / "am-data"), port=am_port)]
        prom_cmd = [tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}", f"--storage.tsdb.path={tmp_path / 'prom-data'}"]
        with (run_process(am_cmd, logs_dir / "alertmanager.log", f"http://127.0.0.1:{am_port}/-/ready", 60),
              run_process(prom_cmd, logs_dir / "prometheus-alerting.log", f"http://127.0.0.1:{prom_port}/-/ready", 60)):
            firing = hook.wait_for(lambda body: body.get("status") == "firing", timeout=120)
    authorization, body = firing[0]
    assert authorization == f"Bearer {token}"
    assert body["receiver"] == "stack-operators"
    alert = body["alerts"][0]
    assert alert["labels"]["alertname"] == "GatewayTargetDown"
    assert alert["labels"]["job"] == m.GATEWAY_JOB and alert["labels"]["instance"] == f"127.0.0.1:{dead_port}"
    assert (alert["labels"]["severity"], alert["labels"]["component"]) == ("critical", "gateway")
    assert alert["labels"]["stack"] == "dev"  # Prometheus's external labels travel with the alert
    assert alert["annotations"]["summary"] == f"Gateway 127.0.0.1:{dead_port} is not answering /metrics"


def test_debian_defaults_keep_the_config_path_of_the_package() -> None:
    spec = load_spec("poc", REPO)
    assert "--config.file" not in debian_defaults(spec)  # the unit's default /etc/prometheus/alertmanager.yml
    assert alertmanager_args(spec)[0] == "--config.file=/etc/prometheus/alertmanager.yml"
