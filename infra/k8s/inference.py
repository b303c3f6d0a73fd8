"""The Gateway API Inference Extension objects of one stack: an InferencePool for the base model, its endpoint
picker (EPP), a Gateway and HTTPRoute in front of the pool, and one InferenceModelRewrite per alias.

API groups, versions and field names follow the extension's API (v1.2): `InferencePool` is GA in
`inference.networking.k8s.io/v1` (`selector.matchLabels`, `targetPorts[].number`, `endpointPickerRef`);
`InferenceModelRewrite` is alpha in `inference.networking.x-k8s.io/v1alpha2` (`poolRef`, `rules[].matches[].model`,
`rules[].targets[].modelRewrite/weight`). The registry stays the desired state: every rewrite is rendered from the
stack's pins (`adapters`, `aks.canaries`), so a deploy is a pin change plus `pulumi up`.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from exaone_lora.canary import weighted_targets
from exaone_lora.spec import DeploymentSpec
from infra.k8s.common import (
    EPP_LABELS,
    EPP_NAME,
    EXTENSION_ALPHA_API,
    GATEWAY_API,
    GATEWAY_NAME,
    NAMESPACE,
    POOL_API,
    POOL_GROUP,
    VLLM_LABELS,
    obj,
)
from service.vllm_config import vllm_launch

EPP_GRPC_PORT = 9002
EPP_HEALTH_PORT = 9003
EPP_METRICS_PORT = 9090
EPP_CONFIG_FILE = "plugins.yaml"
EPP_RESOURCES = {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "2Gi"}}
# Only inference calls reach the pool: vLLM's other routes (runtime LoRA load/unload, tokenizer, /metrics) are not
# routed from the Gateway at all.
CLIENT_PATHS = ("/v1/chat/completions", "/v1/completions")
REQUEST_TIMEOUT = "300s"


def pool_name(spec: DeploymentSpec) -> str:
    """One pool per base model, named after its served name (made a DNS label)."""
    name = re.sub(r"[^a-z0-9-]+", "-", spec.model.served_name.lower()).strip("-")[:50].strip("-")
    return f"{name or 'base'}-pool"


def engine_port(spec: DeploymentSpec) -> int:
    return vllm_launch(spec, host="0.0.0.0").port


def inference_pool(spec: DeploymentSpec) -> dict[str, Any]:
    return obj(POOL_API, "InferencePool", pool_name(spec), {
        "selector": {"matchLabels": dict(VLLM_LABELS)},
        "targetPorts": [{"number": engine_port(spec)}],
        "endpointPickerRef": {"group": "", "kind": "Service", "name": EPP_NAME, "port": {"number": EPP_GRPC_PORT},
                              # No picker, no traffic: a request must never bypass queue/LoRA-aware scheduling.
                              "failureMode": "FailClose"},
    }, labels=VLLM_LABELS)


def epp_config(spec: DeploymentSpec) -> str:
    """The picker's plugin config: the stack's scorer weights (queue depth, KV-cache use, prefix cache, LoRA affinity)."""
    weights = spec.aks.epp_scorer_weights
    config = {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [{"type": name} for name in sorted(weights)] + [{"type": "max-score-picker"}],
        "schedulingProfiles": [{"name": "default", "plugins": [
            {"pluginRef": name, "weight": weights[name]} for name in sorted(weights)] + [{"pluginRef": "max-score-picker"}]}],
    }
    return yaml.safe_dump(config, sort_keys=False)


def epp_objects(spec: DeploymentSpec) -> list[dict[str, Any]]:
    """ConfigMap, ServiceAccount, Role (read pods and the extension's objects in this namespace only), RoleBinding,
    Deployment and Service of the endpoint picker."""
    config = obj("v1", "ConfigMap", EPP_NAME, {"data": {EPP_CONFIG_FILE: epp_config(spec)}}, labels=EPP_LABELS)
    account = obj("v1", "ServiceAccount", EPP_NAME, {}, labels=EPP_LABELS)
    role = obj("rbac.authorization.k8s.io/v1", "Role", EPP_NAME, {"rules": [
        {"apiGroups": [POOL_GROUP], "resources": ["inferencepools"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["inference.networking.x-k8s.io"], "resources": ["inferenceobjectives", "inferencemodelrewrites"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    ]}, labels=EPP_LABELS)
    binding = obj("rbac.authorization.k8s.io/v1", "RoleBinding", EPP_NAME, {
        "subjects": [{"kind": "ServiceAccount", "name": EPP_NAME, "namespace": NAMESPACE}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": EPP_NAME},
    }, labels=EPP_LABELS)
    health = {"grpc": {"port": EPP_HEALTH_PORT, "service": "inference-extension"}}
    container = {
        "name": "epp",
        "image": spec.aks.epp_image,
        "args": ["--pool-name", pool_name(spec), "--pool-namespace", NAMESPACE,
                 "--config-file", f"/config/{EPP_CONFIG_FILE}", "--zap-encoder", "json"],
        "env": [{"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
        "ports": [{"name": "grpc", "containerPort": EPP_GRPC_PORT}, {"name": "grpc-health", "containerPort": EPP_HEALTH_PORT},
                  {"name": "metrics", "containerPort": EPP_METRICS_PORT}],
        "livenessProbe": {**health, "initialDelaySeconds": 5, "periodSeconds": 10},
        "readinessProbe": {**health, "periodSeconds": 2},
        "resources": EPP_RESOURCES,
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
                            # distroless's nonroot user, numeric so the kubelet can check runAsNonRoot.
                            "runAsUser": 65532, "readOnlyRootFilesystem": True},
        "volumeMounts": [{"name": "config", "mountPath": "/config", "readOnly": True}],
    }
    deployment = obj("apps/v1", "Deployment", EPP_NAME, {
        "replicas": 1,
        # One active picker keeps its prefix-cache view consistent; Recreate lets the new one take over at once.
        "strategy": {"type": "Recreate"},
        "selector": {"matchLabels": EPP_LABELS},
        "template": {"metadata": {"labels": EPP_LABELS}, "spec": {
            "serviceAccountName": EPP_NAME,
            "terminationGracePeriodSeconds": 130,
            "containers": [container],
            "volumes": [{"name": "config", "configMap": {"name": EPP_NAME}}],
        }},
    }, labels=EPP_LABELS)
    service = obj("v1", "Service", EPP_NAME, {
        "type": "ClusterIP", "selector": EPP_LABELS,
        "ports": [{"name": "grpc-ext-proc", "port": EPP_GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
                   "appProtocol": "http2"}],
    }, labels=EPP_LABELS)
    return [config, account, role, binding, deployment, service]


def gateway_annotations(spec: DeploymentSpec) -> dict[str, str]:
    """Annotations for the Service the Gateway implementation creates: an internal load balancer for a private API,
    and the client networks for a public one (Azure's cloud provider turns them into NSG rules)."""
    if spec.api.exposure == "private":
        return {"service.beta.kubernetes.io/azure-load-balancer-internal": "true"}
    return {"service.beta.kubernetes.io/azure-allowed-ip-ranges": ",".join(spec.api.allowed_cidrs)}


def gateway(spec: DeploymentSpec) -> dict[str, Any]:
    return obj(GATEWAY_API, "Gateway", GATEWAY_NAME, {
        "gatewayClassName": spec.aks.gateway_class,
        "listeners": [{"name": "http", "protocol": "HTTP", "port": spec.port,
                       "allowedRoutes": {"namespaces": {"from": "Same"}}}],
        "infrastructure": {"annotations": gateway_annotations(spec)},
    })


def http_route(spec: DeploymentSpec) -> dict[str, Any]:
    return obj(GATEWAY_API, "HTTPRoute", "inference", {
        "parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": GATEWAY_NAME}],
        "rules": [{
            "matches": [{"path": {"type": "Exact", "value": path}} for path in CLIENT_PATHS],
            "backendRefs": [{"group": POOL_GROUP, "kind": "InferencePool", "name": pool_name(spec)}],
            "timeouts": {"request": REQUEST_TIMEOUT},
        }],
    })


