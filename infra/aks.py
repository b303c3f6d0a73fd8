"""The AKS path: a cluster (Entra ID with Azure RBAC, no local accounts, Calico network policy, API server limited to
the operator or private) with a system pool and a tainted GPU pool, workload identity for Blob, and the manifests of
`infra/k8s` (vLLM pods behind validating init containers, the Gateway API Inference Extension, NetworkPolicies,
PDB, KEDA), handed to pulumi-kubernetes."""

from __future__ import annotations

import base64
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import yaml
from pulumi_azure_native import authorization, containerservice, managedidentity

from exaone_lora.spec import DeploymentSpec
from infra.common import COMPONENT_PREFIX, InfraOptions, prefix, role_definition_id
from infra.k8s.common import (
    API_KEY_CONFIG,
    API_KEY_SECRET,
    NAMESPACE,
    SERVICE_ACCOUNT,
    VLLM_LABELS,
    obj,
)
from infra.k8s.inference import epp_objects, gateway, http_route, inference_pool, model_rewrites
from infra.k8s.network import network_policies
from infra.k8s.workload import (
    GPU_POOL,
    MODELS_CONTAINER,
    deployment_spec,
    disruption_budget,
    gpu_pool_max_nodes,
    pod_template,
    replica_bounds,
    scaled_object,
)

__all__ = ["GPU_TAINT", "MODELS_CONTAINER", "SYSTEM_POOL_COUNT", "SYSTEM_POOL_SIZE", "AksCluster", "AksStackError",
           "azurecli_kubeconfig", "check_aks_stack"]

GPU_TAINT = "nvidia.com/gpu=present:NoSchedule"
SYSTEM_POOL = "system"
SYSTEM_POOL_SIZE = "Standard_D4ds_v5"
SYSTEM_POOL_COUNT = 2
DEVICE_PLUGIN_IMAGE = "nvcr.io/nvidia/k8s-device-plugin:v0.17.0"
# Built-in role: full Kubernetes access through Azure RBAC (local accounts are off, so this is how the operator and
# Pulumi's kubernetes provider get in).
AKS_RBAC_CLUSTER_ADMIN = "b1ff04bb-8a4e-4dc4-8eb5-8693973ce19b"
# pulumi-kubernetes classes of the core kinds; every other kind (the extension's, Gateway API's, KEDA's) is a CR.
CORE_KINDS: dict[str, Any] = {
    "Namespace": k8s.core.v1.Namespace, "ServiceAccount": k8s.core.v1.ServiceAccount, "Secret": k8s.core.v1.Secret,
    "ConfigMap": k8s.core.v1.ConfigMap, "Service": k8s.core.v1.Service, "Deployment": k8s.apps.v1.Deployment,
    "DaemonSet": k8s.apps.v1.DaemonSet, "PodDisruptionBudget": k8s.policy.v1.PodDisruptionBudget,
    "NetworkPolicy": k8s.networking.v1.NetworkPolicy, "Role": k8s.rbac.v1.Role, "RoleBinding": k8s.rbac.v1.RoleBinding,
}
ARG_NAMES = {"roleRef": "role_ref", "stringData": "string_data"}


class AksStackError(ValueError):
    """An AKS stack that would deploy something broken or open; the message names the setting to fix."""


