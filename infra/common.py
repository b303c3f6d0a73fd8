"""Names, ids and small helpers shared by the components."""

from __future__ import annotations

from collections.abc import Callable
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


class NotDeployableError(ValueError):
    """`pulumi up` of a stack whose operator settings are missing or examples; nothing was created."""


def deploy_problems(spec: DeploymentSpec, options: InfraOptions) -> list[str]:
    problems = spec.deploy_blockers()
    if spec.target != "local" and options.api_key is None:
        problems.append(f"ops:apiKey: not set; every Azure stack serves its API with a key: "
                        f"`pulumi config set -s {spec.stack} --secret ops:apiKey \"$(openssl rand -hex 32)\"`")
    return problems


def check_deployable(spec: DeploymentSpec, options: InfraOptions, *, preview: bool,
                     warn: Callable[[str], object] = print) -> None:
    """Refuse (`pulumi up`) or warn (`pulumi preview`) while the stack cannot be deployed as it stands."""
    problems = deploy_problems(spec, options)
    if not problems:
        return
    text = f"stack {spec.stack} is not ready to deploy:\n" + "\n".join(f"  - {p}" for p in problems)
    if preview:
        warn(text)
        return
    raise NotDeployableError(text)


def prefix(spec: DeploymentSpec) -> str:
    return f"{spec.project}-{spec.stack}"


def role_definition_id(subscription_id: pulumi.Input[str], role: str) -> pulumi.Output[str]:
    return pulumi.Output.concat("/subscriptions/", subscription_id, "/providers/Microsoft.Authorization/roleDefinitions/", role)


def subscription_id() -> pulumi.Output[str]:
    return authorization.get_client_config_output().subscription_id
