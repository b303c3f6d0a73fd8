"""Running both gateway listeners in one process (one event loop, one shared core)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from exaone_lora.cidrs import is_loopback
from service.gateway.app import GatewayApps
from service.gateway.guards import ADMIN_KEY_ENV, API_KEY_ENV, ENGINE_KEY_ENV, GuardError, check_admin_host

__all__ = ["ADMIN_KEY_ENV", "API_KEY_ENV", "ENGINE_KEY_ENV", "RunningGateway", "gateway_in_thread", "read_secret",
           "serve"]


def read_secret(env: str, file: Path | None = None) -> str | None:
    """A secret from a file (first line, e.g. /etc/exaone-lora/...) or else from the environment."""
    if file is not None:
        return file.read_text().strip() or None
    return os.environ.get(env) or None


def check_listeners(apps: GatewayApps, public_host: str, admin_host: str) -> None:
    """Refuse a layout that exposes more than it should: the admin app beyond loopback/private addresses, or a
    public app without a key on anything but loopback (what a VM stack binds: 0.0.0.0)."""
    check_admin_host(admin_host)
    if not apps.public_key and not is_loopback(public_host):
        raise GuardError(f"the public listener binds to {public_host} without an API key: set ${API_KEY_ENV} "
                         "(at least 16 characters) or bind to loopback")


@dataclass(frozen=True)
class Tls:
    """The public listener's certificate chain and private key (PEM files); the admin listener stays on loopback."""

    cert_file: Path
    key_file: Path


def _servers(apps: GatewayApps, public: tuple[str, int], admin: tuple[str, int],
             tls: Tls | None = None) -> list[uvicorn.Server]:
    check_listeners(apps, public[0], admin[0])

    def server(app: object, host: str, port: int, tls: Tls | None = None) -> uvicorn.Server:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,  # type: ignore[arg-type]
                                timeout_keep_alive=30, ssl_certfile=str(tls.cert_file) if tls else None,
                                ssl_keyfile=str(tls.key_file) if tls else None)
        return uvicorn.Server(config)

    return [server(apps.public, *public, tls=tls), server(apps.admin, *admin)]


async def serve(apps: GatewayApps, public: tuple[str, int], admin: tuple[str, int], tls: Tls | None = None) -> None:
    await asyncio.gather(*(s.serve() for s in _servers(apps, public, admin, tls)))


@dataclass
class RunningGateway:
    public_url: str
    admin_url: str
    apps: GatewayApps


@contextmanager
def gateway_in_thread(apps: GatewayApps, public: tuple[str, int], admin: tuple[str, int],
                      timeout: float = 30, tls: Tls | None = None) -> Iterator[RunningGateway]:
    """Both listeners in a background thread (tests, benchmarks), stopped on exit."""
    servers = _servers(apps, public, admin, tls)
    loop = asyncio.new_event_loop()

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(asyncio.gather(*(s.serve() for s in servers)))

    thread = threading.Thread(target=main, name="gateway", daemon=True)
    thread.start()
    deadline = loop.time() + timeout
    try:
        while not all(s.started for s in servers):
            if not thread.is_alive():
                raise RuntimeError("the gateway stopped while starting (port in use?)")
            if loop.time() > deadline:
                raise TimeoutError("the gateway did not start")
            threading.Event().wait(0.05)
        scheme = "https" if tls else "http"
        yield RunningGateway(f"{scheme}://{public[0]}:{public[1]}", f"http://{admin[0]}:{admin[1]}", apps)
    finally:
        for s in servers:
            s.should_exit = True
        thread.join(timeout=30)