def alias_targets(spec: DeploymentSpec) -> dict[str, list[tuple[str, int]]]:
    """alias -> [(immutable version name, weight)], from the pins: the pinned version takes what its canary leaves;
    a version at weight 0 is left out (the API's weights start at 1) but its pods still serve it. The split is the
    gateway's (`exaone_lora.canary`: the same model and arithmetic the VM path's registry canary uses)."""
    canaries = {c.alias: c for c in spec.aks.canaries}
    targets: dict[str, list[tuple[str, int]]] = {}
    for pin in spec.adapters:
        canary = canaries.get(pin.alias)
        split = canary.split if canary is not None else None
        targets[pin.alias] = weighted_targets(pin.name, canary.name if canary else None, split.weight if split else 0)
    return targets


def model_rewrites(spec: DeploymentSpec) -> list[dict[str, Any]]:
    """One InferenceModelRewrite per alias: clients call `medical`, the pool serves `medical-vN`."""
    return [obj(EXTENSION_ALPHA_API, "InferenceModelRewrite", f"alias-{alias.replace('_', '-')}", {
        "poolRef": {"group": POOL_GROUP, "kind": "InferencePool", "name": pool_name(spec)},
        "rules": [{"matches": [{"model": {"type": "Exact", "value": alias}}],
                   "targets": [{"modelRewrite": name, "weight": weight} for name, weight in versions]}],
    }, labels={"exaone-lora/alias": alias}) for alias, versions in alias_targets(spec).items()]
