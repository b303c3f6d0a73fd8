"""Blob storage for adapters and the managed identity that reads it (no keys on the VM)."""

from __future__ import annotations

import pulumi
from pulumi_azure_native import authorization, managedidentity, storage

from exaone_lora.spec import DeploymentSpec
from infra.common import (
    COMPONENT_PREFIX,
    STORAGE_BLOB_DATA_CONTRIBUTOR,
    STORAGE_BLOB_DATA_READER,
    role_definition_id,
)


class StorageAndIdentity(pulumi.ComponentResource):
    account: storage.StorageAccount
    container: storage.BlobContainer
    identity: managedidentity.UserAssignedIdentity
    reader: authorization.RoleAssignment
    operator_writer: authorization.RoleAssignment | None

    def __init__(self, name: str, spec: DeploymentSpec, resource_group_name: pulumi.Input[str],
                 subscription_id: pulumi.Input[str], operator_principal_id: str | None = None,
                 extra_containers: tuple[str, ...] = (), opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{COMPONENT_PREFIX}:infra:StorageAndIdentity", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = spec.resource_tags()
        self.identity = managedidentity.UserAssignedIdentity(
            "identity", resource_group_name=resource_group_name, location=spec.region, tags=tags, opts=child)
        # Without an explicit name Pulumi appends a random suffix: storage names are global in Azure.
        self.account = storage.StorageAccount(
            "adapters", resource_group_name=resource_group_name, location=spec.region, tags=tags,
            account_name=spec.storage.account_name, kind="StorageV2", sku=storage.SkuArgs(name="Standard_LRS"),
            allow_blob_public_access=False, minimum_tls_version="TLS1_2", enable_https_traffic_only=True,
            allow_shared_key_access=spec.storage.shared_key_access, opts=child)
        self.container = storage.BlobContainer(
            "adapters-container", resource_group_name=resource_group_name, account_name=self.account.name,
            container_name=spec.storage.container, public_access=storage.PublicAccess.NONE, opts=child)
        # Read-only, and only on the adapters container: a compromised VM cannot alter or delete versions.
        self.reader = authorization.RoleAssignment(
            "identity-blob-reader", principal_id=self.identity.principal_id, principal_type="ServicePrincipal",
            role_definition_id=role_definition_id(subscription_id, STORAGE_BLOB_DATA_READER),
            scope=self.container.id, opts=child)
        # AKS pods have no host disk the operator fills: their init container fetches the model from Blob too.
        for extra in extra_containers:
            box = storage.BlobContainer(
                f"{extra}-container", resource_group_name=resource_group_name, account_name=self.account.name,
                container_name=extra, public_access=storage.PublicAccess.NONE, opts=child)
            authorization.RoleAssignment(
                f"identity-{extra}-reader", principal_id=self.identity.principal_id, principal_type="ServicePrincipal",
                role_definition_id=role_definition_id(subscription_id, STORAGE_BLOB_DATA_READER), scope=box.id, opts=child)
        self.operator_writer = None
        if operator_principal_id:
            # The operator / CI principal publishes adapters; nobody else can write.
            self.operator_writer = authorization.RoleAssignment(
                "operator-blob-contributor", principal_id=operator_principal_id,
                role_definition_id=role_definition_id(subscription_id, STORAGE_BLOB_DATA_CONTRIBUTOR),
                scope=self.container.id, opts=child)
        self.register_outputs({"account": self.account.name, "identityClientId": self.identity.client_id})
