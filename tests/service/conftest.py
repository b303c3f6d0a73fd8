"""Fixtures of the service tests: the gateway's (tests.support.serving) and the registry's (tests.support.registry)."""

from tests.support.registry import (  # noqa: F401  (fixtures, registered by import)
    azurite_oauth,
    clean_azure_env,
    container_name,
    host_identity,
    operator_identity,
    registry,
)
from tests.support.serving import admin_key, gateway_factory, medical_versions  # noqa: F401
