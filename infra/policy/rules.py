"""The policy rules as plain functions: `(resource_type, props) -> [violation message, ...]`.

`props` are a resource's inputs as the Pulumi engine sees them (camelCase keys), which is what
pulumi-policy hands to a ResourceValidationPolicy (as read-only Mapping/Sequence proxies) and what the mock
runtime records, so the same function runs in `pulumi preview --policy-pack infra/policy`, in
`exaone-lora infra preview` and in the tests. A rule knows nothing about the stack file: the tier comes from
the resource's own tags, the ports from the rendered rules themselves.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exaone_lora.cidrs import too_broad
from exaone_lora.tiers import TIER_DEFAULTS
from infra.roles import DATA_ROLES, ROLE_NAMES, role_guid

Props = Mapping[str, Any]
Check = Callable[[str, Props], list[str]]

NSG = "azure-native:network:NetworkSecurityGroup"
SECURITY_RULE = "azure-native:network:SecurityRule"
STORAGE_ACCOUNT = "azure-native:storage:StorageAccount"
BLOB_CONTAINER = "azure-native:storage:BlobContainer"
VIRTUAL_MACHINE = "azure-native:compute:VirtualMachine"
MANAGED_CLUSTER = "azure-native:containerservice:ManagedCluster"
AGENT_POOL = "azure-native:containerservice:AgentPool"
ROLE_ASSIGNMENT = "azure-native:authorization:RoleAssignment"

# The broadest source a rule may admit, as (IPv4, IPv6) prefix lengths of one network of the same size.
# SSH is for the operator only (the spec's own bound); the API may face client networks, more widely on
# the tiers that serve many users. Unknown tiers get the strictest bound.
BROADEST_SSH: tuple[int, int] = (16, 48)
BROADEST_API: dict[str, tuple[int, int]] = {"poc": (16, 48), "pilot": (8, 32), "prod-small": (8, 32),
                                            "prod-large": (8, 32)}
# Tiers whose storage may accept traffic from public networks (still with Entra ID only, no shared key).
PUBLIC_STORAGE_TIERS = frozenset({"poc"})
AKS_NETWORK_POLICIES = frozenset({"azure", "calico", "cilium"})
REQUIRED_TAGS: tuple[str, ...] = ("project", "stack", "tier")
# Resource types that carry Azure tags; sub-resources (containers, subnets, role assignments) have none.
TAGGED_TYPES = frozenset({
    "azure-native:resources:ResourceGroup",
    "azure-native:network:VirtualNetwork",
    NSG,
    "azure-native:network:PublicIPAddress",
    "azure-native:network:NetworkInterface",
    "azure-native:network:LoadBalancer",
    "azure-native:network:PrivateEndpoint",
    "azure-native:privatedns:PrivateZone",
    VIRTUAL_MACHINE,
    "azure-native:compute:Disk",
    STORAGE_ACCOUNT,
    "azure-native:managedidentity:UserAssignedIdentity",
    MANAGED_CLUSTER,
    "azure-native:monitor:AzureMonitorWorkspace",
    "azure-native:monitor:DataCollectionEndpoint",
    "azure-native:monitor:DataCollectionRule",
})
ACCEPTED_TLS = frozenset({"TLS1_2", "TLS1_3"})
# Scopes too broad for a data role: the whole tenant, a management group, a subscription, a resource group.
BROAD_SCOPE = re.compile(
    r"^/$|^/providers/microsoft\.management/managementgroups/[^/]+/?$|^/subscriptions/[^/]+/?$"
    r"|^/subscriptions/[^/]+/resourcegroups/[^/]+/?$", re.IGNORECASE)


def _map(value: Any) -> Props:
    return value if isinstance(value, Mapping) else {}


def _seq(value: Any) -> list[Any]:
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []


def _tier(props: Props) -> str | None:
    tier = _map(props.get("tags")).get("tier")
    return str(tier) if tier is not None else None


def _ports(spec: str) -> tuple[int, int] | None:
    """'22' -> (22, 22); '1000-2000' -> (1000, 2000); '*' -> everything; None when unreadable."""
    spec = str(spec).strip()
    if spec in ("*", ""):
        return (0, 65535)
    low, _, high = spec.partition("-")
    try:
        return (int(float(low)), int(float(high or low)))
    except ValueError:
        return None


def _sources(rule: Props) -> list[str]:
    values = [rule.get("sourceAddressPrefix"), *_seq(rule.get("sourceAddressPrefixes"))]
    return [str(v) for v in values if v is not None]


def _port_specs(rule: Props) -> list[str]:
    values = [rule.get("destinationPortRange"), *_seq(rule.get("destinationPortRanges"))]
    return [str(v) for v in values if v is not None] or ["*"]


def _allows_inbound(rule: Props) -> bool:
    return str(rule.get("access", "")).lower() == "allow" and str(rule.get("direction", "")).lower() == "inbound"


def _segments(bounds: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Split port ranges at every range edge, so each piece is covered by the same set of rules."""
    edges = sorted({b for low, high in bounds for b in (low, high + 1)})
    return [(a, b - 1) for a, b in itertools.pairwise(edges)]


