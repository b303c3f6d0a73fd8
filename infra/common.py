"""Names, ids and small helpers shared by the components."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_azure_native import authorization

from exaone_lora.spec import DeploymentSpec
from infra.roles import STORAGE_BLOB_DATA_CONTRIBUTOR, STORAGE_BLOB_DATA_READER

__all__ = [
    "COMPONENT_PREFIX",
    "STORAGE_BLOB_DATA_CONTRIBUTOR",
    "STORAGE_BLOB_DATA_READER",
    "InfraOptions",
    "prefix",
    "role_definition_id",
    "subscription_id",
]
COMPONENT_PREFIX = "exaone-lora"


@dataclass(frozen=True)
class InfraOptions:
    """Settings that are not part of the deployment spec (they differ per operator, not per deployment).

    Read from the `ops:` config namespace by `__main__.py`: `pulumi config set ops:operatorPrincipalId <object id>`
    (on the registry stack: the publisher, the only principal that writes adapters),
    `pulumi config set --secret ops:apiKey <key>`.
    """

    operator_principal_id: str | None = None
    api_key: pulumi.Input[str] | None = None
    kubernetes_version: str | None = None


def prefix(spec: DeploymentSpec) -> str:
    return f"{spec.project}-{spec.stack}"


def role_definition_id(subscription_id: pulumi.Input[str], role: str) -> pulumi.Output[str]:
    return pulumi.Output.concat("/subscriptions/", subscription_id, "/providers/Microsoft.Authorization/roleDefinitions/", role)


def subscription_id() -> pulumi.Output[str]:
    return authorization.get_client_config_output().subscription_id