def check_aks_stack(spec: DeploymentSpec, options: InfraOptions) -> None:
    """Refuse, before any resource is registered, an AKS stack that lacks what its pods or its fences need."""
    where = f"stack {spec.stack} (target aks)"
    if options.api_key is None:
        raise AksStackError(f"{where}: no API key. vLLM pods read it from a Secret and would fail without one; run "
                            f"`{API_KEY_CONFIG} <key>` and try again")
    if spec.operator_cidr is None and not spec.aks.private_cluster:
        raise AksStackError(f"{where}: operatorCidr is required so the API server admits only the operator's network; "
                            "set it (e.g. 203.0.113.7/32) or make the cluster private with aks.privateCluster: true")
    if spec.aks.tools_image is None:
        raise AksStackError(f"{where}: aks.toolsImage is required: this project's image, pinned by digest, runs the "
                            "adapter validator in every vLLM pod's init containers")
    if not spec.gateway.enabled:
        raise AksStackError(f"{where}: gateway.enabled must stay true: pods serve immutable version names and the "
                            "InferenceModelRewrite maps each alias onto them")
    pinned = {pin.alias: pin for pin in spec.adapters}
    for key, pin in [*((f"adapters[{i}]", p) for i, p in enumerate(spec.adapters)),
                     *((f"aks.canaries[{i}]", c) for i, c in enumerate(spec.aks.canaries))]:
        if pin.blob_path != f"{pin.alias}/v{pin.version}":
            raise AksStackError(f"{where}: {key}.blobPath is {pin.blob_path!r}; the registry keeps {pin.name} under "
                                f"'{pin.alias}/v{pin.version}', where the pods' validator fetches it")
    seen: set[str] = set()
    for i, canary in enumerate(spec.aks.canaries):
        key = f"aks.canaries[{i}]"
        if canary.alias not in pinned:
            raise AksStackError(f"{where}: {key}.alias: {canary.alias} is not one of the pinned adapters")
        if canary.version == pinned[canary.alias].version:
            raise AksStackError(f"{where}: {key}.version: {canary.name} is already the pinned version")
        if canary.rank > spec.max_lora_rank:
            raise AksStackError(f"{where}: {key}.rank: {canary.rank} is above maxLoraRank {spec.max_lora_rank}")
        if canary.alias in seen:
            raise AksStackError(f"{where}: {key}.alias: {canary.alias} has two canaries")
        seen.add(canary.alias)
    try:
        replica_bounds(spec)
    except ValueError as exc:
        raise AksStackError(f"{where}: {exc}") from None


def agent_pools(spec: DeploymentSpec, subnet_id: pulumi.Input[str]) -> list[containerservice.ManagedClusterAgentPoolProfileArgs]:
    """System pool for cluster services; GPU pool of the tier's SKU, tainted so only GPU workloads land there, and
    allowed to grow to the autoscaler's largest replica count."""
    low_nodes, high_nodes = spec.node_count, gpu_pool_max_nodes(spec)
    scaling: dict[str, Any] = ({"enable_auto_scaling": True, "min_count": low_nodes, "max_count": high_nodes}
                               if high_nodes > low_nodes else {})
    return [
        containerservice.ManagedClusterAgentPoolProfileArgs(
            name=SYSTEM_POOL, mode="System", vm_size=SYSTEM_POOL_SIZE, count=SYSTEM_POOL_COUNT, os_type="Linux",
            os_sku="Ubuntu", type="VirtualMachineScaleSets", vnet_subnet_id=subnet_id, enable_encryption_at_host=True),
        containerservice.ManagedClusterAgentPoolProfileArgs(
            name=GPU_POOL, mode="User", vm_size=spec.vm_sku, count=spec.node_count, os_type="Linux", os_sku="Ubuntu",
            type="VirtualMachineScaleSets", vnet_subnet_id=subnet_id, enable_encryption_at_host=True,
            os_disk_size_gb=spec.os_disk_gb, node_taints=[GPU_TAINT], node_labels={"exaone-lora/pool": GPU_POOL},
            tags=spec.resource_tags(), **scaling),
    ]


def api_server_access(spec: DeploymentSpec) -> containerservice.ManagedClusterAPIServerAccessProfileArgs:
    if spec.aks.private_cluster:
        return containerservice.ManagedClusterAPIServerAccessProfileArgs(enable_private_cluster=True)
    assert spec.operator_cidr is not None  # check_aks_stack refuses this case first
    return containerservice.ManagedClusterAPIServerAccessProfileArgs(authorized_ip_ranges=[spec.operator_cidr])


def device_plugin() -> dict[str, Any]:
    labels = {"name": "nvidia-device-plugin"}
    return obj("apps/v1", "DaemonSet", "nvidia-device-plugin", {
        "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {
            "nodeSelector": {"exaone-lora/pool": GPU_POOL},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "system-node-critical",
            "containers": [{"name": "nvidia-device-plugin", "image": DEVICE_PLUGIN_IMAGE,
                            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                                          "limits": {"cpu": "200m", "memory": "256Mi"}},
                            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                            "volumeMounts": [{"name": "dp", "mountPath": "/var/lib/kubelet/device-plugins"}]}],
            "volumes": [{"name": "dp", "hostPath": {"path": "/var/lib/kubelet/device-plugins"}}]}},
    }, namespace="kube-system")