def _label(low: int, high: int) -> str:
    return f"port {low}" if low == high else f"ports {low}-{high}"


def open_port_violations(rules: Iterable[Props], tier: str | None = None) -> list[str]:
    """Why a set of inbound rules (one NSG) admits too much of the Internet to some port.

    Every port the rules open is judged, not a fixed list: the stack's own ports are whatever it renders. The
    sources of all allow rules that reach the same port are united first, so splitting 0.0.0.0/0 into halves, or
    one rule into many, changes nothing. A port range containing 22 is judged by the SSH bound.
    """
    allows = [r for r in rules if _allows_inbound(r)]
    problems: list[str] = []
    ranged: list[tuple[Props, list[tuple[int, int]]]] = []
    for rule in allows:
        bounds = []
        for spec in _port_specs(rule):
            parsed = _ports(spec)
            if parsed is None:
                problems.append(f"security rule '{rule.get('name', '<unnamed>')}' has an unreadable port '{spec}'")
                parsed = (0, 65535)  # fail closed: judge it as every port
            bounds.append(parsed)
        ranged.append((rule, bounds))
    api_bound = BROADEST_API.get(tier or "", BROADEST_SSH)
    for low, high in _segments(b for _, bs in ranged for b in bs):
        reaching = [rule for rule, bs in ranged if any(lo <= low and high <= hi for lo, hi in bs)]
        if not reaching:
            continue
        bound = BROADEST_SSH if low <= 22 <= high else api_bound
        why = too_broad([s for rule in reaching for s in _sources(rule)], bound)
        if why:
            names = ", ".join(str(r.get("name", "<unnamed>")) for r in reaching)
            problems.append(f"{_label(low, high)} is open to the Internet through rule(s) {names}: {why}; "
                            "allow only the operator's or clients' CIDRs")
    return problems


def open_rule_violations(rule: Props, tier: str | None = None) -> list[str]:
    """One security rule judged on its own (a standalone SecurityRule resource)."""
    return open_port_violations([rule], tier)


def check_no_open_ports(resource_type: str, props: Props) -> list[str]:
    """No inbound allow rules may admit the Internet (by address coverage) to any port they open."""
    if resource_type == NSG:
        return open_port_violations([_map(r) for r in _seq(props.get("securityRules"))], _tier(props))
    if resource_type == SECURITY_RULE:
        # A standalone rule carries no tags: the strictest bound applies.
        return open_rule_violations(props)
    return []


def check_no_public_blob_access(resource_type: str, props: Props) -> list[str]:
    """Storage accounts must turn anonymous blob access off explicitly; containers must be private."""
    if resource_type == STORAGE_ACCOUNT and props.get("allowBlobPublicAccess") is not False:
        return ["storage account allows public (anonymous) blob access: set allowBlobPublicAccess=false"]
    if resource_type == BLOB_CONTAINER and str(props.get("publicAccess") or "None") != "None":
        return [f"blob container has public access '{props.get('publicAccess')}': it must be 'None'"]
    return []


def check_tls(resource_type: str, props: Props) -> list[str]:
    """Storage accounts must refuse TLS below 1.2 and plain HTTP."""
    if resource_type != STORAGE_ACCOUNT:
        return []
    problems = []
    if props.get("minimumTlsVersion") not in ACCEPTED_TLS:
        problems.append(f"storage account accepts TLS below 1.2 (minimumTlsVersion={props.get('minimumTlsVersion')!r})")
    if props.get("enableHttpsTrafficOnly") is False:
        problems.append("storage account accepts plain HTTP (enableHttpsTrafficOnly=false)")
    return problems


def check_shared_key_off(resource_type: str, props: Props) -> list[str]:
    """Storage accounts accept Entra ID tokens only: shared keys (and SAS signed with them) are off explicitly."""
    if resource_type == STORAGE_ACCOUNT and props.get("allowSharedKeyAccess") is not False:
        return [f"storage account allows shared-key access (allowSharedKeyAccess={props.get('allowSharedKeyAccess')!r}): "
                "set it to false; readers use their managed identity"]
    return []


