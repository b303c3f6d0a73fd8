"""Each policy rule called directly (fast, many generated inputs); tests/infra/policy/test_pack.py drives the same
rules through the pack's real entry point."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exaone_lora.cidrs import too_broad
from infra.policy import rules

TAGS = {"project": "exaone-lora", "stack": "pilot", "tier": "pilot"}


def rule(sources: list[str], port: str = "22", access: str = "Allow", name: str = "r") -> dict[str, Any]:
    return {"name": name, "access": access, "direction": "Inbound", "protocol": "Tcp",
            "sourceAddressPrefixes": sources, "destinationPortRange": port}


def nsg(*security_rules: dict[str, Any], tier: str = "pilot") -> dict[str, Any]:
    return {"tags": {**TAGS, "tier": tier}, "securityRules": list(security_rules)}


@pytest.mark.parametrize("source", ["0.0.0.0/0", "*", "Internet", "internet", "Any", "::/0", "0.0.0.0",
                                    "0.0.0.0/0.0.0.0", "AzureCloud"])
def test_open_ssh_is_a_violation(source: str) -> None:
    found = rules.check_no_open_ports(rules.NSG, nsg(rule([source])))
    assert len(found) == 1 and found[0].startswith("port 22 is open to the Internet through rule(s) r: ")


@pytest.mark.parametrize("safe", [
    rule(["203.0.113.7/32"]),                         # the operator only
    rule(["0.0.0.0/0"], access="Deny"),               # deny rules are fine
    {**rule(["Internet"]), "direction": "Outbound"},
    rule(["VirtualNetwork", "AzureLoadBalancer"]),   # VNet-only service tags
    rule(["10.0.0.0/8", "192.168.0.0/16"], port="8080"),  # private space is not the Internet
])
def test_safe_rules_pass(safe: dict[str, Any]) -> None:
    assert rules.check_no_open_ports(rules.NSG, nsg(safe)) == []


def test_every_rendered_port_is_judged_not_a_fixed_list() -> None:
    found = rules.check_no_open_ports(rules.NSG, nsg(rule(["0.0.0.0/0"], port="443")))
    assert found and found[0].startswith("port 443 ")
    wide = rules.check_no_open_ports(rules.NSG, nsg(rule(["*"], port="8000-8100")))
    assert [m.split(" is open")[0] for m in wide] == ["ports 8000-8100"]


def test_sources_are_united_across_rules_on_overlapping_ports() -> None:
    found = rules.check_no_open_ports(rules.NSG, nsg(rule(["0.0.0.0/1"], port="8000-8090", name="a"),
                                                     rule(["128.0.0.0/1"], port="8080", name="b")))
    assert "port 8080 is open to the Internet through rule(s) a, b: sources cover the whole IPv4 Internet " \
           "(a /0 in effect); allow only the operator's or clients' CIDRs" in found
    assert [m.split(" is open")[0] for m in found] == ["ports 8000-8079", "port 8080", "ports 8081-8090"]
    # One public /8 on each of two ports stays within pilot's bound; both on the same port exceed it.
    eights = [f"{n}.0.0.0/8" for n in range(1, 3)]
    assert rules.check_no_open_ports(rules.NSG, nsg(rule(eights[:1], port="8080"), rule(eights[1:], port="9000"))) == []
    assert rules.check_no_open_ports(rules.NSG, nsg(rule(eights[:1], port="8080"), rule(eights[1:], port="8080")))


def test_tier_bounds_api_but_not_ssh() -> None:
    slash_10 = rule(["64.0.0.0/10"], port="8080")
    assert rules.check_no_open_ports(rules.NSG, nsg(slash_10, tier="pilot")) == []
    assert rules.check_no_open_ports(rules.NSG, nsg(slash_10, tier="poc")), "poc's API bound is a /16"
    assert rules.check_no_open_ports(rules.NSG, nsg({**slash_10, "destinationPortRange": "22"}, tier="pilot"))
    assert rules.check_no_open_ports(rules.SECURITY_RULE, slash_10), "an untagged standalone rule gets the SSH bound"


def test_unreadable_ports_fail_closed() -> None:
    found = rules.check_no_open_ports(rules.NSG, nsg(rule(["0.0.0.0/0"], port="http")))
    assert found[0] == "security rule 'r' has an unreadable port 'http'" and len(found) == 2


def _partition(draw: st.DrawFn, net: ipaddress.IPv4Network, depth: int) -> list[str]:
    if depth == 0 or net.prefixlen >= 30 or not draw(st.booleans()):
        return [str(net)]
    low, high = net.subnets(prefixlen_diff=1)
    return _partition(draw, low, depth - 1) + _partition(draw, high, depth - 1)


@st.composite
def internet_splits(draw: st.DrawFn) -> list[str]:
    """0.0.0.0/0 cut into random CIDR pieces (at least two), in random order, some listed twice."""
    low, high = ipaddress.ip_network("0.0.0.0/0").subnets(prefixlen_diff=1)
    pieces = _partition(draw, low, 6) + _partition(draw, high, 6)  # type: ignore[arg-type]
    pieces += draw(st.lists(st.sampled_from(pieces), max_size=3))
    return draw(st.permutations(pieces))


@settings(max_examples=60, deadline=None)
@given(internet_splits(), st.integers(min_value=1, max_value=4))
def test_any_split_of_the_internet_is_open_however_it_is_spread_over_rules(pieces: list[str], n_rules: int) -> None:
    chunks = [pieces[i::n_rules] for i in range(n_rules)]
    found = rules.check_no_open_ports(rules.NSG, nsg(*(rule(c, port="8080", name=f"r{i}") for i, c in enumerate(chunks) if c)))
    assert len(found) == 1 and "whole IPv4 Internet" in found[0], found


PRIVATE_V4 = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                                                 "127.0.0.0/8", "169.254.0.0/16")]


def public_addresses(nets: set[str]) -> int:
    """An independent count: merge integer intervals, then take out the private blocks address range by range."""
    spans = sorted((int(n.network_address), int(n.broadcast_address)) for n in map(ipaddress.ip_network, nets))
    merged: list[list[int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    total = sum(hi - lo + 1 for lo, hi in merged)
    for block in PRIVATE_V4:
        b_lo, b_hi = int(block.network_address), int(block.broadcast_address)
        total -= sum(max(0, min(hi, b_hi) - max(lo, b_lo) + 1) for lo, hi in merged)
    return total


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=2**32 - 1), st.integers(min_value=6, max_value=32)),
                min_size=1, max_size=12))
def test_the_verdict_follows_the_public_addresses_admitted(picks: list[tuple[int, int]]) -> None:
    nets = {str(ipaddress.ip_network((start, prefix), strict=False)) for start, prefix in picks}
    expected_open = public_addresses(nets) > 2 ** 16
    assert (too_broad(nets, rules.BROADEST_SSH) is not None) == expected_open, nets


def test_public_blob_access() -> None:
    ok = {"allowBlobPublicAccess": False, "minimumTlsVersion": "TLS1_2"}
    assert rules.check_no_public_blob_access(rules.STORAGE_ACCOUNT, ok) == []
    assert rules.check_no_public_blob_access(rules.STORAGE_ACCOUNT, {**ok, "allowBlobPublicAccess": True})
    assert rules.check_no_public_blob_access(rules.STORAGE_ACCOUNT, {"minimumTlsVersion": "TLS1_2"}), "unset must be refused"
    assert rules.check_no_public_blob_access(rules.BLOB_CONTAINER, {"publicAccess": "Blob"}) == [
        "blob container has public access 'Blob': it must be 'None'"]


def test_tls_minimum() -> None:
    assert rules.check_tls(rules.STORAGE_ACCOUNT, {"minimumTlsVersion": "TLS1_2"}) == []
    assert rules.check_tls(rules.STORAGE_ACCOUNT, {"minimumTlsVersion": "TLS1_0"}) == [
        "storage account accepts TLS below 1.2 (minimumTlsVersion='TLS1_0')"]


def test_gpu_sku_allowed_for_tier_case_insensitive() -> None:
    vm = {"hardwareProfile": {"vmSize": "Standard_NC40ads_H100_v5"}, "tags": {**TAGS, "tier": "poc"},
          "securityProfile": {"encryptionAtHost": True}}
    assert rules.check_gpu_sku_for_tier(rules.VIRTUAL_MACHINE, vm) == []
    lower = {**vm, "hardwareProfile": {"vmSize": "standard_nc80adis_h100_v5"}}
    assert rules.check_gpu_sku_for_tier(rules.VIRTUAL_MACHINE, lower) == [
        "GPU SKU standard_nc80adis_h100_v5 is not allowed for tier poc (allowed: Standard_NC40ads_H100_v5)"]
    assert rules.check_encryption_at_host(rules.VIRTUAL_MACHINE, {**lower, "securityProfile": {}})
    cluster = {"tags": TAGS, "agentPoolProfiles": [{"name": "gpu", "vmSize": "STANDARD_ND96ASR_V4"}]}
    assert rules.check_gpu_sku_for_tier(rules.MANAGED_CLUSTER, cluster)


def test_data_role_scope_ignores_control_plane_roles() -> None:
    owner = {"roleDefinitionId": "/providers/Microsoft.Authorization/roleDefinitions/8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
             "scope": "/subscriptions/x/resourceGroups/y"}
    assert rules.check_data_role_scope(rules.ROLE_ASSIGNMENT, owner) == []
    reader = {**owner, "roleDefinitionId": owner["roleDefinitionId"].replace(
        "8e3af657-a8ff-443c-a75c-2fe8c4bcb635", "2A2B9908-6EA1-4AE2-8E65-A410DF84E7D1")}
    assert rules.check_data_role_scope(rules.ROLE_ASSIGNMENT, reader)
