"""NetworkPolicies of the stack's namespace: deny all ingress, then open exactly what each component needs.

vLLM's port carries inference, `/metrics` and vLLM's own other routes, so who reaches that port is the fence:
the Gateway's proxy pods, the endpoint picker (which reads the pods' metrics) and Prometheus in the monitoring
namespace. Clients reach only the Gateway, whose route carries nothing but the completions paths.
"""

from __future__ import annotations

from typing import Any

from exaone_lora.spec import DeploymentSpec
from infra.k8s.common import EPP_LABELS, GATEWAY_NAME, GATEWAY_POD_LABEL, VLLM_LABELS, obj
from infra.k8s.inference import EPP_GRPC_PORT, EPP_METRICS_PORT, engine_port

API = "networking.k8s.io/v1"


def _monitoring_peers(spec: DeploymentSpec) -> list[dict[str, Any]]:
    return [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": spec.aks.monitoring_namespace}},
             "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]


def network_policies(spec: DeploymentSpec) -> list[dict[str, Any]]:
    gateway_pods = {"podSelector": {"matchLabels": {GATEWAY_POD_LABEL: GATEWAY_NAME}}}
    epp_pods = {"podSelector": {"matchLabels": EPP_LABELS}}
    tcp = "TCP"
    return [
        obj(API, "NetworkPolicy", "default-deny-ingress", {"podSelector": {}, "policyTypes": ["Ingress"]}),
        obj(API, "NetworkPolicy", "vllm", {
            "podSelector": {"matchLabels": VLLM_LABELS}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [gateway_pods, epp_pods, *_monitoring_peers(spec)],
                         "ports": [{"protocol": tcp, "port": engine_port(spec)}]}],
        }),
        obj(API, "NetworkPolicy", "endpoint-picker", {
            "podSelector": {"matchLabels": EPP_LABELS}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [gateway_pods], "ports": [{"protocol": tcp, "port": EPP_GRPC_PORT}]},
                        {"from": _monitoring_peers(spec), "ports": [{"protocol": tcp, "port": EPP_METRICS_PORT}]}],
        }),
        # The proxy takes client traffic on the listener port only; which clients is the load balancer's business
        # (internal LB for a private API, the stack's allowedCidrs for a public one).
        obj(API, "NetworkPolicy", "gateway", {
            "podSelector": {"matchLabels": {GATEWAY_POD_LABEL: GATEWAY_NAME}}, "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"protocol": tcp, "port": spec.port}]}],
        }),
    ]