def check_storage_network(resource_type: str, props: Props) -> list[str]:
    """Above poc, storage refuses public networks: public access disabled, or a firewall that denies by default.

    The firewall's IP rules (the operator's publishing path) are judged by coverage like NSG sources.
    """
    if resource_type != STORAGE_ACCOUNT:
        return []
    rule_set = _map(props.get("networkRuleSet"))
    problems = []
    ips = [str(_map(r).get("iPAddressOrRange") or _map(r).get("ipAddressOrRange") or "") for r in _seq(rule_set.get("ipRules"))]
    if ips and (why := too_broad(ips, BROADEST_SSH)):
        problems.append(f"storage firewall ipRules are too broad: {why}")
    tier = _tier(props)
    if tier in PUBLIC_STORAGE_TIERS:
        return problems
    closed = str(props.get("publicNetworkAccess") or "") == "Disabled"
    denies = str(rule_set.get("defaultAction") or "") == "Deny"
    if not (closed or denies):
        problems.append(f"storage account of tier {tier!r} accepts traffic from any network: set "
                        "publicNetworkAccess=Disabled or networkRuleSet.defaultAction=Deny and reach it through a "
                        "private endpoint")
    return problems


def _is_gpu_size(size: Any) -> bool:
    # Azure's N-series (NC, ND, NV) are the GPU families; Azure reads sizes case-insensitively, so must we.
    return isinstance(size, str) and size.lower().startswith("standard_n")


def _gpu_pools(resource_type: str, props: Props) -> list[Props]:
    if resource_type == MANAGED_CLUSTER:
        return [_map(p) for p in _seq(props.get("agentPoolProfiles")) if _is_gpu_size(_map(p).get("vmSize"))]
    if resource_type == AGENT_POOL and _is_gpu_size(props.get("vmSize")):
        return [props]
    return []


def check_encryption_at_host(resource_type: str, props: Props) -> list[str]:
    """GPU VMs and GPU node pools keep temp disk and caches encrypted on the host."""
    if resource_type == VIRTUAL_MACHINE:
        size = _map(props.get("hardwareProfile")).get("vmSize")
        if _is_gpu_size(size) and _map(props.get("securityProfile")).get("encryptionAtHost") is not True:
            return [f"GPU VM ({size}) has no encryption at host: set securityProfile.encryptionAtHost=true"]
        return []
    return [
        f"GPU node pool '{pool.get('name')}' ({pool.get('vmSize')}) has no encryption at host: set enableEncryptionAtHost=true"
        for pool in _gpu_pools(resource_type, props)
        if pool.get("enableEncryptionAtHost") is not True
    ]


def check_gpu_sku_for_tier(resource_type: str, props: Props) -> list[str]:
    """A GPU VM or pool must use a SKU its tier (from the 'tier' tag) allows; sizes compare case-insensitively."""
    if resource_type == VIRTUAL_MACHINE:
        size = _map(props.get("hardwareProfile")).get("vmSize")
        sizes = [size] if _is_gpu_size(size) else []
    else:
        sizes = [p.get("vmSize") for p in _gpu_pools(resource_type, props)]
    if not sizes:
        return []
    tier = _tier(props)
    if tier not in TIER_DEFAULTS:
        return [f"GPU resource has no valid 'tier' tag (got {tier!r}), so its SKU cannot be checked"]
    allowed = TIER_DEFAULTS[tier].allowed_skus  # type: ignore[index]
    folded = {a.lower() for a in allowed}
    return [f"GPU SKU {s} is not allowed for tier {tier} (allowed: {', '.join(allowed)})"
            for s in sizes if str(s).lower() not in folded]


def check_required_tags(resource_type: str, props: Props) -> list[str]:
    """Every taggable resource carries project, stack and tier, so cost reports and cleanup can find it."""
    if resource_type not in TAGGED_TYPES:
        return []
    tags = _map(props.get("tags"))
    missing = [t for t in REQUIRED_TAGS if not tags.get(t)]
    return [f"missing required tags: {', '.join(missing)}"] if missing else []


def check_aks_local_accounts(resource_type: str, props: Props) -> list[str]:
    """AKS clusters have no local (certificate) admin account: every kubectl call is an Entra ID identity."""
    if resource_type == MANAGED_CLUSTER and props.get("disableLocalAccounts") is not True:
        return ["AKS cluster keeps local accounts: set disableLocalAccounts=true (Entra ID sign-in only)"]
    return []


