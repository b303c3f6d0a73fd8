"""Each policy rule, called directly with resource inputs that pass and inputs that violate it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from infra.policy import rules
from infra.policy.pack import policies

TAGS = {"project": "exaone-lora", "stack": "poc", "tier": "poc"}


def ssh_rule(source: str, port: str = "22", access: str = "Allow") -> dict[str, Any]:
    return {"name": "ssh", "access": access, "direction": "Inbound", "protocol": "Tcp",
            "sourceAddressPrefix": source, "destinationPortRange": port}


@pytest.mark.parametrize("source", ["0.0.0.0/0", "*", "Internet", "Any", "::/0"])
def test_open_ssh_is_a_violation(source: str) -> None:
    found = rules.check_no_open_ports(rules.NSG, {"securityRules": [ssh_rule(source)]})
    assert found == [f"security rule 'ssh' exposes port 22 to the Internet (source {source}); "
                     "allow only the operator's or clients' CIDRs"]


@pytest.mark.parametrize("rule", [
    ssh_rule("203.0.113.7/32"),                    # operator only
    ssh_rule("0.0.0.0/0", access="Deny"),          # deny rules are fine
    ssh_rule("0.0.0.0/0", port="443"),             # not a protected port
    {**ssh_rule("Internet"), "direction": "Outbound"},
])
def test_safe_rules_pass(rule: dict[str, Any]) -> None:
    assert rules.check_no_open_ports(rules.NSG, {"securityRules": [rule]}) == []


def test_port_ranges_lists_and_standalone_rules() -> None:
    wide = {**ssh_rule("*", port="8000-8100")}
    assert [m.split(" exposes ")[1][:9] for m in rules.check_no_open_ports(rules.NSG, {"securityRules": [wide]})] == [
        "port 8080", "port 8081", "port 8082"]
    listed = {"name": "api", "access": "Allow", "direction": "Inbound", "sourceAddressPrefixes": ["10.0.0.0/8", "0.0.0.0/0"],
              "destinationPortRanges": ["443", "8080"]}
    assert len(rules.check_no_open_ports(rules.SECURITY_RULE, listed)) == 1
    assert rules.check_no_open_ports(rules.NSG, {"securityRules": [ssh_rule("*", port="*")]}), "'*' ports include 22"


def test_public_blob_access() -> None:
    ok = {"allowBlobPublicAccess": False, "minimumTlsVersion": "TLS1_2"}
    assert rules.check_no_public_blob_access(rules.STORAGE_ACCOUNT, ok) == []
    assert rules.check_no_public_blob_access(rules.STORAGE_ACCOUNT, {**ok, "allowBlobPublicAccess": True})
    assert rules.check_no_public_blob_access(rules.STORAGE_ACCOUNT, {"minimumTlsVersion": "TLS1_2"}), "unset must be refused"
    assert rules.check_no_public_blob_access(rules.BLOB_CONTAINER, {"publicAccess": "None"}) == []
    assert rules.check_no_public_blob_access(rules.BLOB_CONTAINER, {"publicAccess": "Blob"}) == [
        "blob container has public access 'Blob': it must be 'None'"]


def test_tls_minimum() -> None:
    assert rules.check_tls(rules.STORAGE_ACCOUNT, {"minimumTlsVersion": "TLS1_2"}) == []
    assert rules.check_tls(rules.STORAGE_ACCOUNT, {"minimumTlsVersion": "TLS1_0"}) == [
        "storage account accepts TLS below 1.2 (minimumTlsVersion='TLS1_0')"]
    assert rules.check_tls(rules.STORAGE_ACCOUNT, {"minimumTlsVersion": "TLS1_2", "enableHttpsTrafficOnly": False})


def gpu_vm(size: str = "Standard_NC40ads_H100_v5", encryption: bool | None = True, tier: str = "poc") -> dict[str, Any]:
    props: dict[str, Any] = {"hardwareProfile": {"vmSize": size}, "tags": {**TAGS, "tier": tier}}
    if encryption is not None:
        props["securityProfile"] = {"encryptionAtHost": encryption}
    return props


def test_encryption_at_host() -> None:
    assert rules.check_encryption_at_host(rules.VIRTUAL_MACHINE, gpu_vm()) == []
    assert rules.check_encryption_at_host(rules.VIRTUAL_MACHINE, gpu_vm(encryption=None)) == [
        "GPU VM (Standard_NC40ads_H100_v5) has no encryption at host: set securityProfile.encryptionAtHost=true"]
    assert rules.check_encryption_at_host(rules.VIRTUAL_MACHINE, gpu_vm(size="Standard_D4ds_v5", encryption=None)) == []
    pools = {"agentPoolProfiles": [{"name": "gpu", "vmSize": "Standard_NC40ads_H100_v5", "enableEncryptionAtHost": False}]}
    assert rules.check_encryption_at_host(rules.MANAGED_CLUSTER, pools)


def test_gpu_sku_allowed_for_tier() -> None:
    assert rules.check_gpu_sku_for_tier(rules.VIRTUAL_MACHINE, gpu_vm()) == []
    assert rules.check_gpu_sku_for_tier(rules.VIRTUAL_MACHINE, gpu_vm(size="Standard_NC80adis_H100_v5")) == [
        "GPU SKU Standard_NC80adis_H100_v5 is not allowed for tier poc (allowed: Standard_NC40ads_H100_v5)"]
    assert rules.check_gpu_sku_for_tier(rules.VIRTUAL_MACHINE, gpu_vm(size="Standard_NC80adis_H100_v5", tier="prod-small")) == []
    assert rules.check_gpu_sku_for_tier(rules.VIRTUAL_MACHINE, {"hardwareProfile": {"vmSize": "Standard_NC40ads_H100_v5"}})
    cluster = {"tags": TAGS, "agentPoolProfiles": [{"name": "gpu", "vmSize": "Standard_ND96asr_v4"}]}
    assert rules.check_gpu_sku_for_tier(rules.MANAGED_CLUSTER, cluster)


def test_required_tags() -> None:
    assert rules.check_required_tags(rules.VIRTUAL_MACHINE, {"tags": TAGS}) == []
    assert rules.check_required_tags(rules.VIRTUAL_MACHINE, {"tags": {"project": "x"}}) == ["missing required tags: stack, tier"]
    assert rules.check_required_tags(rules.BLOB_CONTAINER, {}) == [], "containers carry no tags in Azure"


def test_pack_wraps_every_rule_and_reports_with_the_urn() -> None:
    pack = policies()
    assert [p.name for p in pack] == [r.name for r in rules.RULES]
    reported: list[tuple[str, str | None]] = []

    def report(message: str, urn: str | None = None) -> None:
        reported.append((message, urn))

    args: Any = SimpleNamespace(resource_type=rules.NSG, props={"securityRules": [ssh_rule("0.0.0.0/0")]},
                           urn="urn:pulumi:poc::exaone-lora::azure-native:network:NetworkSecurityGroup::nsg")
    by_name: dict[str, Any] = {p.name: p for p in pack}
    by_name["no-open-ssh-or-api"].validate(args, report)
    assert reported and reported[0][1] == args.urn and "exposes port 22" in reported[0][0]
    reported.clear()
    by_name["required-tags"].validate(args, report)
    assert reported == [("missing required tags: project, stack, tier", args.urn)]
