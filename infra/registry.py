"""The adapter registry: one long-lived storage account that every serving stack reads (issue 21 item 1).

It is its own Pulumi stack (`Pulumi.registry.yaml`, `exaone-lora:role: registry`), so promoting an adapter
version from poc to prod moves a pin, never a blob, and destroying a serving stack cannot touch it: the
resource group, account and containers are `protect=True`. Published versions cannot change: blob versioning,
blob and container soft delete, and version-level immutability (WORM) with a default time-based retention
policy on the adapters container. Only the publisher principal (`ops:operatorPrincipalId`) writes; serving
stacks grant their own identities Storage Blob Data Reader on the containers (infra/storage.py).

Network: shared keys off, every request carries an Entra ID token; public network access is Disabled unless
`publisherCidrs` lists the operator's networks, which then are the only public addresses the firewall admits
(`defaultAction: Deny`). Serving stacks reach the account through private endpoints in their own VNets.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pulumi
from pulumi_azure_native import authorization, resources, storage
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from exaone_lora import PROJECT
from exaone_lora.cidrs import too_broad
from exaone_lora.spec import SpecError, StorageSpec, read_config, stack_file
from infra.aks import MODELS_CONTAINER
from infra.common import COMPONENT_PREFIX, role_definition_id
from infra.policy.rules import BROADEST_SSH
from infra.roles import STORAGE_BLOB_DATA_CONTRIBUTOR

REGISTRY_ROLE = "registry"
# The serving side names the containers too (the AKS init container, the Fabric tasks): one default each.
ADAPTERS_CONTAINER = StorageSpec().container

REGISTRY_TIER_TAG = "registry"


class RegistryConfig(BaseModel):
    """`Pulumi.<stack>.yaml` of the registry stack (keys without the `exaone-lora:` namespace, camelCase)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    stack: str
    role: str = REGISTRY_ROLE
    region: str = "koreacentral"
    account_name: str = Field(description="global Azure name of the registry account")
    resource_group: str = "rg-exaone-lora-registry"
    immutability_days: int = Field(default=3650, ge=1, le=146000,
                                   description="WORM retention of every adapter version blob")
    soft_delete_days: int = Field(default=30, ge=1, le=365)
    publisher_cidrs: tuple[str, ...] = Field(
        default=(), description="public networks the publisher uploads from; empty = no public network access")
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("account_name")
    @classmethod
    def _account(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9]{3,24}", value):
            raise ValueError("must be 3-24 lower-case letters and digits (Azure's rule for storage accounts)")
        return value

    @field_validator("publisher_cidrs")
    @classmethod
    def _publishers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if value and (why := too_broad(value, BROADEST_SSH)):
            raise ValueError(f"{why}; list only the publisher's own networks")
        return value

    def resource_tags(self) -> dict[str, str]:
        return {"project": PROJECT, "stack": self.stack, "tier": REGISTRY_TIER_TAG, **self.tags}


def is_registry_stack(stack: str, root: Path | str = ".") -> bool:
    return read_config(stack_file(stack, root)).get("role") == REGISTRY_ROLE


