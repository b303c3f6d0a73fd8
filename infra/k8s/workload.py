"""The vLLM pods: model fetch, one validating init container per served adapter version, the vLLM container
(`service.vllm_config.kubernetes_container`, the VM unit's argv), the PodDisruptionBudget and KEDA autoscaling."""

from __future__ import annotations

import math
import shlex
from typing import Any

from exaone_lora.spec import AdapterPin, DeploymentSpec
from infra.k8s.common import API_KEY_SECRET, KEDA_API, NAMESPACE, SERVICE_ACCOUNT, VLLM_LABELS, obj
from service.layout import DEFAULT_LAYOUT, HostLayout
from service.observability.metrics import VLLM_JOB
from service.observability.prometheus import kubernetes_scrape_annotations
from service.vllm_config import kubernetes_container

GPU_POOL = "gpu"
# Pinned images: the Azure CLI fetches the base model with the workload identity; NVIDIA's plugin exposes nvidia.com/gpu.
AZURE_CLI_IMAGE = "mcr.microsoft.com/azure-cli:2.67.0"
MODELS_CONTAINER = "models"
VLLM_METRIC_WAITING = "vllm:num_requests_waiting"
# Small helpers' share of a node: they download and hash files, nothing more.
INIT_RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
RESTRICTED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def served_versions(spec: DeploymentSpec) -> tuple[AdapterPin, ...]:
    """Every adapter version a pod serves: the stack's pins and the canaries beside them."""
    return (*spec.adapters, *spec.aks.canaries)


def replica_bounds(spec: DeploymentSpec) -> tuple[int, int]:
    """(min, max) vLLM pods: one per GPU of the pool by default; max > min turns KEDA autoscaling on."""
    auto = spec.aks.autoscaling
    low = auto.min_replicas or spec.total_gpus
    high = auto.max_replicas or low
    if high < low:
        raise ValueError(f"aks.autoscaling.maxReplicas: {high} is below minReplicas {low}")
    return low, high


def gpu_pool_max_nodes(spec: DeploymentSpec) -> int:
    return max(spec.node_count, math.ceil(replica_bounds(spec)[1] / spec.gpus_per_node))


def model_fetch_script(spec: DeploymentSpec) -> str:
    """Log in with the federated token and download the pinned model revision (adapters go through the validator)."""
    model_prefix = f"{spec.model.name}/{spec.model.revision}"
    return "\n".join([
        "set -euo pipefail",
        'az login --service-principal -u "$AZURE_CLIENT_ID" -t "$AZURE_TENANT_ID" '
        '--federated-token "$(cat "$AZURE_FEDERATED_TOKEN_FILE")" --allow-no-subscriptions --output none',
        f'az storage blob download-batch --auth-mode login --account-name "$STORAGE_ACCOUNT" -s {MODELS_CONTAINER} '
        f"--pattern {shlex.quote(model_prefix + '/*')} -d /tmp/model --only-show-errors --output none",
        f"mkdir -p {shlex.quote(spec.model.path)}",
        f"cp -r /tmp/model/{shlex.quote(model_prefix)}/. {shlex.quote(spec.model.path)}/",
    ]) + "\n"


def validator_argv(spec: DeploymentSpec, pin: AdapterPin, account_url: str, layout: HostLayout = DEFAULT_LAYOUT) -> list[str]:
    """`exaone-lora adapters download` with every check on: the manifest must hash to the stack's pin, only the
    files the manifest lists are fetched, each must match its sha256 and size, and the validator (base-model
    shapes, rank, NaN/Inf, no pickles, no extra files) must pass before the version's folder appears."""
    return ["python", "-m", "service.registry_cli", "download", pin.alias, str(pin.version),
            str(layout.adapter_dir(pin.name)), "--expected-sha256", pin.sha256,
            "--base-config", f"{spec.model.path}/config.json", "--max-rank", str(spec.max_lora_rank),
            "--account-url", account_url, "--container", spec.storage.container]


