"""`preview_stack`: what the program would create for a stack (under the mock runtime) and the policy verdict."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exaone_lora import PROJECT
from exaone_lora.spec import DeploymentSpec, load_spec
from infra.common import InfraOptions
from infra.mocks import ProgramRun, RecordedResource, run_under_mocks
from infra.policy.rules import Violation, evaluate
from infra.roles import ROLE_NAMES, role_guid


@dataclass(frozen=True)
class ResourceRow:
    """One resource of the preview table; `inputs` are what the Azure provider would receive."""

    urn: str
    type: str
    name: str
    settings: dict[str, str]
    inputs: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class PolicyVerdict:
    violations: tuple[Violation, ...]

    @property
    def passed(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        if self.passed:
            return "policy pack: all rules pass"
        return "policy pack REFUSES this stack:\n" + "\n".join(f"  - {v}" for v in self.violations)


def run_program(spec: DeploymentSpec, options: InfraOptions | None = None, root: Path | str | None = None) -> ProgramRun:
    """Run infra.program.build for `spec` under Pulumi's mock runtime (the registry stack's file is read from `root`)."""
    from infra.program import build

    if root is None:
        return run_under_mocks(spec.project, spec.stack, lambda: build(spec, options))
    return run_under_mocks(spec.project, spec.stack, lambda: build(spec, options), Path(root))


def run_registry(stack: str, root: Path | str = ".", publisher_principal_id: str | None = None) -> ProgramRun:
    """Run the registry stack's program (infra/registry.py) under Pulumi's mock runtime."""
    from infra.common import subscription_id
    from infra.registry import build_registry, load_registry_config

    config = load_registry_config(stack, root)
    return run_under_mocks(PROJECT, stack, lambda: build_registry(config, subscription_id(), publisher_principal_id),
                           Path(root))


def _rules(props: dict[str, Any]) -> str:
    parts = []
    for r in props.get("securityRules") or []:
        src = r.get("sourceAddressPrefix") or ",".join(r.get("sourceAddressPrefixes") or [])
        parts.append(f"{r.get('access')} {src} -> {r.get('destinationPortRange')}")
    return "; ".join(parts) or "(none: Azure default deny)"


def _get(props: dict[str, Any], path: str, default: Any = None) -> Any:
    """props["a"]["b"]["c"] for path "a.b.c", or `default` when any step is missing."""
    value: Any = props
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            return default
    return value


def _pools(p: dict[str, Any]) -> str:
    return "; ".join(f"{x.get('name')}: {_fmt(x.get('count'))} x {x.get('vmSize')}"
                     + (f" taint {x['nodeTaints'][0]}" if x.get("nodeTaints") else "")
                     for x in p.get("agentPoolProfiles") or [])


SETTINGS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "azure-native:resources:ResourceGroup": lambda p: {"name": p.get("resourceGroupName"), "location": p.get("location")},
    "azure-native:network:NetworkSecurityGroup": lambda p: {"inbound": _rules(p)},
    "azure-native:network:VirtualNetwork": lambda p: {"address": ",".join(_get(p, "addressSpace.addressPrefixes", []))},
    "azure-native:network:Subnet": lambda p: {"prefix": p.get("addressPrefix")},
    "azure-native:network:PublicIPAddress": lambda p: {
        "sku": _get(p, "sku.name"), "allocation": p.get("publicIPAllocationMethod")},
    "azure-native:network:LoadBalancer": lambda p: {
        "sku": _get(p, "sku.name"),
        "probe": ", ".join(f"{x.get('protocol')}:{_fmt(x.get('port'))}{x.get('requestPath', '')}"
                           for x in p.get("probes") or [])},
    "azure-native:compute:VirtualMachine": lambda p: {
        "size": _get(p, "hardwareProfile.vmSize"),
        "image": f"{_get(p, 'storageProfile.imageReference.offer')}/{_get(p, 'storageProfile.imageReference.sku')}",
        "osDisk": f"{_fmt(_get(p, 'storageProfile.osDisk.diskSizeGB'))} GiB "
                  f"{_get(p, 'storageProfile.osDisk.managedDisk.storageAccountType')}",
        "dataDisks": ",".join(f"lun{_fmt(d.get('lun'))}" for d in _get(p, "storageProfile.dataDisks", [])),
        "encryptionAtHost": _get(p, "securityProfile.encryptionAtHost"),
        "passwordLogin": not _get(p, "osProfile.linuxConfiguration.disablePasswordAuthentication", False),
    },
    "azure-native:storage:StorageAccount": lambda p: {
        "tls": p.get("minimumTlsVersion"), "publicBlob": p.get("allowBlobPublicAccess"),
        "sharedKey": p.get("allowSharedKeyAccess"), "publicNetwork": p.get("publicNetworkAccess"),
        "firewall": _get(p, "networkRuleSet.defaultAction")},
    "azure-native:compute:Disk": lambda p: {
        "size": f"{_fmt(p.get('diskSizeGB'))} GiB {_get(p, 'sku.name')}", "network": p.get("networkAccessPolicy")},
    "azure-native:network:PrivateEndpoint": lambda p: {
        "groups": ",".join(g for c in p.get("privateLinkServiceConnections") or [] for g in c.get("groupIds") or [])},
    "azure-native:storage:BlobServiceProperties": lambda p: {
        "versioning": p.get("isVersioningEnabled"), "softDeleteDays": _fmt(_get(p, "deleteRetentionPolicy.days"))},
    "azure-native:storage:BlobContainerImmutabilityPolicy": lambda p: {
        "retentionDays": _fmt(p.get("immutabilityPeriodSinceCreationInDays"))},
    "azure-native:storage:BlobContainer": lambda p: {"container": p.get("containerName"), "publicAccess": p.get("publicAccess")},
    "azure-native:authorization:RoleAssignment": lambda p: {
        "role": ROLE_NAMES.get(role_guid(str(p.get("roleDefinitionId", ""))), p.get("roleDefinitionId")),
        "scope": str(p.get("scope", "")).rsplit("/blobServices/default/", 1)[-1]},
    "azure-native:containerservice:ManagedCluster": lambda p: {
        "pools": _pools(p), "workloadIdentity": _get(p, "securityProfile.workloadIdentity.enabled")},
    "kubernetes:apps/v1:Deployment": lambda p: {
        "replicas": _fmt(_get(p, "spec.replicas")),
        "image": ",".join(c.get("image", "") for c in _get(p, "spec.template.spec.containers", []))},
    "kubernetes:core/v1:Service": lambda p: {
        "type": _get(p, "spec.type"), "ports": ",".join(_fmt(x.get("port")) for x in _get(p, "spec.ports", []))},
}


def _fmt(value: Any) -> str:
    # The wire format has no integers: show 8080.0 as 8080.
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def rows(run: ProgramRun) -> list[ResourceRow]:
    """Custom resources only: components and provider instances are bookkeeping, not things in Azure."""
    table: list[ResourceRow] = []
    for r in run.resources:
        if not r.custom or r.type.startswith("pulumi:providers:"):
            continue
        extract = SETTINGS.get(r.type, lambda p: {"location": p["location"]} if "location" in p else {})
        settings = {k: _fmt(v) for k, v in extract(r.inputs).items() if v is not None}
        table.append(ResourceRow(r.urn, r.type, r.name, settings, r.inputs))
    # Registration order depends on thread timing; a stable order makes the table diffable.
    return sorted(table, key=lambda row: (row.type, row.name))


def policy_verdict(resources: Sequence[ResourceRow | RecordedResource], spec: DeploymentSpec | None = None) -> PolicyVerdict:
    """Run every policy rule over the resources (rows or recorded resources).

    `spec` is accepted for the callers' sake and unused: the rules read ports and tiers from the rendered
    resources, exactly as the enforced pack does under `pulumi preview --policy-pack`."""
    del spec
    return PolicyVerdict(tuple(evaluate((r.urn, r.type, r.inputs) for r in resources)))


def preview_stack(stack: str, root: Path | str = ".", options: InfraOptions | None = None) -> list[ResourceRow]:
    """The resources `pulumi up -s <stack>` would create, computed offline under the mock runtime."""
    from infra.registry import is_registry_stack

    if is_registry_stack(stack, root):
        return rows(run_registry(stack, root))
    return rows(run_program(load_spec(stack, root), options, root))
