"""The AKS path: a cluster with a system pool and a tainted GPU pool, workload identity for Blob, and the
vLLM Deployment whose container is rendered by `service.vllm_config.kubernetes_container` (same argv as the
VM's systemd unit)."""

from __future__ import annotations

import base64
import shlex
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
from pulumi_azure_native import containerservice, managedidentity

from exaone_lora.spec import DeploymentSpec
from infra.common import COMPONENT_PREFIX, InfraOptions, prefix
from service.layout import DEFAULT_LAYOUT, HostLayout
from service.vllm_config import kubernetes_container

GPU_TAINT = "nvidia.com/gpu=present:NoSchedule"
GPU_POOL = "gpu"
SYSTEM_POOL = "system"
SYSTEM_POOL_SIZE = "Standard_D4ds_v5"
SYSTEM_POOL_COUNT = 2
NAMESPACE = "exaone-lora"
SERVICE_ACCOUNT = "vllm"
APP_LABELS = {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/part-of": "exaone-lora"}
# Pinned images: the Azure CLI fetches from Blob with the workload identity; NVIDIA's plugin exposes nvidia.com/gpu.
AZURE_CLI_IMAGE = "mcr.microsoft.com/azure-cli:2.67.0"
DEVICE_PLUGIN_IMAGE = "nvcr.io/nvidia/k8s-device-plugin:v0.17.0"
MODELS_CONTAINER = "models"
API_KEY_SECRET = "exaone-lora-api-key"


def manifest(value: dict[str, Any]) -> Any:
    """Kubernetes objects are written in the API's own camelCase (as `kubernetes_container` renders them), which
    pulumi-kubernetes passes through unchanged; its typed dicts expect snake_case, so hand them over untyped."""
    return value


def agent_pools(spec: DeploymentSpec, subnet_id: pulumi.Input[str]) -> list[containerservice.ManagedClusterAgentPoolProfileArgs]:
    """System pool for cluster services; GPU pool of the tier's SKU, tainted so only GPU workloads land there."""
    return [
        containerservice.ManagedClusterAgentPoolProfileArgs(
            name=SYSTEM_POOL, mode="System", vm_size=SYSTEM_POOL_SIZE, count=SYSTEM_POOL_COUNT, os_type="Linux",
            os_sku="Ubuntu", type="VirtualMachineScaleSets", vnet_subnet_id=subnet_id, enable_encryption_at_host=True),
        containerservice.ManagedClusterAgentPoolProfileArgs(
            name=GPU_POOL, mode="User", vm_size=spec.vm_sku, count=spec.node_count, os_type="Linux", os_sku="Ubuntu",
            type="VirtualMachineScaleSets", vnet_subnet_id=subnet_id, enable_encryption_at_host=True,
            os_disk_size_gb=spec.os_disk_gb, node_taints=[GPU_TAINT], node_labels={"exaone-lora/pool": GPU_POOL},
            tags=spec.resource_tags()),
    ]


def fetch_script(spec: DeploymentSpec, layout: HostLayout = DEFAULT_LAYOUT) -> str:
    """Init container script: log in with the federated token, download the model and every pinned adapter
    version from Blob, and check each manifest against the sha256 pinned in the stack before vLLM starts."""
    model_prefix = f"{spec.model.name}/{spec.model.revision}"
    lines = [
        "set -euo pipefail",
        'az login --service-principal -u "$AZURE_CLIENT_ID" -t "$AZURE_TENANT_ID" '
        '--federated-token "$(cat "$AZURE_FEDERATED_TOKEN_FILE")" --allow-no-subscriptions --output none',
        f'az storage blob download-batch --auth-mode login --account-name "$STORAGE_ACCOUNT" -s {MODELS_CONTAINER} '
        f"--pattern {shlex.quote(model_prefix + '/*')} -d /tmp/model --only-show-errors --output none",
        f"mkdir -p {shlex.quote(spec.model.path)}",
        f"cp -r /tmp/model/{shlex.quote(model_prefix)}/. {shlex.quote(spec.model.path)}/",
    ]
    for pin in spec.adapters:
        dest = str(layout.adapter_dir(pin.name if spec.gateway.enabled else pin.alias))
        lines += [
            f'az storage blob download-batch --auth-mode login --account-name "$STORAGE_ACCOUNT" -s {spec.storage.container} '
            f"--pattern {shlex.quote(pin.blob_path + '/*')} -d /tmp/adapters --only-show-errors --output none",
            f"echo {pin.sha256}  /tmp/adapters/{shlex.quote(pin.blob_path)}/manifest.json | sha256sum -c -",
            f"mkdir -p {shlex.quote(dest)} && cp /tmp/adapters/{shlex.quote(pin.blob_path)}/* {shlex.quote(dest)}/",
        ]
    return "\n".join(lines) + "\n"


def pod_template(spec: DeploymentSpec, storage_account: str, layout: HostLayout = DEFAULT_LAYOUT) -> dict[str, Any]:
    """The pod: one GPU per vLLM replica, tolerating the GPU taint, adapters fetched by an init container."""
    vllm = kubernetes_container(spec, layout, api_key_secret=API_KEY_SECRET)
    # vLLM's workers share tensors through /dev/shm, which is 64 MiB in a default pod.
    vllm = {**vllm, "volumeMounts": [*vllm["volumeMounts"], {"name": "dshm", "mountPath": "/dev/shm"}]}
    init = {
        "name": "fetch-from-blob",
        "image": AZURE_CLI_IMAGE,
        "command": ["bash", "-c", fetch_script(spec, layout)],
        "env": [{"name": "STORAGE_ACCOUNT", "value": storage_account}],
        "volumeMounts": [{"name": "models", "mountPath": str(layout.models)},
                         {"name": "adapters", "mountPath": str(layout.adapters)}],
    }
    return {
        "metadata": {"labels": {**APP_LABELS, "azure.workload.identity/use": "true"}},
        "spec": {
            "serviceAccountName": SERVICE_ACCOUNT,
            "nodeSelector": {"exaone-lora/pool": GPU_POOL},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}],
            "initContainers": [init],
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


def disruption_budget(replicas: int) -> dict[str, Any]:
    # Keep all but one replica through node drains; a single replica must not block upgrades forever.
    return {"minAvailable": replicas - 1} if replicas > 1 else {"maxUnavailable": 1}


def service_annotations(spec: DeploymentSpec) -> dict[str, str]:
    if spec.api.exposure == "private":
        return {"service.beta.kubernetes.io/azure-load-balancer-internal": "true"}
    return {}


class AksCluster(pulumi.ComponentResource):
    cluster: containerservice.ManagedCluster
    federated: managedidentity.FederatedIdentityCredential
    provider: k8s.Provider
    deployment: k8s.apps.v1.Deployment
    service: k8s.core.v1.Service
    pdb: k8s.policy.v1.PodDisruptionBudget

    def __init__(self, name: str, spec: DeploymentSpec, *, resource_group_name: pulumi.Input[str],
                 subnet_id: pulumi.Input[str], identity: managedidentity.UserAssignedIdentity,
                 storage_account: pulumi.Output[str], options: InfraOptions,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{COMPONENT_PREFIX}:infra:AksCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        rg = resource_group_name
        self.cluster = containerservice.ManagedCluster(
            "aks", resource_group_name=rg, location=spec.region, tags=spec.resource_tags(), dns_prefix=prefix(spec),
            kubernetes_version=options.kubernetes_version, enable_rbac=True,
            identity=containerservice.ManagedClusterIdentityArgs(type=containerservice.ResourceIdentityType.SYSTEM_ASSIGNED),
            sku=containerservice.ManagedClusterSKUArgs(name="Base", tier="Standard"),
            agent_pool_profiles=agent_pools(spec, subnet_id),
            oidc_issuer_profile=containerservice.ManagedClusterOIDCIssuerProfileArgs(enabled=True),
            security_profile=containerservice.ManagedClusterSecurityProfileArgs(
                workload_identity=containerservice.ManagedClusterSecurityProfileWorkloadIdentityArgs(enabled=True)),
            network_profile=containerservice.ContainerServiceNetworkProfileArgs(
                network_plugin="azure", network_plugin_mode="overlay", load_balancer_sku="standard"),
            api_server_access_profile=containerservice.ManagedClusterAPIServerAccessProfileArgs(
                authorized_ip_ranges=[spec.operator_cidr]) if spec.operator_cidr else None,
            opts=child)
        issuer = self.cluster.oidc_issuer_profile.apply(lambda p: (p.issuer_url if p else None) or "")
        # Pods of the service account exchange their token for the identity's: no storage keys in the cluster.
        self.federated = managedidentity.FederatedIdentityCredential(
            "aks-federation", resource_group_name=rg, resource_name_=identity.name, issuer=issuer,
            subject=f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}", audiences=["api://AzureADTokenExchange"],
            opts=child)
        creds = containerservice.list_managed_cluster_user_credentials_output(
            resource_group_name=rg, resource_name=self.cluster.name)
        kubeconfig: pulumi.Output[str] = pulumi.Output.secret(
            creds.kubeconfigs.apply(lambda ks: base64.b64decode(ks[0].value).decode()))  # type: ignore[arg-type]
        self.provider = k8s.Provider("aks-provider", kubeconfig=kubeconfig, opts=child)
        kopts = pulumi.ResourceOptions(parent=self, provider=self.provider)

        ns = k8s.core.v1.Namespace("namespace", metadata=manifest({"name": NAMESPACE}), opts=kopts)
        meta = {"namespace": ns.metadata.name, "labels": APP_LABELS}
        k8s.apps.v1.DaemonSet(
            "nvidia-device-plugin",
            metadata=manifest({"namespace": "kube-system", "name": "nvidia-device-plugin"}),
            spec=manifest({"selector": {"matchLabels": {"name": "nvidia-device-plugin"}},
                  "template": {"metadata": {"labels": {"name": "nvidia-device-plugin"}}, "spec": {
                      "nodeSelector": {"exaone-lora/pool": GPU_POOL},
                      "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                      "priorityClassName": "system-node-critical",
                      "containers": [{"name": "nvidia-device-plugin", "image": DEVICE_PLUGIN_IMAGE,
                                      "securityContext": {"allowPrivilegeEscalation": False,
                                                          "capabilities": {"drop": ["ALL"]}},
                                      "volumeMounts": [{"name": "dp", "mountPath": "/var/lib/kubelet/device-plugins"}]}],
                      "volumes": [{"name": "dp", "hostPath": {"path": "/var/lib/kubelet/device-plugins"}}]}}}),
            opts=kopts)
        k8s.core.v1.ServiceAccount(
            "service-account",
            metadata=manifest({**meta, "name": SERVICE_ACCOUNT,
                               "annotations": {"azure.workload.identity/client-id": identity.client_id}}),
            opts=kopts)
        if options.api_key is not None:
            k8s.core.v1.Secret("api-key", metadata=manifest({**meta, "name": API_KEY_SECRET}),
                               string_data=manifest({"api-key": pulumi.Output.secret(options.api_key)}), opts=kopts)
        replicas = spec.total_gpus
        template = storage_account.apply(lambda account: pod_template(spec, account))
        self.deployment = k8s.apps.v1.Deployment(
            "vllm",
            metadata=manifest({**meta, "name": "vllm"}),
            spec=manifest({"replicas": replicas, "selector": {"matchLabels": APP_LABELS}, "template": template,
                  # A GPU is never spare: replace pods one at a time instead of surging.
                  "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}}),
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[self.federated]))
        self.service = k8s.core.v1.Service(
            "vllm-service",
            metadata=manifest({**meta, "name": "vllm", "annotations": service_annotations(spec)}),
            spec=manifest({"type": "LoadBalancer", "selector": APP_LABELS,
                  "ports": [{"name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP"}],
                  "loadBalancerSourceRanges": list(spec.api.allowed_cidrs) or None}),
            opts=kopts)
        self.pdb = k8s.policy.v1.PodDisruptionBudget(
            "vllm-pdb", metadata=manifest({**meta, "name": "vllm"}),
            spec=manifest({"selector": {"matchLabels": APP_LABELS}, **disruption_budget(replicas)}), opts=kopts)
        self.api_host = self.service.status.apply(
            lambda s: (s.load_balancer.ingress[0].ip if s and s.load_balancer and s.load_balancer.ingress else "") or "")
        self.register_outputs({"cluster": self.cluster.name})
