"""The policy rules as plain functions: `(resource_type, props) -> [violation message, ...]`.

`props` are a resource's inputs as the Pulumi engine sees them (camelCase keys), which is what
pulumi-policy hands to a ResourceValidationPolicy and what the mock runtime records, so the same
function runs in `pulumi preview --policy-pack infra/policy`, in `exaone-lora infra preview` and in
the tests. A rule knows nothing about the stack file: the tier comes from the resource's own tags.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exaone_lora.tiers import TIER_DEFAULTS

Props = Mapping[str, Any]
Check = Callable[[str, Props], list[str]]

NSG = "azure-native:network:NetworkSecurityGroup"
SECURITY_RULE = "azure-native:network:SecurityRule"
STORAGE_ACCOUNT = "azure-native:storage:StorageAccount"
BLOB_CONTAINER = "azure-native:storage:BlobContainer"
VIRTUAL_MACHINE = "azure-native:compute:VirtualMachine"
MANAGED_CLUSTER = "azure-native:containerservice:ManagedCluster"
AGENT_POOL = "azure-native:containerservice:AgentPool"

# Sources that mean "anyone": Azure accepts all of these spellings in a security rule.
OPEN_SOURCES = frozenset({"*", "0.0.0.0/0", "0.0.0.0", "internet", "any", "::/0", "0.0.0.0/0.0.0.0"})
# SSH plus the API/gateway ports the project uses (public 8080, engine 8081, admin 8082).
DEFAULT_PROTECTED_PORTS: tuple[int, ...] = (22, 8080, 8081, 8082)
REQUIRED_TAGS: tuple[str, ...] = ("project", "stack", "tier")
# Resource types that carry Azure tags; sub-resources (containers, subnets, role assignments) have none.
TAGGED_TYPES = frozenset({
    "azure-native:resources:ResourceGroup",
    "azure-native:network:VirtualNetwork",
    NSG,
    "azure-native:network:PublicIPAddress",
    "azure-native:network:NetworkInterface",
    "azure-native:network:LoadBalancer",
    VIRTUAL_MACHINE,
    STORAGE_ACCOUNT,
    "azure-native:managedidentity:UserAssignedIdentity",
    MANAGED_CLUSTER,
    "azure-native:monitor:AzureMonitorWorkspace",
    "azure-native:monitor:DataCollectionEndpoint",
    "azure-native:monitor:DataCollectionRule",
})
ACCEPTED_TLS = frozenset({"TLS1_2", "TLS1_3"})


def _ports(spec: str) -> tuple[int, int] | None:
    """'22' -> (22, 22); '1000-2000' -> (1000, 2000); '*' -> everything."""
    spec = str(spec).strip()
    if spec in ("*", ""):
        return (0, 65535)
    low, _, high = spec.partition("-")
    try:
        return (int(low), int(high or low))
    except ValueError:
        return None


def _sources(rule: Props) -> list[str]:
    values = [rule.get("sourceAddressPrefix"), *(rule.get("sourceAddressPrefixes") or [])]
    return [str(v) for v in values if v is not None]


def _port_specs(rule: Props) -> list[str]:
    values = [rule.get("destinationPortRange"), *(rule.get("destinationPortRanges") or [])]
    return [str(v) for v in values if v is not None]


def open_rule_violations(rule: Props, protected_ports: Sequence[int] = DEFAULT_PROTECTED_PORTS) -> list[str]:
    """Why one security rule is unsafe: it allows inbound traffic from anyone to a protected port."""
    if str(rule.get("access", "")).lower() != "allow" or str(rule.get("direction", "")).lower() != "inbound":
        return []
    open_sources = [s for s in _sources(rule) if s.lower() in OPEN_SOURCES]
    if not open_sources:
        return []
    hit: list[int] = []
    for spec in _port_specs(rule) or ["*"]:
        bounds = _ports(spec)
        if bounds is None:
            continue
        hit += [p for p in protected_ports if bounds[0] <= p <= bounds[1] and p not in hit]
    name = rule.get("name", "<unnamed>")
    return [
        f"security rule '{name}' exposes port {port} to the Internet (source {open_sources[0]}); "
        "allow only the operator's or clients' CIDRs"
        for port in sorted(hit)
    ]


def check_no_open_ports(resource_type: str, props: Props,
                        protected_ports: Sequence[int] = DEFAULT_PROTECTED_PORTS) -> list[str]:
    """No NSG rule may allow 0.0.0.0/0, '*', 'Internet' or 'Any' to SSH or the API ports."""
    if resource_type == NSG:
        rules: Iterable[Props] = props.get("securityRules") or []
    elif resource_type == SECURITY_RULE:
        rules = [props]
    else:
        return []
    return [msg for rule in rules for msg in open_rule_violations(rule, protected_ports)]


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


def _is_gpu_size(size: str | None) -> bool:
    # Azure's N-series (NC, ND, NV) are the GPU families.
    return bool(size) and str(size).startswith("Standard_N")


def _gpu_pools(resource_type: str, props: Props) -> list[Props]:
    if resource_type == MANAGED_CLUSTER:
        return [p for p in props.get("agentPoolProfiles") or [] if _is_gpu_size(p.get("vmSize"))]
    if resource_type == AGENT_POOL and _is_gpu_size(props.get("vmSize")):
        return [props]
    return []


def check_encryption_at_host(resource_type: str, props: Props) -> list[str]:
    """GPU VMs and GPU node pools keep temp disk and caches encrypted on the host."""
    if resource_type == VIRTUAL_MACHINE:
        size = (props.get("hardwareProfile") or {}).get("vmSize")
        if _is_gpu_size(size) and (props.get("securityProfile") or {}).get("encryptionAtHost") is not True:
            return [f"GPU VM ({size}) has no encryption at host: set securityProfile.encryptionAtHost=true"]
        return []
    return [
        f"GPU node pool '{pool.get('name')}' ({pool.get('vmSize')}) has no encryption at host: set enableEncryptionAtHost=true"
        for pool in _gpu_pools(resource_type, props)
        if pool.get("enableEncryptionAtHost") is not True
    ]


def check_gpu_sku_for_tier(resource_type: str, props: Props) -> list[str]:
    """A GPU VM or pool must use a SKU its tier (from the 'tier' tag) allows."""
    if resource_type == VIRTUAL_MACHINE:
        sizes = [(props.get("hardwareProfile") or {}).get("vmSize")]
        sizes = [s for s in sizes if _is_gpu_size(s)]
    else:
        sizes = [p.get("vmSize") for p in _gpu_pools(resource_type, props)]
    if not sizes:
        return []
    tier = (props.get("tags") or {}).get("tier")
    if tier not in TIER_DEFAULTS:
        return [f"GPU resource has no valid 'tier' tag (got {tier!r}), so its SKU cannot be checked"]
    allowed = TIER_DEFAULTS[tier].allowed_skus  # type: ignore[index]
    return [f"GPU SKU {s} is not allowed for tier {tier} (allowed: {', '.join(allowed)})" for s in sizes if s not in allowed]


def check_required_tags(resource_type: str, props: Props) -> list[str]:
    """Every taggable resource carries project, stack and tier, so cost reports and cleanup can find it."""
    if resource_type not in TAGGED_TYPES:
        return []
    tags = props.get("tags") or {}
    missing = [t for t in REQUIRED_TAGS if not tags.get(t)]
    return [f"missing required tags: {', '.join(missing)}"] if missing else []


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    check: Check


RULES: tuple[Rule, ...] = (
    Rule("no-open-ssh-or-api", "No NSG rule allows 0.0.0.0/0, '*', 'Internet' or 'Any' to port 22 or the API ports.",
         check_no_open_ports),
    Rule("no-public-blob-access", "Storage accounts and containers allow no anonymous blob access.",
         check_no_public_blob_access),
    Rule("storage-tls-1-2", "Storage accounts require TLS 1.2 or newer and HTTPS.", check_tls),
    Rule("gpu-encryption-at-host", "GPU VMs and GPU node pools use encryption at host.", check_encryption_at_host),
    Rule("gpu-sku-allowed-for-tier", "GPU VMs and pools use a SKU the tier allows.", check_gpu_sku_for_tier),
    Rule("required-tags", "Taggable resources carry the project, stack and tier tags.", check_required_tags),
)


@dataclass(frozen=True)
class Violation:
    rule: str
    urn: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.urn}: {self.message}"


def evaluate(resources: Iterable[tuple[str, str, Props]], rules: Sequence[Rule] = RULES,
             protected_ports: Sequence[int] = DEFAULT_PROTECTED_PORTS) -> list[Violation]:
    """Run every rule on (urn, type, props) triples; the list is empty when all pass."""
    found: list[Violation] = []
    for urn, resource_type, props in resources:
        for rule in rules:
            if rule.check is check_no_open_ports:
                messages = check_no_open_ports(resource_type, props, protected_ports)
            else:
                messages = rule.check(resource_type, props)
            found += [Violation(rule.name, urn, m) for m in messages]
    return found
