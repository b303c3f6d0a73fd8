"""Stacks and variants run once per session under Pulumi's mock runtime (about half a second each)."""

from __future__ import annotations

from typing import Any

import pytest

from exaone_lora.spec import ApiSpec, DeploymentSpec, build_spec, load_spec, read_config, stack_file
from infra.common import InfraOptions
from infra.mocks import ProgramRun
from infra.preview import run_program
from tests.support.operator import OPERATOR_VALUES
from tests.support.processes import REPO

ADAPTERS = [
    {"alias": "medical", "version": 3, "blobPath": "medical/v3", "sha256": "a" * 64},
    {"alias": "legal", "version": 1, "blobPath": "legal/v1", "sha256": "b" * 64},
]


# `pulumi config set --secret ops:apiKey ...`: every Azure stack has one.
OPS = InfraOptions(api_key="k" * 32)


def variant(stack: str, **overrides: Any) -> DeploymentSpec:
    """A shipped stack with the operator's settings (as `pulumi config set` adds them) and some keys replaced,
    validated like a stack file."""
    values = {**read_config(stack_file(stack, REPO)), **OPERATOR_VALUES, **overrides}
    return build_spec(stack, values, f"Pulumi.{stack}.yaml (variant)")


def open_api(stack: str, cidrs: list[str], **overrides: Any) -> DeploymentSpec:
    """A public API open to `cidrs` past the spec loader (which refuses broad unions itself), so that the policy
    pack's own judgement is what is tested: defence in depth against a stack edited around the loader."""
    spec = variant(stack, **overrides)
    return spec.model_copy(update={"api": ApiSpec.model_construct(exposure="public", allowed_cidrs=tuple(cidrs))})


def configured(stack: str) -> DeploymentSpec:
    """A shipped stack as `pulumi up` sees it once the operator has run `pulumi config set`."""
    return variant(stack) if load_spec(stack, REPO).target != "local" else load_spec(stack, REPO)


class Runs:
    def __init__(self) -> None:
        self._cache: dict[str, ProgramRun] = {}

    def stack(self, name: str) -> ProgramRun:
        if name not in self._cache:
            self._cache[name] = run_program(configured(name), OPS)
        return self._cache[name]

    def spec(self, key: str, spec: DeploymentSpec) -> ProgramRun:
        if key not in self._cache:
            self._cache[key] = run_program(spec, OPS)
        return self._cache[key]


@pytest.fixture(scope="session")
def runs() -> Runs:
    return Runs()


@pytest.fixture(scope="session")
def aks_spec() -> DeploymentSpec:
    return variant("poc", target="aks", adapters=ADAPTERS,
                   aks={"toolsImage": "example.azurecr.io/exaone-lora:0.1.0@sha256:" + "d" * 64})


@pytest.fixture(scope="session")
def large_spec() -> DeploymentSpec:
    return variant("prod", tier="prod-large", nodeCount=3, adapters=ADAPTERS,
                   api={"exposure": "public", "allowedCidrs": ["198.51.100.0/24"]})