def load_registry_config(stack: str, root: Path | str = ".") -> RegistryConfig:
    path = stack_file(stack, root)
    values = read_config(path)
    if values.get("role") != REGISTRY_ROLE:
        raise SpecError(f"{path.name}: {PROJECT}:role: must be '{REGISTRY_ROLE}' for a registry stack")
    try:
        return RegistryConfig.model_validate({"stack": stack, **values})
    except ValidationError as exc:
        raise SpecError("\n".join(
            f"{path.name}: {PROJECT}:{'.'.join(str(p) for p in e['loc'])}: {str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors())) from None


def registry_outputs(config: RegistryConfig, subscription_id: str) -> dict[str, str]:
    """The registry stack's outputs, as Azure names them: what every serving stack reads by StackReference."""
    account_id = (f"/subscriptions/{subscription_id}/resourceGroups/{config.resource_group}"
                  f"/providers/Microsoft.Storage/storageAccounts/{config.account_name}")
    return {
        "resourceGroup": config.resource_group,
        "storageAccount": config.account_name,
        "storageAccountId": account_id,
        "storageBlobUrl": f"https://{config.account_name}.blob.core.windows.net",
        "storageContainer": ADAPTERS_CONTAINER,
        "containerId": f"{account_id}/blobServices/default/containers/{ADAPTERS_CONTAINER}",
        "modelsContainer": MODELS_CONTAINER,
        "modelsContainerId": f"{account_id}/blobServices/default/containers/{MODELS_CONTAINER}",
    }


def network_rule_set(config: RegistryConfig) -> storage.NetworkRuleSetArgs:
    # Deny by default; no trusted-service bypass: nothing but the publisher's networks and private endpoints.
    return storage.NetworkRuleSetArgs(
        default_action=storage.DefaultAction.DENY, bypass="None",
        ip_rules=[storage.IPRuleArgs(i_p_address_or_range=c, action=storage.Action.ALLOW) for c in config.publisher_cidrs])


class Registry(pulumi.ComponentResource):
    resource_group: resources.ResourceGroup
    account: storage.StorageAccount
    blob_service: storage.BlobServiceProperties
    adapters: storage.BlobContainer
    models: storage.BlobContainer
    worm: storage.BlobContainerImmutabilityPolicy
    publisher: list[authorization.RoleAssignment]

    def __init__(self, name: str, config: RegistryConfig, *, subscription_id: pulumi.Input[str],
                 publisher_principal_id: str | None = None, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{COMPONENT_PREFIX}:infra:Registry", name, None, opts)
        tags = config.resource_tags()
        # Long-lived: `pulumi destroy` refuses while these are protected (unprotect them by hand, on purpose).
        keep = pulumi.ResourceOptions(parent=self, protect=True)
        self.resource_group = resources.ResourceGroup(
            "registry-rg", resource_group_name=config.resource_group, location=config.region, tags=tags, opts=keep)
        rg = self.resource_group.name
        self.account = storage.StorageAccount(
            "registry", resource_group_name=rg, location=config.region, tags=tags, account_name=config.account_name,
            kind="StorageV2", sku=storage.SkuArgs(name="Standard_ZRS"),
            allow_blob_public_access=False, minimum_tls_version="TLS1_2", enable_https_traffic_only=True,
            allow_shared_key_access=False, default_to_o_auth_authentication=True, allow_cross_tenant_replication=False,
            public_network_access="Enabled" if config.publisher_cidrs else "Disabled",
            network_rule_set=network_rule_set(config),
            # Version-level WORM support for every container of the account (the policy itself is per container).
            immutable_storage_with_versioning=storage.ImmutableStorageAccountArgs(enabled=True),
            opts=keep)
        self.blob_service = storage.BlobServiceProperties(
            "registry-blob-service", resource_group_name=rg, account_name=self.account.name, blob_services_name="default",
            is_versioning_enabled=True,
            delete_retention_policy=storage.DeleteRetentionPolicyArgs(enabled=True, days=config.soft_delete_days),
            container_delete_retention_policy=storage.DeleteRetentionPolicyArgs(enabled=True, days=config.soft_delete_days),
            opts=pulumi.ResourceOptions(parent=self))
        after_service = pulumi.ResourceOptions(parent=self, protect=True, depends_on=[self.blob_service])
        self.adapters = storage.BlobContainer(
            "registry-adapters", resource_group_name=rg, account_name=self.account.name,
            container_name=ADAPTERS_CONTAINER, public_access=storage.PublicAccess.NONE,
            immutable_storage_with_versioning=storage.ImmutableStorageWithVersioningArgs(enabled=True), opts=after_service)
        self.models = storage.BlobContainer(
            "registry-models", resource_group_name=rg, account_name=self.account.name, container_name=MODELS_CONTAINER,
            public_access=storage.PublicAccess.NONE, opts=after_service)
        # The default time-based retention policy of a version-level WORM container applies to every new version.
        self.worm = storage.BlobContainerImmutabilityPolicy(
            "registry-adapters-worm", resource_group_name=rg, account_name=self.account.name,
            container_name=self.adapters.name, immutability_policy_name="default",
            immutability_period_since_creation_in_days=config.immutability_days,
            allow_protected_append_writes=False, allow_protected_append_writes_all=False,
            opts=pulumi.ResourceOptions(parent=self, protect=True))
        self.publisher = []
        if publisher_principal_id:
            # The operator / CI principal publishes adapters and models; serving stacks only read.
            for key, container in (("adapters", self.adapters), ("models", self.models)):
                self.publisher.append(authorization.RoleAssignment(
                    f"publisher-{key}-contributor", principal_id=publisher_principal_id,
                    role_definition_id=role_definition_id(subscription_id, STORAGE_BLOB_DATA_CONTRIBUTOR),
                    scope=container.id, opts=pulumi.ResourceOptions(parent=self)))
        self.register_outputs({"account": self.account.name})


def build_registry(config: RegistryConfig, subscription_id: pulumi.Output[str],
                   publisher_principal_id: str | None = None) -> dict[str, Any]:
    """The registry stack's program; its outputs have the names and shapes of `registry_outputs`."""
    reg = Registry("registry", config, subscription_id=subscription_id, publisher_principal_id=publisher_principal_id)
    return {
        "resourceGroup": reg.resource_group.name,
        "storageAccount": reg.account.name,
        "storageAccountId": reg.account.id,
        "storageBlobUrl": reg.account.name.apply(lambda n: f"https://{n}.blob.core.windows.net"),
        "storageContainer": reg.adapters.name,
        "containerId": reg.adapters.id,
        "modelsContainer": reg.models.name,
        "modelsContainerId": reg.models.id,
    }