def azurecli_kubeconfig(raw: str) -> str:
    """The cluster's exec kubeconfig with kubelogin switched to the Azure CLI's sign-in (`az login`), which Pulumi can
    use unattended; AKS hands out device-code sign-in, which waits for a person. Same as `kubelogin convert-kubeconfig
    -l azurecli`. A kubeconfig without an exec user (a token) is returned unchanged."""
    config = yaml.safe_load(raw)
    changed = False
    for user in config.get("users") or []:
        exec_ = (user.get("user") or {}).get("exec")
        if not exec_ or "kubelogin" not in str(exec_.get("command", "")):
            continue
        args = [str(a) for a in exec_.get("args") or []]
        if "--server-id" not in args:
            raise AksStackError("the cluster's kubeconfig has a kubelogin user without --server-id")
        server_id = args[args.index("--server-id") + 1]
        exec_["args"] = ["get-token", "--login", "azurecli", "--server-id", server_id]
        exec_.pop("env", None)
        changed = True
    return yaml.safe_dump(config, sort_keys=False) if changed else raw


def _resource(manifest: dict[str, Any], opts: pulumi.ResourceOptions, name: str | None = None) -> pulumi.CustomResource:
    """Register one manifest: the typed class for core kinds, a CustomResource for the rest. Bodies stay in the API's
    camelCase, which pulumi-kubernetes passes through unchanged (its typed args would want snake_case)."""
    kind = manifest["kind"]
    logical = name or f"{kind.lower()}-{manifest['metadata']['name']}"
    body = {ARG_NAMES.get(k, k): v for k, v in manifest.items() if k not in ("apiVersion", "kind")}
    if kind in CORE_KINDS:
        return CORE_KINDS[kind](logical, opts=opts, **body)  # type: ignore[no-any-return]
    return k8s.apiextensions.CustomResource(logical, api_version=manifest["apiVersion"], kind=kind, opts=opts, **body)


