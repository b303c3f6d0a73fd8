"""A serving stack's side of the adapter registry: its managed identity, read-only roles on the registry's
containers, and (above poc, or whenever the spec asks) a private endpoint that puts the registry account
inside the stack's VNet, with the privatelink DNS zone that makes `<account>.blob.core.windows.net` resolve
to it. The registry account itself belongs to the registry stack (infra/registry.py), found by StackReference.
"""

from __future__ import annotations

import pulumi
from pulumi_azure_native import authorization, managedidentity, network, privatedns

from exaone_lora.spec import DeploymentSpec
from infra.common import COMPONENT_PREFIX, role_definition_id
from infra.roles import STORAGE_BLOB_DATA_READER

BLOB_PRIVATE_ZONE = "privatelink.blob.core.windows.net"


def stack_reference_name(stack: str) -> str:
    """`registry` -> `<org>/<project>/registry`: a StackReference needs the fully qualified name."""
    if "/" in stack:
        return stack  # already <org>/<project>/<stack> (the spec allows no other form)
    return f"{pulumi.get_organization() or 'organization'}/{pulumi.get_project()}/{stack}"


class RegistryAccess(pulumi.ComponentResource):
    identity: managedidentity.UserAssignedIdentity
    reader: authorization.RoleAssignment
    private_endpoint: network.PrivateEndpoint | None
    ready: list[pulumi.Resource]
    account_name: pulumi.Output[str]
    container_name: pulumi.Output[str]
    blob_url: pulumi.Output[str]

    def __init__(self, name: str, spec: DeploymentSpec, *, resource_group_name: pulumi.Input[str],
                 subscription_id: pulumi.Input[str], subnet_id: pulumi.Input[str], vnet_id: pulumi.Input[str],
                 reads_models: bool = False, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{COMPONENT_PREFIX}:infra:RegistryAccess", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = spec.resource_tags()
        rg = resource_group_name
        registry = pulumi.StackReference(stack_reference_name(spec.registry.stack), opts=child)
        self.account_name = registry.require_output("storageAccount")  # type: ignore[assignment]
        self.container_name = registry.require_output("storageContainer")  # type: ignore[assignment]
        self.blob_url = registry.require_output("storageBlobUrl")  # type: ignore[assignment]
        self.identity = managedidentity.UserAssignedIdentity(
            "identity", resource_group_name=rg, location=spec.region, tags=tags, opts=child)
        # Read-only, and only on the registry's containers: a compromised host cannot alter or delete versions.
        self.reader = authorization.RoleAssignment(
            "identity-blob-reader", principal_id=self.identity.principal_id, principal_type="ServicePrincipal",
            role_definition_id=role_definition_id(subscription_id, STORAGE_BLOB_DATA_READER),
            scope=registry.require_output("containerId"), opts=child)
        self.ready = [self.reader]
        if reads_models:
            # AKS pods have no host disk the operator fills: their init container fetches the model from Blob too.
            self.ready.append(authorization.RoleAssignment(
                "identity-models-reader", principal_id=self.identity.principal_id, principal_type="ServicePrincipal",
                role_definition_id=role_definition_id(subscription_id, STORAGE_BLOB_DATA_READER),
                scope=registry.require_output("modelsContainerId"), opts=child))
        self.private_endpoint = None
        if spec.registry.private_endpoint:
            self.private_endpoint = self._private_endpoint(spec, rg, subnet_id, vnet_id,
                                                           registry.require_output("storageAccountId"), child)
        self.register_outputs({"account": self.account_name, "identityClientId": self.identity.client_id})

    def _private_endpoint(self, spec: DeploymentSpec, rg: pulumi.Input[str], subnet_id: pulumi.Input[str],
                          vnet_id: pulumi.Input[str], account_id: pulumi.Input[str],
                          child: pulumi.ResourceOptions) -> network.PrivateEndpoint:
        tags = spec.resource_tags()
        zone = privatedns.PrivateZone(
            "registry-dns", resource_group_name=rg, private_zone_name=BLOB_PRIVATE_ZONE, location="Global", tags=tags,
            opts=child)
        link = privatedns.VirtualNetworkLink(
            "registry-dns-link", resource_group_name=rg, private_zone_name=zone.name, location="Global",
            virtual_network=privatedns.SubResourceArgs(id=vnet_id), registration_enabled=False, tags=tags, opts=child)
        endpoint = network.PrivateEndpoint(
            "registry-pe", resource_group_name=rg, location=spec.region, tags=tags,
            subnet=network.SubnetArgs(id=subnet_id),
            private_link_service_connections=[network.PrivateLinkServiceConnectionArgs(
                name="registry-blob", private_link_service_id=account_id, group_ids=["blob"])],
            opts=child)
        group = network.PrivateDnsZoneGroup(
            "registry-pe-dns", resource_group_name=rg, private_endpoint_name=endpoint.name,
            private_dns_zone_group_name="default",
            private_dns_zone_configs=[network.PrivateDnsZoneConfigArgs(name="blob", private_dns_zone_id=zone.id)],
            opts=child)
        self.ready += [endpoint, group, link]
        return endpoint
