"""Registry fixtures: a fresh container per test, in the session's plain Azurite (the dev stack: shared key) or
its HTTPS + OAuth Azurite (the Azure path's stand-in: bearer tokens from exaone_lora.local.identity)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from exaone_lora.local.identity import TokenEndpoint, token_endpoint
from service.registry import AdapterRegistry, open_registry
from tests.support.processes import REPO, Azurite, azurite

# The host's user-assigned identity (a stack's `identityClientId`); the operator signs in as someone else.
HOST_CLIENT_ID = "7d3c9a4e-2b1f-4c8e-9a6d-5e0f1b2c3d4e"
# Variables that would steer DefaultAzureCredential / ManagedIdentityCredential away from the stand-in.
AZURE_ENV = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
             "AZURE_FEDERATED_TOKEN_FILE", "AZURE_USERNAME", "AZURE_TOKEN_CREDENTIALS", "IDENTITY_ENDPOINT",
             "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "MSI_ENDPOINT", "MSI_SECRET",
             "EXAONE_LORA_REGISTRY", "EXAONE_LORA_REGISTRY_CONTAINER", "EXAONE_LORA_REGISTRY_CA_FILE")


@pytest.fixture
def container_name() -> str:
    return f"adapters-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def registry(azurite_blob: Azurite, container_name: str) -> AdapterRegistry:
    reg = open_registry(azurite_blob.connection_string, container_name)
    reg.ensure_container()
    return reg


@pytest.fixture(scope="session")
def azurite_oauth(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[Azurite]:
    """Azurite over HTTPS with `--oauth basic`: accepts only well-formed Storage bearer tokens (or the shared key)."""
    with azurite(tmp_path_factory.mktemp("azurite-oauth"), logs_dir / "azurite-oauth.log", https_oauth=True) as service:
        yield service


@pytest.fixture
def clean_azure_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in AZURE_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def host_identity() -> Iterator[TokenEndpoint]:
    with token_endpoint(client_id=HOST_CLIENT_ID) as endpoint:
        yield endpoint


@pytest.fixture
def operator_identity() -> Iterator[TokenEndpoint]:
    """The operator's sign-in: a system-assigned identity (no client id), found by DefaultAzureCredential."""
    with token_endpoint() as endpoint:
        yield endpoint


def as_operator(monkeypatch: pytest.MonkeyPatch, operator: TokenEndpoint, blob: Azurite, container: str) -> AdapterRegistry:
    """The operator's registry client in this process: DefaultAzureCredential finds the operator's endpoint."""
    for key, value in operator.env().items():
        monkeypatch.setenv(key, value)
    assert blob.ca_file is not None
    registry = open_registry(blob.account_url, container, ca_file=blob.ca_file)  # identity="operator"
    registry.ensure_container()
    return registry


def host_process_env(host: TokenEndpoint | None = None) -> dict[str, str]:
    """A host process's environment: the stand-in's endpoint instead of IMDS (when given), nothing else of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "IDENTITY_", "EXAONE_LORA_REGISTRY"))}
    return {**env, **(host.env() if host else {}), "PYTHONPATH": str(REPO), "COLUMNS": "300"}
