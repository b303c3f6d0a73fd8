"""Names shared by the AKS manifests."""

from __future__ import annotations

from typing import Any

NAMESPACE = "exaone-lora"
SERVICE_ACCOUNT = "vllm"
API_KEY_SECRET = "exaone-lora-api-key"
API_KEY_CONFIG = "pulumi config set --secret ops:apiKey"
VLLM_LABELS = {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/part-of": "exaone-lora"}
EPP_NAME = "endpoint-picker"
EPP_LABELS = {"app.kubernetes.io/name": EPP_NAME, "app.kubernetes.io/part-of": "exaone-lora"}
GATEWAY_NAME = "inference-gateway"
# The label Gateway API implementations (Istio, kgateway, Envoy Gateway) put on the proxy pods of a Gateway.
GATEWAY_POD_LABEL = "gateway.networking.k8s.io/gateway-name"
POOL_GROUP = "inference.networking.k8s.io"
POOL_API = f"{POOL_GROUP}/v1"
EXTENSION_ALPHA_API = "inference.networking.x-k8s.io/v1alpha2"
GATEWAY_API = "gateway.networking.k8s.io/v1"
KEDA_API = "keda.sh/v1alpha1"


def obj(api_version: str, kind: str, name: str, spec_or_body: dict[str, Any], *, namespace: str | None = NAMESPACE,
        labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A whole manifest: `spec_or_body` is the object's `spec`, or its top-level keys when it has a `data`/`rules`
    body instead (ConfigMap, Role, RoleBinding)."""
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    body = spec_or_body if kind in ("ConfigMap", "Role", "RoleBinding", "ServiceAccount", "Secret") else {"spec": spec_or_body}
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **body}
