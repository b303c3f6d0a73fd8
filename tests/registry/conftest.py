"""Registry fixtures: a fresh container per test in the session's Azurite, so tests never share state."""

from __future__ import annotations

import uuid

import pytest

from service.registry import AdapterRegistry
from tests.support.processes import Azurite


@pytest.fixture
def container_name() -> str:
    return f"adapters-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def registry(azurite_blob: Azurite, container_name: str) -> AdapterRegistry:
    reg = AdapterRegistry.from_connection_string(azurite_blob.connection_string, container=container_name)
    reg.ensure_container()
    return reg