def check_aks_entra_rbac(resource_type: str, props: Props) -> list[str]:
    """AKS clusters use Kubernetes RBAC with Entra ID integration and Azure RBAC for authorization."""
    if resource_type != MANAGED_CLUSTER:
        return []
    aad = _map(props.get("aadProfile"))
    problems = []
    if props.get("enableRBAC") is False:
        problems.append("AKS cluster has Kubernetes RBAC off (enableRBAC=false)")
    if aad.get("managed") is not True:
        problems.append("AKS cluster has no managed Entra ID integration: set aadProfile.managed=true")
    if aad.get("enableAzureRBAC") is not True:
        problems.append("AKS cluster does not authorize with Azure RBAC: set aadProfile.enableAzureRBAC=true")
    return problems


def check_aks_network_policy(resource_type: str, props: Props) -> list[str]:
    """AKS clusters enforce NetworkPolicy, so the admin and metrics ports stay inside their namespace."""
    if resource_type != MANAGED_CLUSTER:
        return []
    policy = _map(props.get("networkProfile")).get("networkPolicy")
    if str(policy or "").lower() not in AKS_NETWORK_POLICIES:
        return [f"AKS cluster enforces no network policy (networkProfile.networkPolicy={policy!r}): "
                f"use one of {', '.join(sorted(AKS_NETWORK_POLICIES))}"]
    return []


def check_aks_api_server(resource_type: str, props: Props) -> list[str]:
    """The AKS API server is private, or public only to authorized IP ranges no broader than the SSH bound."""
    if resource_type != MANAGED_CLUSTER:
        return []
    access = _map(props.get("apiServerAccessProfile"))
    if access.get("enablePrivateCluster") is True:
        return []
    ranges = [str(r) for r in _seq(access.get("authorizedIPRanges"))]
    if not ranges:
        return ["AKS API server is reachable from any address: set apiServerAccessProfile.authorizedIPRanges "
                "(the operator's CIDR) or enablePrivateCluster=true"]
    if why := too_broad(ranges, BROADEST_SSH):
        return [f"AKS API server authorizedIPRanges are too broad: {why}"]
    return []


def check_data_role_scope(resource_type: str, props: Props) -> list[str]:
    """A data role (Storage Blob Data *) is granted on the container or account, never a resource group or wider."""
    if resource_type != ROLE_ASSIGNMENT:
        return []
    guid = role_guid(str(props.get("roleDefinitionId") or ""))
    scope = props.get("scope")
    if guid not in DATA_ROLES or not isinstance(scope, str):
        return []
    if BROAD_SCOPE.match(scope.strip()):
        return [f"{ROLE_NAMES[guid]} is granted at scope {scope}: scope it to the container (or account) it reads"]
    return []


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    check: Check


RULES: tuple[Rule, ...] = (
    Rule("no-open-ssh-or-api", "No inbound rule admits the Internet (judged by address coverage) to any port.",
         check_no_open_ports),
    Rule("no-public-blob-access", "Storage accounts and containers allow no anonymous blob access.",
         check_no_public_blob_access),
    Rule("storage-tls-1-2", "Storage accounts require TLS 1.2 or newer and HTTPS.", check_tls),
    Rule("storage-shared-key-off", "Storage accounts accept Entra ID only (allowSharedKeyAccess=false).",
         check_shared_key_off),
    Rule("storage-private-network", "Storage above the poc tier refuses public networks (private endpoint only).",
         check_storage_network),
    Rule("gpu-encryption-at-host", "GPU VMs and GPU node pools use encryption at host.", check_encryption_at_host),
    Rule("gpu-sku-allowed-for-tier", "GPU VMs and pools use a SKU the tier allows.", check_gpu_sku_for_tier),
    Rule("required-tags", "Taggable resources carry the project, stack and tier tags.", check_required_tags),
    Rule("aks-local-accounts-off", "AKS clusters have local accounts disabled.", check_aks_local_accounts),
    Rule("aks-entra-rbac", "AKS clusters use Entra ID integration with Azure RBAC.", check_aks_entra_rbac),
    Rule("aks-network-policy", "AKS clusters enforce a network policy engine.", check_aks_network_policy),
    Rule("aks-api-server-restricted", "The AKS API server is private or limited to authorized IP ranges.",
         check_aks_api_server),
    Rule("data-role-scope", "Data roles are scoped to a container or account, not a resource group or wider.",
         check_data_role_scope),
)


@dataclass(frozen=True)
class Violation:
    rule: str
    urn: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.urn}: {self.message}"


def evaluate(resources: Iterable[tuple[str, str, Props]], rules: Sequence[Rule] = RULES) -> list[Violation]:
    """Run every rule on (urn, type, props) triples; the list is empty when all pass."""
    return [Violation(rule.name, urn, message)
            for urn, resource_type, props in resources
            for rule in rules
            for message in rule.check(resource_type, props)]
