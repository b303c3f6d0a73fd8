"""Resource group, VNet + subnet and the NSG: SSH only from the operator, the API only from listed CIDRs."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_azure_native import network, resources

from exaone_lora.spec import DeploymentSpec
from infra.common import COMPONENT_PREFIX, prefix

VNET_CIDR = "10.42.0.0/16"
SUBNET_CIDR = "10.42.1.0/24"


@dataclass(frozen=True)
class InboundRule:
    name: str
    priority: int
    sources: tuple[str, ...]
    port: int
    description: str


def inbound_rules(spec: DeploymentSpec) -> list[InboundRule]:
    """The only inbound allows the stack gets; everything else hits Azure's DenyAllInBound."""
    rules: list[InboundRule] = []
    # AKS nodes are not logged into: only VMs get the SSH rule.
    if spec.target == "vm" and spec.operator_cidr:
        rules.append(InboundRule("allow-ssh-operator", 100, (spec.operator_cidr,), 22, "SSH from the operator only"))
    if spec.api.exposure == "public":
        rules.append(InboundRule("allow-api-clients", 110, spec.api.allowed_cidrs, spec.port,
                                 "API/gateway port from the listed client networks"))
    return rules


def security_rule_args(rule: InboundRule) -> network.SecurityRuleArgs:
    sources: dict[str, object] = (
        {"source_address_prefix": rule.sources[0]} if len(rule.sources) == 1 else {"source_address_prefixes": list(rule.sources)}
    )
    return network.SecurityRuleArgs(
        name=rule.name, priority=rule.priority, direction="Inbound", access="Allow", protocol="Tcp",
        source_port_range="*", destination_address_prefix="*", destination_port_range=str(rule.port),
        description=rule.description, **sources,  # type: ignore[arg-type]
    )


class Network(pulumi.ComponentResource):
    resource_group: resources.ResourceGroup
    vnet: network.VirtualNetwork
    subnet: network.Subnet
    nsg: network.NetworkSecurityGroup

    def __init__(self, name: str, spec: DeploymentSpec, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{COMPONENT_PREFIX}:infra:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = spec.resource_tags()
        self.resource_group = resources.ResourceGroup(
            "rg", resource_group_name=f"rg-{prefix(spec)}", location=spec.region, tags=tags, opts=child)
        rg = self.resource_group.name
        self.nsg = network.NetworkSecurityGroup(
            "nsg", resource_group_name=rg, location=spec.region, tags=tags,
            security_rules=[security_rule_args(r) for r in inbound_rules(spec)], opts=child)
        self.vnet = network.VirtualNetwork(
            "vnet", resource_group_name=rg, location=spec.region, tags=tags,
            address_space=network.AddressSpaceArgs(address_prefixes=[VNET_CIDR]), opts=child)
        self.subnet = network.Subnet(
            "subnet", resource_group_name=rg, virtual_network_name=self.vnet.name, address_prefix=SUBNET_CIDR,
            network_security_group=network.NetworkSecurityGroupArgs(id=self.nsg.id), opts=child)
        self.register_outputs({"resourceGroup": rg, "subnetId": self.subnet.id})
