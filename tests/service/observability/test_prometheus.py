"""The rendered Prometheus configuration: every replica and gateway scraped, loopback only, valid for promtool."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from exaone_lora.spec import STACKS, DeploymentSpec, build_spec, load_spec, read_config, stack_file
from service.observability import metrics as m
from service.observability.prometheus import (
    debian_defaults,
    kubernetes_scrape_annotations,
    pod_monitor,
    prometheus_args,
    prometheus_config,
    scrape_targets,
)
from service.observability.render import render_stack
from service.vllm_config import kubernetes_container, vllm_launch
from tests.support.processes import REPO
from tests.support.promql import promtool


def spec_with(stack: str, **overrides: object) -> DeploymentSpec:
    values = {**read_config(stack_file(stack, REPO)), **overrides}
    return build_spec(stack, values, f"Pulumi.{stack}.yaml")


@pytest.mark.parametrize("stack", STACKS)
def test_rendered_stack_passes_promtool_check_config(stack: str, tmp_path: Path) -> None:
    render_stack(load_spec(stack, REPO), tmp_path)
    result = promtool("check", "config", tmp_path / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "rules found" in result.stdout  # the rule file was found and checked too


def test_every_vllm_replica_and_the_gateway_are_targets() -> None:
    spec = load_spec("prod", REPO)
    assert spec.gpus_per_node == 2
    targets = scrape_targets(spec)
    vllm = [t for t in targets if t.job == m.VLLM_JOB]
    assert [t.address for t in vllm] == [f"127.0.0.1:{vllm_launch(spec, replica=i).port}" for i in range(2)]
    assert [t.labels["replica"] for t in vllm] == ["0", "1"]
    # The gateway's metrics live on its loopback-only admin listener, never on the public API port.
    assert [t.address for t in targets if t.job == m.GATEWAY_JOB] == [f"127.0.0.1:{spec.gateway.admin_port}"]
    assert spec.gateway.admin_port != spec.port
    config = prometheus_config(spec)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {m.VLLM_JOB, m.GATEWAY_JOB, m.PROMETHEUS_JOB}
    assert config["global"]["scrape_interval"] == f"{spec.monitoring.scrape_interval_seconds}s" == "15s"
    assert config["global"]["external_labels"]["stack"] == "prod"


def test_without_gateway_vllm_serves_the_api_port_and_is_scraped_there() -> None:
    # Only the local stack may serve vLLM without the gateway (Azure VM stacks are refused without it).
    spec = spec_with("dev", gateway={"enabled": False})
    targets = scrape_targets(spec)
    assert [(t.job, t.address) for t in targets] == [(m.VLLM_JOB, f"127.0.0.1:{spec.port}")]  # never 0.0.0.0


def test_scrape_interval_comes_from_the_spec() -> None:
    spec = spec_with("poc", monitoring={"scrapeIntervalSeconds": 30})
    assert prometheus_config(spec)["global"]["scrape_interval"] == "30s"


def test_prometheus_listens_on_loopback_only() -> None:
    spec = load_spec("poc", REPO)
    assert f"--web.listen-address=127.0.0.1:{spec.monitoring.prometheus_port}" in prometheus_args(spec)
    assert not any("0.0.0.0" in a or "lifecycle" in a for a in prometheus_args(spec))
    assert 'ARGS="--web.listen-address=127.0.0.1:9090' in debian_defaults(spec)


def test_aks_renders_a_pod_monitor_and_annotations_instead_of_a_static_config(tmp_path: Path) -> None:
    spec = spec_with("poc", target="aks")
    written = render_stack(spec, tmp_path)
    assert tmp_path / "kubernetes" / "pod-monitor.yaml" in written
    assert not (tmp_path / "prometheus.yml").exists()
    assert yaml.safe_load((tmp_path / "kubernetes" / "pod-monitor.yaml").read_text()) == pod_monitor(spec)
    with pytest.raises(ValueError, match="pod_monitor"):
        prometheus_config(spec)
    annotations = kubernetes_scrape_annotations(spec)  # the ports the containers really listen on
    container_port = kubernetes_container(spec)["ports"][0]["containerPort"]
    assert annotations["vllm"] == {"prometheus.io/scrape": "true", "prometheus.io/port": str(container_port),
                                   "prometheus.io/path": "/metrics"}
    assert set(annotations) == {"vllm"}  # no gateway on AKS, and its metrics listener is loopback-only


def test_pod_monitor_keeps_the_vm_job_names_so_alerts_work_unchanged() -> None:
    spec = spec_with("poc", target="aks")
    managed = pod_monitor(spec)
    assert managed["apiVersion"] == "azmonitoring.coreos.com/v1" and managed["kind"] == "PodMonitor"
    assert pod_monitor(spec, managed=False)["apiVersion"] == "monitoring.coreos.com/v1"
    jobs = {e["port"]: e["relabelings"][0]["replacement"] for e in managed["spec"]["podMetricsEndpoints"]}
    assert jobs == {"http": m.VLLM_JOB}
    assert {e["interval"] for e in managed["spec"]["podMetricsEndpoints"]} == {"15s"}