class AksCluster(pulumi.ComponentResource):
    cluster: containerservice.ManagedCluster
    federated: managedidentity.FederatedIdentityCredential
    provider: k8s.Provider
    deployment: pulumi.CustomResource
    gateway: pulumi.CustomResource

    def __init__(self, name: str, spec: DeploymentSpec, *, resource_group_name: pulumi.Input[str],
                 subnet_id: pulumi.Input[str], identity: managedidentity.UserAssignedIdentity,
                 storage_account: pulumi.Output[str], options: InfraOptions, subscription_id: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        check_aks_stack(spec, options)
        super().__init__(f"{COMPONENT_PREFIX}:infra:AksCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        rg = resource_group_name
        _, high = replica_bounds(spec)
        self.cluster = containerservice.ManagedCluster(
            "aks", resource_group_name=rg, location=spec.region, tags=spec.resource_tags(), dns_prefix=prefix(spec),
            kubernetes_version=options.kubernetes_version, enable_rbac=True,
            # Entra ID sign-in with Azure RBAC; no static admin/user certificates (`az aks get-credentials --admin`).
            disable_local_accounts=True,
            aad_profile=containerservice.ManagedClusterAADProfileArgs(
                managed=True, enable_azure_rbac=True, admin_group_object_ids=list(spec.aks.admin_group_object_ids)),
            identity=containerservice.ManagedClusterIdentityArgs(type=containerservice.ResourceIdentityType.SYSTEM_ASSIGNED),
            sku=containerservice.ManagedClusterSKUArgs(name="Base", tier="Standard"),
            agent_pool_profiles=agent_pools(spec, subnet_id),
            oidc_issuer_profile=containerservice.ManagedClusterOIDCIssuerProfileArgs(enabled=True),
            security_profile=containerservice.ManagedClusterSecurityProfileArgs(
                workload_identity=containerservice.ManagedClusterSecurityProfileWorkloadIdentityArgs(enabled=True)),
            # Calico enforces the namespace's NetworkPolicies (supported with Azure CNI overlay).
            network_profile=containerservice.ContainerServiceNetworkProfileArgs(
                network_plugin="azure", network_plugin_mode="overlay", network_policy="calico", load_balancer_sku="standard"),
            api_server_access_profile=api_server_access(spec),
            workload_auto_scaler_profile=containerservice.ManagedClusterWorkloadAutoScalerProfileArgs(
                keda=containerservice.ManagedClusterWorkloadAutoScalerProfileKedaArgs(enabled=True))
            if high > replica_bounds(spec)[0] else None,
            opts=child)
        admin_roles: list[pulumi.Resource] = []
        if options.operator_principal_id:
            admin_roles.append(authorization.RoleAssignment(
                "operator-aks-rbac-admin", principal_id=options.operator_principal_id,
                role_definition_id=role_definition_id(subscription_id, AKS_RBAC_CLUSTER_ADMIN),
                scope=self.cluster.id, opts=child))
        issuer = self.cluster.oidc_issuer_profile.apply(lambda p: (p.issuer_url if p else None) or "")
        # Pods of the service account exchange their token for the identity's: no storage keys in the cluster.
        self.federated = managedidentity.FederatedIdentityCredential(
            "aks-federation", resource_group_name=rg, resource_name_=identity.name, issuer=issuer,
            subject=f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}", audiences=["api://AzureADTokenExchange"],
            opts=child)
        # With local accounts off the user kubeconfig signs in through kubelogin (Entra ID), as the operator.
        creds = containerservice.list_managed_cluster_user_credentials_output(
            resource_group_name=rg, resource_name=self.cluster.name, format="exec")
        kubeconfig: pulumi.Output[str] = pulumi.Output.secret(
            creds.kubeconfigs.apply(lambda ks: azurecli_kubeconfig(base64.b64decode(ks[0].value).decode())))  # type: ignore[arg-type]
        self.provider = k8s.Provider("aks-provider", kubeconfig=kubeconfig,
                                     opts=pulumi.ResourceOptions(parent=self, depends_on=admin_roles))
        popts = pulumi.ResourceOptions(parent=self, provider=self.provider)
        ns = _resource(obj("v1", "Namespace", NAMESPACE, {}, namespace=None), popts, "namespace")
        kopts = pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[ns])
        _resource(device_plugin(), popts, "nvidia-device-plugin")
        _resource(obj("v1", "ServiceAccount", SERVICE_ACCOUNT, {}, labels=VLLM_LABELS,
                      annotations={"azure.workload.identity/client-id": identity.client_id}),  # type: ignore[dict-item]
                  kopts, "service-account")
        assert options.api_key is not None  # check_aks_stack refuses a stack without one
        _resource(obj("v1", "Secret", API_KEY_SECRET, {"type": "Opaque",
                      "stringData": {"api-key": pulumi.Output.secret(options.api_key)}}, labels=VLLM_LABELS),
                  kopts, "api-key")
        tools_image = spec.aks.tools_image or ""
        template = storage_account.apply(lambda account: pod_template(spec, account, tools_image))
        self.deployment = _resource(obj("apps/v1", "Deployment", "vllm", deployment_spec(spec, template),  # type: ignore[arg-type]
                                        labels=VLLM_LABELS),
                                    pulumi.ResourceOptions(parent=self, provider=self.provider,
                                                           depends_on=[ns, self.federated]), "vllm")
        _resource(disruption_budget(spec), kopts, "vllm-pdb")
        scaler = scaled_object(spec)
        if scaler is not None:
            _resource(scaler, kopts, "vllm-scaler")
        for manifest in [*epp_objects(spec), inference_pool(spec), http_route(spec), *network_policies(spec)]:
            _resource(manifest, kopts)
        # Weights move only once every pod serves the versions they name: pulumi-kubernetes waits for the
        # Deployment's rollout before it updates anything that depends on it.
        after_rollout = pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[ns, self.deployment])
        for manifest in model_rewrites(spec):
            _resource(manifest, after_rollout)
        self.gateway = _resource(gateway(spec), kopts, "gateway")
        self.register_outputs({"cluster": self.cluster.name})
