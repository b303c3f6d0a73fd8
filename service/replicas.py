"""prod-small's shape: one independent vLLM replica per GPU behind the gateway (issue 11).

A 2.4B model fits one GPU many times over, so two replicas (one per GPU) beat tensor parallelism:
no cross-GPU traffic per token, and one replica can restart while the other serves. systemd gets
one unit instance per GPU (`exaone-vllm@N.service`, `CUDA_VISIBLE_DEVICES=N`, its own port) grouped
by `exaone-vllm.target`; AKS gets one single-GPU pod per GPU (Deployment replicas). Argv and
environment still come only from `service.vllm_config.vllm_launch(..., replica=N)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from exaone_lora.spec import DeploymentSpec
from service.layout import DEFAULT_LAYOUT, HostLayout
from service.merged_replicas import merged_endpoints
from service.vllm_config import systemd_unit, vllm_launch

TARGET = "exaone-vllm.target"


def replica_unit_name(replica: int) -> str:
    return f"exaone-vllm@{replica}.service"


def replica_count(spec: DeploymentSpec) -> int:
    """Replicas per host: one per GPU (a local CPU stack runs one)."""
    return 1 if spec.target == "local" else spec.gpus_per_node


def kubernetes_replicas(spec: DeploymentSpec) -> int:
    """AKS: one single-GPU pod per GPU of the pool, spread by the scheduler."""
    return spec.total_gpus


@dataclass(frozen=True)
class ReplicaEndpoint:
    index: int
    unit: str
    host: str
    port: int
    cuda_visible_devices: str | None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host == "0.0.0.0" else self.host
        return f"http://{host}:{self.port}"


def replica_endpoints(spec: DeploymentSpec, layout: HostLayout = DEFAULT_LAYOUT) -> list[ReplicaEndpoint]:
    """What the gateway's `--upstream`s and the reconciler's engines are, per host."""
    out = []
    for r in range(replica_count(spec)):
        launch = vllm_launch(spec, layout, replica=r)
        out.append(ReplicaEndpoint(r, replica_unit_name(r), launch.host, launch.port, launch.env.get("CUDA_VISIBLE_DEVICES")))
    ports = [e.port for e in out]
    # Without the gateway, replica 0 is the public port itself (and there is no admin listener).
    reserved = {spec.monitoring.prometheus_port} | ({spec.port, spec.gateway.admin_port} if spec.gateway.enabled else set())
    if len(set(ports)) != len(ports) or reserved & set(ports):
        raise ValueError(f"replica ports {ports} collide with each other or with {sorted(reserved)}")
    return out


def replica_urls(spec: DeploymentSpec, layout: HostLayout = DEFAULT_LAYOUT) -> list[str]:
    """The base URL of each vLLM replica, as seen from its own host (what the reconciler and a deploy talk to)."""
    return [e.url for e in replica_endpoints(spec, layout)]


def upstream_urls(spec: DeploymentSpec, layout: HostLayout = DEFAULT_LAYOUT) -> list[str]:
    """The gateway's `--upstream`s: every LoRA replica, then every merged replica."""
    return replica_urls(spec, layout) + [e.url for e in merged_endpoints(spec)]


def replica_units(spec: DeploymentSpec, layout: HostLayout = DEFAULT_LAYOUT, model_path: str | None = None) -> dict[str, str]:
    """File name -> text: one instance unit per GPU plus the target that starts and stops them together."""
    units: dict[str, str] = {}
    for endpoint in replica_endpoints(spec, layout):
        text = systemd_unit(spec, layout, replica=endpoint.index, model_path=model_path)
        # Restarting the target restarts every replica; each still restarts alone when it crashes.
        units[endpoint.unit] = text.replace("[Unit]\n", f"[Unit]\nPartOf={TARGET}\n", 1)
    wants = " ".join(units)
    units[TARGET] = f"""[Unit]
Description=All vLLM replicas of stack {spec.stack} ({len(units)} x 1 GPU)
Wants={wants}
After={wants}

[Install]
WantedBy=multi-user.target
"""
    return units
