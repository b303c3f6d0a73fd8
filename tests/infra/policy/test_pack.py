"""The policy pack through its real entry point (`infra/policy/__main__.py`, served over the Analyzer gRPC protocol
exactly as `pulumi preview --policy-pack infra/policy` runs it), against the rendered resources of every stack and
hostile variants of them: for each rule, one case that violates it and one that passes."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from exaone_lora.spec import DeploymentSpec
from infra.mocks import ProgramRun
from infra.policy.rules import RULES
from infra.preview import run_registry
from tests.infra.conftest import Runs, open_api, variant
from tests.infra.policy.policy_client import Diagnostic, PolicyPackServer
from tests.support.processes import REPO

Resource = tuple[str, str, dict[str, Any]]

NSG = "azure-native:network:NetworkSecurityGroup"
ACCOUNT = "azure-native:storage:StorageAccount"
CONTAINER = "azure-native:storage:BlobContainer"
VM = "azure-native:compute:VirtualMachine"
DISK = "azure-native:compute:Disk"
CLUSTER = "azure-native:containerservice:ManagedCluster"
ROLE = "azure-native:authorization:RoleAssignment"
HALVES = ["0.0.0.0/1", "128.0.0.0/1"]


@pytest.fixture(scope="module")
def pack() -> Iterator[PolicyPackServer]:
    server = PolicyPackServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def registry_run() -> ProgramRun:
    return run_registry("registry", REPO, publisher_principal_id="11111111-2222-3333-4444-555555555555")


def resources(run: ProgramRun) -> list[Resource]:
    return [(r.urn, r.type, copy.deepcopy(r.inputs)) for r in run.resources
            if r.custom and not r.type.startswith("pulumi:providers:")]


def one(run: ProgramRun, resource_type: str) -> Resource:
    found = [r for r in resources(run) if r[1] == resource_type]
    assert found, f"no {resource_type} rendered"
    return found[0]


def changed(resource: Resource, **props: Any) -> Resource:
    urn, typ, inputs = resource
    return urn, typ, {**inputs, **props}


def policies_hit(diagnostics: list[Diagnostic]) -> set[str]:
    return {d.policy for d in diagnostics}


def test_the_pack_registers_every_rule_as_mandatory(pack: PolicyPackServer) -> None:
    assert pack.policy_names() == [r.name for r in RULES]


@pytest.mark.parametrize("stack", ["dev", "poc", "pilot", "prod"])
def test_every_shipped_stack_passes_the_enforced_pack(pack: PolicyPackServer, runs: Runs, stack: str) -> None:
    found = pack.analyze_all(resources(runs.stack(stack)))
    assert found == [], "\n".join(d.message for d in found)


def test_the_registry_stack_passes_the_enforced_pack(pack: PolicyPackServer, registry_run: ProgramRun) -> None:
    found = pack.analyze_all(resources(registry_run))
    assert found == [], "\n".join(d.message for d in found)


def test_prod_large_passes_the_enforced_pack(pack: PolicyPackServer, runs: Runs, large_spec: DeploymentSpec) -> None:
    found = pack.analyze_all(resources(runs.spec("large", large_spec)))
    assert found == [], "\n".join(d.message for d in found)


# ---- no-open-ssh-or-api: address coverage, every rendered port ------------------------------------------------

@pytest.mark.parametrize(("key", "cidrs", "overrides", "port"), [
    ("halves", HALVES, {}, "port 8080"),
    ("custom-port", HALVES, {"port": 9443}, "port 9443"),
    ("ipv6-halves", ["::/1", "8000::/1"], {}, "port 8080"),
    ("many-slash-8", [f"{n}.0.0.0/8" for n in range(1, 5)], {}, "port 8080"),
])
def test_open_api_by_coverage_is_refused(pack: PolicyPackServer, runs: Runs, key: str, cidrs: list[str],
                                         overrides: dict[str, Any], port: str) -> None:
    # None is a /0; the spec loader refuses them too, so they are set past it: the pack must judge the union.
    run = runs.spec(f"pilot-{key}", open_api("pilot", cidrs, **overrides))
    found = [d for d in pack.analyze(*one(run, NSG)) if d.policy == "no-open-ssh-or-api"]
    assert found and found[0].mandatory and port in found[0].message, found


def test_client_networks_on_a_custom_port_pass(pack: PolicyPackServer, runs: Runs) -> None:
    run = runs.spec("pilot-custom-ok", variant("pilot", port=9443, api={"exposure": "public",
                                                                        "allowedCidrs": ["198.51.100.0/24", "10.0.0.0/8"]}))
    assert pack.analyze(*one(run, NSG)) == []


def test_ssh_split_over_rules_is_refused(pack: PolicyPackServer, runs: Runs) -> None:
    urn, typ, nsg = one(runs.stack("poc"), NSG)
    ssh = nsg["securityRules"][0]
    split = [{**ssh, "name": f"ssh-{i}", "priority": 100 + i, "sourceAddressPrefix": half} for i, half in enumerate(HALVES)]
    found = pack.analyze(urn, typ, {**nsg, "securityRules": split})
    assert policies_hit(found) == {"no-open-ssh-or-api"} and "port 22" in found[0].message


@pytest.mark.parametrize("tag", ["*", "internet", "ANY"])
def test_any_service_tag_is_refused(pack: PolicyPackServer, runs: Runs, tag: str) -> None:
    urn, typ, nsg = one(runs.stack("pilot"), NSG)
    rules = [{**r, "sourceAddressPrefix": tag} if r["destinationPortRange"] == "8080" else r for r in nsg["securityRules"]]
    assert policies_hit(pack.analyze(urn, typ, {**nsg, "securityRules": rules})) == {"no-open-ssh-or-api"}


# ---- storage --------------------------------------------------------------------------------------------------

def test_public_blob_access(pack: PolicyPackServer, registry_run: ProgramRun) -> None:
    assert policies_hit(pack.analyze(*changed(one(registry_run, ACCOUNT), allowBlobPublicAccess=True))) == {
        "no-public-blob-access"}
    assert policies_hit(pack.analyze(*changed(one(registry_run, CONTAINER), publicAccess="Blob"))) == {
        "no-public-blob-access"}
    assert pack.analyze(*one(registry_run, CONTAINER)) == []


def test_storage_tls(pack: PolicyPackServer, registry_run: ProgramRun) -> None:
    assert policies_hit(pack.analyze(*changed(one(registry_run, ACCOUNT), minimumTlsVersion="TLS1_0"))) == {
        "storage-tls-1-2"}


@pytest.mark.parametrize("value", [True, None])
def test_shared_key_access_must_be_off(pack: PolicyPackServer, registry_run: ProgramRun, value: bool | None) -> None:
    urn, typ, account = one(registry_run, ACCOUNT)
    account = {k: v for k, v in account.items() if k != "allowSharedKeyAccess"}
    if value is not None:
        account["allowSharedKeyAccess"] = value
    assert policies_hit(pack.analyze(urn, typ, account)) == {"storage-shared-key-off"}


def _open_account(resource: Resource, tier: str) -> Resource:
    urn, typ, account = resource
    return urn, typ, {**account, "publicNetworkAccess": "Enabled", "networkRuleSet": {"defaultAction": "Allow"},
                      "tags": {**account["tags"], "tier": tier}}


@pytest.mark.parametrize("tier", ["registry", "pilot", "prod-small", "prod-large", "PILOT"])
def test_storage_open_to_any_network_is_refused_above_poc(pack: PolicyPackServer, registry_run: ProgramRun,
                                                           tier: str) -> None:
    assert policies_hit(pack.analyze(*_open_account(one(registry_run, ACCOUNT), tier))) == {"storage-private-network"}


def test_poc_storage_may_stay_on_public_networks_and_deny_by_default_passes(
        pack: PolicyPackServer, registry_run: ProgramRun) -> None:
    assert pack.analyze(*_open_account(one(registry_run, ACCOUNT), "poc")) == []
    urn, typ, account = one(registry_run, ACCOUNT)
    firewall = {"defaultAction": "Deny", "bypass": "None", "ipRules": [{"iPAddressOrRange": "198.51.100.7", "action": "Allow"}]}
    assert pack.analyze(urn, typ, {**account, "publicNetworkAccess": "Enabled", "networkRuleSet": firewall}) == []


def test_storage_firewall_split_wide_open_is_refused(pack: PolicyPackServer, registry_run: ProgramRun) -> None:
    urn, typ, account = one(registry_run, ACCOUNT)
    firewall = {"defaultAction": "Deny", "ipRules": [{"iPAddressOrRange": h, "action": "Allow"} for h in HALVES]}
    found = pack.analyze(urn, typ, {**account, "publicNetworkAccess": "Enabled", "networkRuleSet": firewall})
    assert policies_hit(found) == {"storage-private-network"} and "whole IPv4" in found[0].message


# ---- GPU VMs ----------------------------------------------------------------------------------------------------

def test_gpu_sku_check_ignores_case(pack: PolicyPackServer, runs: Runs) -> None:
    urn, typ, vm = one(runs.stack("poc"), VM)
    lower_prod = {**vm, "hardwareProfile": {"vmSize": "standard_nc80adis_h100_v5"}}
    assert policies_hit(pack.analyze(urn, typ, lower_prod)) == {"gpu-sku-allowed-for-tier"}
    lower_poc = {**vm, "hardwareProfile": {"vmSize": "standard_nc40ads_h100_v5"}}
    assert pack.analyze(urn, typ, lower_poc) == []


def test_gpu_encryption_at_host_with_a_lower_case_sku(pack: PolicyPackServer, runs: Runs) -> None:
    urn, typ, vm = one(runs.stack("poc"), VM)
    hostile = {**vm, "hardwareProfile": {"vmSize": "STANDARD_NC40ADS_H100_V5"}, "securityProfile": {}}
    assert policies_hit(pack.analyze(urn, typ, hostile)) == {"gpu-encryption-at-host"}


def test_required_tags(pack: PolicyPackServer, runs: Runs) -> None:
    urn, typ, disk = one(runs.stack("prod"), DISK)
    assert pack.analyze(urn, typ, disk) == []
    assert policies_hit(pack.analyze(urn, typ, {**disk, "tags": {"project": "exaone-lora"}})) == {"required-tags"}


# ---- AKS ----------------------------------------------------------------------------------------------------------

HARDENED_AKS = {
    "disableLocalAccounts": True,
    "enableRBAC": True,
    "aadProfile": {"managed": True, "enableAzureRBAC": True},
}


def _cluster(runs: Runs, aks_spec: DeploymentSpec, **props: Any) -> Resource:
    urn, typ, cluster = one(runs.spec("aks", aks_spec), CLUSTER)
    cluster = {**cluster, **HARDENED_AKS,
               "networkProfile": {**cluster.get("networkProfile", {}), "networkPolicy": "azure"}, **props}
    return urn, typ, cluster


def test_a_hardened_cluster_passes(pack: PolicyPackServer, runs: Runs, aks_spec: DeploymentSpec) -> None:
    assert pack.analyze(*_cluster(runs, aks_spec)) == []
    private = _cluster(runs, aks_spec, apiServerAccessProfile={"enablePrivateCluster": True})
    assert pack.analyze(*private) == []


AKS_HOSTILE: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "aks-local-accounts-off": lambda c: {**c, "disableLocalAccounts": False},
    "aks-entra-rbac": lambda c: {k: v for k, v in c.items() if k != "aadProfile"},
    "aks-network-policy": lambda c: {**c, "networkProfile": {**c["networkProfile"], "networkPolicy": "none"}},
    "aks-api-server-restricted": lambda c: {k: v for k, v in c.items() if k != "apiServerAccessProfile"},
}


@pytest.mark.parametrize("rule", sorted(AKS_HOSTILE))
def test_each_aks_rule_refuses_its_hostile_variant(pack: PolicyPackServer, runs: Runs, aks_spec: DeploymentSpec,
                                                   rule: str) -> None:
    urn, typ, cluster = _cluster(runs, aks_spec)
    assert policies_hit(pack.analyze(urn, typ, AKS_HOSTILE[rule](cluster))) == {rule}


def test_aks_api_server_open_by_coverage_is_refused(pack: PolicyPackServer, runs: Runs, aks_spec: DeploymentSpec) -> None:
    hostile = _cluster(runs, aks_spec, apiServerAccessProfile={"authorizedIPRanges": HALVES})
    assert policies_hit(pack.analyze(*hostile)) == {"aks-api-server-restricted"}


def test_the_rendered_aks_cluster_today(pack: PolicyPackServer, runs: Runs, aks_spec: DeploymentSpec) -> None:
    """What infra/aks.py renders passes every AKS rule: no local accounts, Entra ID RBAC, network policy, and the
    API server restricted to the operator."""
    assert policies_hit(pack.analyze(*one(runs.spec("aks", aks_spec), CLUSTER))) == set()


# ---- role assignments ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scope", ["/subscriptions/00000000-0000-0000-0000-00000000c0de",
                                   "/subscriptions/00000000-0000-0000-0000-00000000c0de/resourceGroups/rg-exaone-lora-registry",
                                   "/SUBSCRIPTIONS/x/RESOURCEGROUPS/y/", "/",
                                   "/providers/Microsoft.Management/managementGroups/corp"])
def test_data_role_at_a_broad_scope_is_refused(pack: PolicyPackServer, runs: Runs, scope: str) -> None:
    urn, typ, role = one(runs.stack("pilot"), ROLE)
    assert pack.analyze(urn, typ, role) == []  # as rendered: the registry's adapters container
    found = pack.analyze(urn, typ, {**role, "scope": scope})
    assert policies_hit(found) == {"data-role-scope"} and "Storage Blob Data Reader" in found[0].message


def test_offline_preview_and_enforced_pack_agree(pack: PolicyPackServer, runs: Runs, registry_run: ProgramRun,
                                                 aks_spec: DeploymentSpec) -> None:
    """`exaone-lora infra preview` runs the same rules in-process: same verdicts, resource by resource."""
    from infra.policy.rules import evaluate

    urn, typ, cluster = _cluster(runs, aks_spec)
    hostile = [
        *resources(runs.spec("pilot-halves", open_api("pilot", HALVES))),
        *resources(runs.spec("aks", aks_spec)),
        (urn, typ, AKS_HOSTILE["aks-local-accounts-off"](cluster)),
        _open_account(one(registry_run, ACCOUNT), "pilot"),
        changed(one(runs.stack("poc"), VM), hardwareProfile={"vmSize": "standard_nc80adis_h100_v5"}),
    ]
    enforced = {(d.urn, d.policy, d.message.split("\n", 1)[1]) for d in pack.analyze_all(hostile)}
    offline = {(v.urn, v.rule, v.message) for v in evaluate(hostile)}
    assert enforced == offline and len(offline) >= 4
