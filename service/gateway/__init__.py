"""The gateway in front of vLLM: aliases -> immutable versions, per-adapter metrics, admin listener."""

from service.gateway.admin_client import AdminError, GatewayAdmin
from service.gateway.app import GatewayApps, create_gateway
from service.gateway.core import GatewayCore, RoutingError
from service.gateway.engine import EngineClient, EngineError, EngineModels
from service.gateway.names import parse_version_name, version_name
from service.gateway.proxy import VERSION_HEADER

__all__ = [
    "VERSION_HEADER",
    "AdminError",
    "EngineClient",
    "EngineError",
    "EngineModels",
    "GatewayAdmin",
    "GatewayApps",
    "GatewayCore",
    "RoutingError",
    "create_gateway",
    "parse_version_name",
    "version_name",
]