def pod_template(spec: DeploymentSpec, storage_account: str, tools_image: str,
                 layout: HostLayout = DEFAULT_LAYOUT) -> dict[str, Any]:
    """The pod: one GPU per vLLM replica, tolerating the GPU taint; nothing reaches vLLM unvalidated."""
    vllm = kubernetes_container(spec, layout, api_key_secret=API_KEY_SECRET)
    # vLLM's workers share tensors through /dev/shm, which is 64 MiB in a default pod.
    vllm = {**vllm, "securityContext": RESTRICTED,
            "volumeMounts": [*vllm["volumeMounts"], {"name": "dshm", "mountPath": "/dev/shm"}]}
    mounts = [{"name": "models", "mountPath": str(layout.models)}, {"name": "adapters", "mountPath": str(layout.adapters)}]
    fetch_model = {"name": "fetch-model", "image": AZURE_CLI_IMAGE, "command": ["bash", "-c", model_fetch_script(spec)],
                   "env": [{"name": "STORAGE_ACCOUNT", "value": storage_account}], "volumeMounts": mounts,
                   "resources": INIT_RESOURCES, "securityContext": RESTRICTED}
    account_url = f"https://{storage_account}.blob.core.windows.net"
    # One container per version, argv only (no shell): a pin's fields never pass through a shell.
    validators = [{"name": f"validate-{pin.name.replace('_', '-')}", "image": tools_image,
                   "command": validator_argv(spec, pin, account_url, layout),
                   "volumeMounts": [{**mounts[0], "readOnly": True}, mounts[1]],
                   "resources": INIT_RESOURCES, "securityContext": RESTRICTED}
                  for pin in served_versions(spec)]
    return {
        "metadata": {"labels": {**VLLM_LABELS, "azure.workload.identity/use": "true"},
                     "annotations": kubernetes_scrape_annotations(spec)["vllm"]},
        "spec": {
            "serviceAccountName": SERVICE_ACCOUNT,
            "automountServiceAccountToken": False,
            "nodeSelector": {"exaone-lora/pool": GPU_POOL},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}],
            "initContainers": [fetch_model, *validators],
            "containers": [vllm],
            "terminationGracePeriodSeconds": 60,
            "volumes": [
                {"name": "models", "emptyDir": {}},
                {"name": "adapters", "emptyDir": {}},
                {"name": "cache", "emptyDir": {}},
                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
            ],
        },
    }


def deployment_spec(spec: DeploymentSpec, template: dict[str, Any]) -> dict[str, Any]:
    low, high = replica_bounds(spec)
    body: dict[str, Any] = {"selector": {"matchLabels": VLLM_LABELS}, "template": template,
                            # A GPU is never spare: replace pods one at a time instead of surging.
                            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}}
    if high == low:
        body["replicas"] = low  # with autoscaling KEDA owns the count; Pulumi setting it too would fight it
    return body


def disruption_budget(spec: DeploymentSpec) -> dict[str, Any]:
    # Keep all but one replica through node drains; a single replica must not block upgrades forever.
    low, _ = replica_bounds(spec)
    keep = {"minAvailable": low - 1} if low > 1 else {"maxUnavailable": 1}
    return obj("policy/v1", "PodDisruptionBudget", "vllm", {"selector": {"matchLabels": VLLM_LABELS}, **keep},
               labels=VLLM_LABELS)


def queue_query(namespace: str = NAMESPACE) -> str:
    """Requests waiting in vLLM's scheduler, summed over the stack's pods (the PodMonitor's job label)."""
    return f'sum({VLLM_METRIC_WAITING}{{job="{VLLM_JOB}",namespace="{namespace}"}})'


def scaled_object(spec: DeploymentSpec) -> dict[str, Any] | None:
    """KEDA on vLLM's queue, or None when min == max. KEDA (AKS's managed add-on) queries Prometheus itself, so no
    metrics adapter has to be installed and kept in sync, which an HPA on an external metric would need."""
    low, high = replica_bounds(spec)
    if high == low:
        return None
    auto = spec.aks.autoscaling
    return obj(KEDA_API, "ScaledObject", "vllm", {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vllm"},
        "minReplicaCount": low,
        "maxReplicaCount": high,
        "pollingInterval": 15,
        # A new pod takes minutes (model fetch, validation, CUDA graphs): scale in slowly.
        "cooldownPeriod": 600,
        "triggers": [{"type": "prometheus", "metadata": {
            "serverAddress": auto.prometheus_url, "query": queue_query(), "threshold": str(auto.queue_target)}}],
    }, labels=VLLM_LABELS)
