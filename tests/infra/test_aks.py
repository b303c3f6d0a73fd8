"""The AKS path under Pulumi's mock runtime: refusals, the cluster's fences, the inference extension's alias
mapping (parity with the VM gateway), the validating init containers (run for real against Azurite)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from exaone_lora.checkpoints import Checkpoint
from exaone_lora.model_shape import EXAONE_TINY
from exaone_lora.spec import DeploymentSpec, SpecError
from infra.aks import GPU_TAINT, AksStackError, azurecli_kubeconfig, check_aks_stack
from infra.common import InfraOptions
from infra.k8s.inference import CLIENT_PATHS, alias_targets
from infra.k8s.workload import served_versions
from infra.mocks import ProgramRun, RecordingMonitor
from infra.preview import policy_verdict, rows, run_program
from service.manifest import manifest_sha256
from service.registry import AdapterRegistry
from service.registry_cli import app as registry_app
from service.vllm_config import vllm_launch
from tests.infra.conftest import ADAPTERS, variant
from tests.support.processes import Azurite

TOOLS_IMAGE = "example.azurecr.io/exaone-lora:0.1.0@sha256:" + "d" * 64
CANARY = {"alias": "medical", "version": 4, "blobPath": "medical/v4", "sha256": "c" * 64, "weight": 10}
KEY = InfraOptions(api_key="k" * 40, operator_principal_id="11111111-2222-3333-4444-555555555555")
CLUSTER = "azure-native:containerservice:ManagedCluster"


def aks_variant(**overrides: Any) -> DeploymentSpec:
    aks = {"toolsImage": TOOLS_IMAGE, **overrides.pop("aks", {})}
    return variant("poc", target="aks", aks=aks, **{"adapters": ADAPTERS, **overrides})


@pytest.fixture(scope="module")
def spec() -> DeploymentSpec:
    return aks_variant(aks={"canaries": [CANARY], "autoscaling": {"maxReplicas": 4},
                            "adminGroupObjectIds": ["aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"]})


@pytest.fixture(scope="module")
def run(spec: DeploymentSpec) -> ProgramRun:
    return run_program(spec, KEY)


def k8s_objects(run: ProgramRun, kind: str) -> list[dict[str, Any]]:
    return [r.inputs for r in run.resources if r.type.startswith("kubernetes:") and r.type.endswith(f":{kind}")]


def vllm_pod(run: ProgramRun) -> dict[str, Any]:
    deployment = next(d for d in k8s_objects(run, "Deployment") if d["metadata"]["name"] == "vllm")
    return deployment["spec"]["template"]["spec"]


# ---------------------------------------------------------------- refusals


def test_no_api_key_is_refused_before_anything_is_created(spec: DeploymentSpec) -> None:
    with pytest.raises(AksStackError, match=r"pulumi config set --secret ops:apiKey"):
        check_aks_stack(spec, InfraOptions())
    # Through the program too: the error surfaces instead of pods that fail on a missing Secret.
    with pytest.raises(Exception, match=r"pulumi config set --secret ops:apiKey"):
        run_program(spec, InfraOptions())


def test_operator_cidr_or_private_cluster_is_required() -> None:
    open_api = aks_variant(operatorCidr=None)
    with pytest.raises(AksStackError, match=r"operatorCidr is required.*aks.privateCluster"):
        check_aks_stack(open_api, KEY)
    private = aks_variant(operatorCidr=None, aks={"privateCluster": True})
    cluster = run_program(private, KEY).one(CLUSTER)
    assert cluster.inputs["apiServerAccessProfile"] == {"enablePrivateCluster": True}


@pytest.mark.parametrize(("aks", "message"), [
    ({"toolsImage": None}, r"aks.toolsImage is required"),
    ({"canaries": [{**CANARY, "alias": "legal_x", "blobPath": "legal_x/v4"}]},
     r"aks.canaries\[0\].alias: legal_x is not one of the pinned"),
    ({"canaries": [{**CANARY, "version": 3, "blobPath": "medical/v3"}]}, r"medical-v3 is already the pinned version"),
    ({"canaries": [CANARY, {**CANARY, "version": 5, "blobPath": "medical/v5"}]}, r"medical has two canaries"),
    ({"canaries": [{**CANARY, "blobPath": "medical/v9"}]}, r"aks.canaries\[0\].blobPath is 'medical/v9'"),
    ({"canaries": [{**CANARY, "rank": 64}]}, r"aks.canaries\[0\].rank: 64 is above maxLoraRank 32"),
    ({"autoscaling": {"minReplicas": 3, "maxReplicas": 2}}, r"maxReplicas: 2 is below minReplicas 3"),
])
def test_broken_aks_settings_are_refused_by_name(aks: dict[str, Any], message: str) -> None:
    with pytest.raises(AksStackError, match=message):
        check_aks_stack(aks_variant(aks=aks), KEY)


def test_gateway_off_is_refused() -> None:
    with pytest.raises(AksStackError, match=r"gateway.enabled must stay true"):
        check_aks_stack(aks_variant(gateway={"enabled": False}), KEY)


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=80))
def test_tools_image_must_be_pinned_by_digest(image: str) -> None:
    try:
        aks_variant(aks={"toolsImage": image})
    except SpecError as exc:
        assert "aks.toolsImage" in str(exc) and "pinned by digest" in str(exc)
    else:  # only a digest-pinned reference passes
        assert "@sha256:" in image and len(image.rsplit("@sha256:", 1)[1]) == 64


@settings(max_examples=40, deadline=None)
@given(st.from_regex(r"\A[a-z./-]{1,20}:(latest|main|v1|1\.2\.1|v1\.2)\Z"))
def test_epp_image_needs_an_exact_release_or_digest(image: str) -> None:
    with pytest.raises(SpecError, match=r"aks.eppImage.*exact release tag"):
        aks_variant(aks={"eppImage": image})


# ---------------------------------------------------------------- the cluster (issue 20 item 8)


def test_cluster_has_entra_rbac_no_local_accounts_calico_and_operator_only_api(run: ProgramRun, spec: DeploymentSpec) -> None:
    cluster = run.one(CLUSTER).inputs
    assert cluster["disableLocalAccounts"] is True
    assert cluster["aadProfile"] == {"managed": True, "enableAzureRBAC": True,
                                     "adminGroupObjectIDs": ["aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"]}
    assert cluster["networkProfile"]["networkPolicy"] == "calico"
    assert cluster["apiServerAccessProfile"] == {"authorizedIPRanges": [spec.operator_cidr]}
    assert cluster["workloadAutoScalerProfile"] == {"keda": {"enabled": True}}
    gpu = next(p for p in cluster["agentPoolProfiles"] if p["name"] == "gpu")
    assert (gpu["enableAutoScaling"], gpu["minCount"], gpu["maxCount"]) == (True, 1, 4)
    admin = next(r for r in run.of_type("azure-native:authorization:RoleAssignment") if r.name == "operator-aks-rbac-admin")
    assert admin.inputs["roleDefinitionId"].endswith("/b1ff04bb-8a4e-4dc4-8eb5-8693973ce19b")
    assert admin.inputs["principalId"] == KEY.operator_principal_id
    assert policy_verdict(rows(run), spec).passed


def test_without_autoscaling_the_pool_is_fixed_and_keda_is_off() -> None:
    fixed = run_program(aks_variant(), KEY)
    cluster = fixed.one(CLUSTER).inputs
    assert "workloadAutoScalerProfile" not in cluster
    assert "enableAutoScaling" not in next(p for p in cluster["agentPoolProfiles"] if p["name"] == "gpu")
    assert not k8s_objects(fixed, "ScaledObject")
    assert next(d for d in k8s_objects(fixed, "Deployment") if d["metadata"]["name"] == "vllm")["spec"]["replicas"] == 1


# ---------------------------------------------------------------- aliases, weights and the admin surface


def test_each_alias_maps_to_immutable_versions_with_weights(run: ProgramRun, spec: DeploymentSpec) -> None:
    rewrites = {r["metadata"]["labels"]["exaone-lora/alias"]: r["spec"] for r in k8s_objects(run, "InferenceModelRewrite")}
    assert set(rewrites) == {"medical", "legal"}
    medical = rewrites["medical"]["rules"][0]
    assert medical["matches"] == [{"model": {"type": "Exact", "value": "medical"}}]
    assert medical["targets"] == [{"modelRewrite": "medical-v3", "weight": 90}, {"modelRewrite": "medical-v4", "weight": 10}]
    assert rewrites["legal"]["rules"][0]["targets"] == [{"modelRewrite": "legal-v1", "weight": 100}]
    pool = k8s_objects(run, "InferencePool")[0]
    assert {r["poolRef"]["name"] for r in rewrites.values()} == {pool["metadata"]["name"]}


def test_vm_and_aks_map_aliases_alike_and_pods_serve_every_target(run: ProgramRun, spec: DeploymentSpec) -> None:
    # Without a canary the rewrite is the VM gateway's alias table (`--alias medical=medical-v3`): one version, all traffic.
    plain = aks_variant()
    assert alias_targets(plain) == {pin.alias: [(pin.name, 100)] for pin in plain.adapters}
    pod = vllm_pod(run)
    args = pod["containers"][0]["args"]
    served = {a.split("=", 1)[0] for a in args[args.index("--lora-modules") + 1:] if "=" in a and not a.startswith("{")}
    targets = {t["modelRewrite"] for r in k8s_objects(run, "InferenceModelRewrite") for t in r["spec"]["rules"][0]["targets"]}
    assert targets == served == {"medical-v3", "medical-v4", "legal-v1"}


def test_admin_surface_and_metrics_are_off_the_client_route(run: ProgramRun, spec: DeploymentSpec) -> None:
    route = k8s_objects(run, "HTTPRoute")[0]["spec"]
    paths = [m["path"] for rule in route["rules"] for m in rule["matches"]]
    assert paths == [{"type": "Exact", "value": p} for p in CLIENT_PATHS]
    assert not any("lora_adapter" in p["value"] or "metrics" in p["value"] for p in paths)
    vllm = vllm_pod(run)["containers"][0]
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in {e["name"] for e in vllm["env"]}, "no runtime load/unload on AKS"
    key = next(e for e in vllm["env"] if e["name"] == "VLLM_API_KEY")
    assert key["valueFrom"]["secretKeyRef"] == {"name": "exaone-lora-api-key", "key": "api-key"}
    secret = k8s_objects(run, "Secret")[0]
    assert json.dumps(secret["stringData"]).count("k" * 40) == 1
    # No Service exposes vLLM itself: clients reach only the Gateway.
    assert [s["metadata"]["name"] for s in k8s_objects(run, "Service")] == ["endpoint-picker"]
    assert all(s["spec"]["type"] == "ClusterIP" for s in k8s_objects(run, "Service"))
    gateway = k8s_objects(run, "Gateway")[0]["spec"]
    assert gateway["infrastructure"]["annotations"] == {"service.beta.kubernetes.io/azure-load-balancer-internal": "true"}


def test_network_policies_fence_vllm_and_metrics(run: ProgramRun) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in k8s_objects(run, "NetworkPolicy")}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    (vllm_rule,) = policies["vllm"]["ingress"]
    assert vllm_rule["ports"] == [{"protocol": "TCP", "port": 8081}]
    peers = vllm_rule["from"]
    assert {"podSelector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": "inference-gateway"}}} in peers
    monitoring = [p for p in peers if "namespaceSelector" in p]
    assert monitoring == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                           "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    assert all("ipBlock" not in p for p in peers), "nothing outside the cluster reaches vLLM's port (and /metrics)"


def test_every_container_has_requests_and_limits(run: ProgramRun) -> None:
    pods = [d["spec"]["template"]["spec"] for d in [*k8s_objects(run, "Deployment"), *k8s_objects(run, "DaemonSet")]]
    containers = [c for pod in pods for c in [*pod.get("initContainers", []), *pod["containers"]]]
    assert len(containers) >= 6
    for c in containers:
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][part]), f"{c['name']}: no {part}"


def test_pdb_and_keda_on_the_vllm_queue(run: ProgramRun) -> None:
    (pdb,) = k8s_objects(run, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    (scaler,) = k8s_objects(run, "ScaledObject")
    assert (scaler["spec"]["minReplicaCount"], scaler["spec"]["maxReplicaCount"]) == (1, 4)
    trigger = scaler["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus" and "vllm:num_requests_waiting" in trigger["metadata"]["query"]
    assert "replicas" not in next(d for d in k8s_objects(run, "Deployment") if d["metadata"]["name"] == "vllm")["spec"]


# ---------------------------------------------------------------- the validating init containers


def test_one_validator_per_served_version_with_argv_only(run: ProgramRun, spec: DeploymentSpec) -> None:
    pod = vllm_pod(run)
    inits = pod["initContainers"]
    assert inits[0]["name"] == "fetch-model" and "lora" not in inits[0]["command"][-1]
    validators = inits[1:]
    assert [v["name"] for v in validators] == [f"validate-{p.name}" for p in served_versions(spec)]
    for v, pin in zip(validators, served_versions(spec), strict=True):
        argv = v["command"]
        assert v["image"] == TOOLS_IMAGE and argv[:4] == ["python", "-m", "service.registry_cli", "download"]
        assert argv[argv.index("--expected-sha256") + 1] == pin.sha256
        assert argv[argv.index("--max-rank") + 1] == str(spec.max_lora_rank)
        assert argv[argv.index("--base-config") + 1] == f"{spec.model.path}/config.json"
        assert argv[argv.index("--account-url") + 1] == "https://exaoneloraregistry.blob.core.windows.net"


def _init_argv(spec: DeploymentSpec, pin_name: str, base_config: Path, dest: Path) -> list[str]:
    """The pod's validator argv as rendered, with Azurite's connection in place of the account URL and local paths."""
    pod = vllm_pod(run_program(spec, KEY))
    argv = next(c["command"] for c in pod["initContainers"] if c["name"] == f"validate-{pin_name}")[3:]
    at = argv.index("--account-url")
    argv = argv[:at] + argv[at + 2:]
    argv[argv.index("--base-config") + 1] = str(base_config)
    argv[3] = str(dest)
    return argv


@pytest.mark.azurite
def test_the_rendered_validator_copies_only_manifest_files_and_refuses_tampering(
        azurite_blob: Azurite, tiny_adapters: dict[str, Path], tiny_checkpoint: Checkpoint, tmp_path: Path) -> None:
    container = f"aks-{uuid.uuid4().hex[:10]}"
    registry = AdapterRegistry.from_connection_string(azurite_blob.connection_string, container)
    registry.ensure_container()
    manifest = registry.publish("medical", tiny_adapters["medical"], base_model_name=EXAONE_TINY.name,
                                base_model_revision="0" * 40, max_rank=8, base_config=tiny_checkpoint.path)
    pin = {"alias": "medical", "version": manifest.version, "blobPath": f"medical/v{manifest.version}",
           "sha256": manifest_sha256(registry.manifest_bytes("medical", manifest.version)), "rank": 8}
    spec = aks_variant(adapters=[pin], storage={"container": container})
    # A blob beside the version that no manifest lists (a planted .py file) must never reach the pod.
    registry.container.upload_blob(f"medical/v{manifest.version}/evil.py", b"import os\n")
    env = {"EXAONE_LORA_REGISTRY": azurite_blob.connection_string}
    dest = tmp_path / "adapters" / f"medical-v{manifest.version}"
    ok = CliRunner().invoke(registry_app, _init_argv(spec, f"medical-v{manifest.version}", tiny_checkpoint.path / "config.json",
                                                     dest), env=env)
    assert ok.exit_code == 0, ok.output
    assert sorted(p.name for p in dest.iterdir()) == sorted([*manifest.files, "manifest.json"])

    # A pin that does not match the registry's manifest: refused, nothing appears.
    wrong = aks_variant(adapters=[{**pin, "sha256": "e" * 64}], storage={"container": container})
    dest2 = tmp_path / "adapters2" / f"medical-v{manifest.version}"
    refused = CliRunner().invoke(registry_app, _init_argv(wrong, f"medical-v{manifest.version}",
                                                          tiny_checkpoint.path / "config.json", dest2), env=env)
    assert refused.exit_code != 0 and not dest2.exists()

    # A weights blob replaced after publishing: its sha256 no longer matches the manifest.
    weights = next(name for name in manifest.files if name.endswith(".safetensors"))
    registry.container.upload_blob(f"medical/v{manifest.version}/{weights}", b"\0" * 64, overwrite=True)
    dest3 = tmp_path / "adapters3" / f"medical-v{manifest.version}"
    tampered = CliRunner().invoke(registry_app, _init_argv(spec, f"medical-v{manifest.version}",
                                                           tiny_checkpoint.path / "config.json", dest3), env=env)
    assert tampered.exit_code != 0 and not dest3.exists()


# ---------------------------------------------------------------- what the VM path shares


def test_pools_and_workload_identity(run: ProgramRun, spec: DeploymentSpec) -> None:
    assert not run.of_type("azure-native:compute:VirtualMachine"), "target aks must not create VMs"
    cluster = run.one(CLUSTER).inputs
    pools = {p["name"]: p for p in cluster["agentPoolProfiles"]}
    assert pools["system"]["mode"] == "System" and "nodeTaints" not in pools["system"]
    gpu = pools["gpu"]
    assert (gpu["mode"], gpu["vmSize"], gpu["count"]) == ("User", "Standard_NC40ads_H100_v5", 1)
    assert gpu["nodeTaints"] == [GPU_TAINT] == ["nvidia.com/gpu=present:NoSchedule"]
    assert gpu["enableEncryptionAtHost"] is True
    assert cluster["oidcIssuerProfile"]["enabled"] is True
    assert cluster["securityProfile"]["workloadIdentity"]["enabled"] is True
    fic = run.one("azure-native:managedidentity:FederatedIdentityCredential")
    assert fic.inputs["subject"] == "system:serviceaccount:exaone-lora:vllm"
    assert fic.inputs["issuer"].startswith("https://oidc.mock.invalid/")
    sa = next(a for a in k8s_objects(run, "ServiceAccount") if a["metadata"]["name"] == "vllm")
    assert sa["metadata"]["annotations"]["azure.workload.identity/client-id"] == run.outputs["identityClientId"]
    assert vllm_pod(run)["serviceAccountName"] == "vllm"
    kubeconfig = run.one("pulumi:providers:kubernetes").inputs["kubeconfig"]
    assert isinstance(kubeconfig, dict) and "mock-aks.invalid" in kubeconfig["value"]
    nsg = run.one("azure-native:network:NetworkSecurityGroup")
    assert not [r for r in nsg.inputs.get("securityRules") or [] if r["destinationPortRange"] == "22"]


def test_container_args_equal_the_vm_unit_args() -> None:
    plain = aks_variant()
    pod = vllm_pod(run_program(plain, KEY))
    vllm = pod["containers"][0]
    assert vllm["image"] == f"vllm/vllm-openai:v{plain.vllm_version}"
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"readinessProbe", "livenessProbe", "startupProbe"} <= set(vllm)
    pod_args, vm_args = list(vllm["args"]), list(vllm_launch(plain).args)
    # The one intended difference: in a pod vLLM binds 0.0.0.0 (kubelet probes and the pool reach the pod IP);
    # the NetworkPolicy is the fence there, loopback behind the gateway on the VM.
    host_at = vm_args.index("--host") + 1
    assert (vm_args[host_at], pod_args[host_at]) == ("127.0.0.1", "0.0.0.0")
    assert pod_args[:host_at] + pod_args[host_at + 1:] == vm_args[:host_at] + vm_args[host_at + 1:]
    assert "medical-v3=/data/lora-adapters/medical-v3" in pod_args
    assert pod["tolerations"][0] == {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present",
                                     "effect": "NoSchedule"}


@pytest.mark.parametrize(("weight", "targets"), [
    (0, [("medical-v3", 100)]), (30, [("medical-v3", 70), ("medical-v4", 30)]), (100, [("medical-v4", 100)])])
def test_canary_steps_keep_both_versions_served(weight: int, targets: list[tuple[str, int]],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    staged = aks_variant(aks={"canaries": [{**CANARY, "weight": weight}]})
    assert alias_targets(staged)["medical"] == targets
    dependencies: dict[str, list[str]] = {}
    register = RecordingMonitor.RegisterResource

    def recording(self: RecordingMonitor, request: Any) -> Any:
        dependencies[request.name] = list(request.dependencies)
        return register(self, request)

    monkeypatch.setattr(RecordingMonitor, "RegisterResource", recording)
    run = run_program(staged, KEY)
    args = vllm_pod(run)["containers"][0]["args"]
    assert {"medical-v3=/data/lora-adapters/medical-v3", "medical-v4=/data/lora-adapters/medical-v4"} <= set(args)
    # The rewrite waits for the rollout: its weights never name a version the pods do not serve yet.
    deployment = next(r for r in run.resources if r.type == "kubernetes:apps/v1:Deployment" and r.name == "vllm")
    assert deployment.urn in dependencies["inferencemodelrewrite-alias-medical"]
    assert deployment.urn not in dependencies["httproute-inference"]


AKS_EXEC_KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: aks, cluster: {server: 'https://aks.hcp.koreacentral.azmk8s.io:443'}}]
contexts: [{name: aks, context: {cluster: aks, user: clusterUser_rg_aks}}]
current-context: aks
users:
- name: clusterUser_rg_aks
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: kubelogin
      args: [get-token, --environment, AzurePublicCloud, --server-id, 6dae42f8-4368-4678-94ff-3960e28e3630,
             --client-id, 80faf920-1908-4b52-b5ef-a8e7bedfc67a, --tenant-id, 00000000-0000-0000-0000-0000000000aa,
             --login, devicecode]
"""


def test_the_provider_signs_in_with_the_azure_cli_not_a_device_code() -> None:
    converted = yaml.safe_load(azurecli_kubeconfig(AKS_EXEC_KUBECONFIG))
    exec_ = converted["users"][0]["user"]["exec"]
    assert exec_["command"] == "kubelogin"
    assert exec_["args"] == ["get-token", "--login", "azurecli", "--server-id", "6dae42f8-4368-4678-94ff-3960e28e3630"]
    assert converted["clusters"] == yaml.safe_load(AKS_EXEC_KUBECONFIG)["clusters"]
    token_config = "users: [{name: mock, user: {token: mock}}]\n"
    assert azurecli_kubeconfig(token_config) == token_config
    broken = AKS_EXEC_KUBECONFIG.replace("--server-id, 6dae42f8-4368-4678-94ff-3960e28e3630,", "")
    with pytest.raises(AksStackError, match="without --server-id"):
        azurecli_kubeconfig(broken)
