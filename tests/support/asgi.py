"""A small ASGI app served on a free loopback port in a background thread (stand-in endpoints for tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp

from exaone_lora.local.processes import free_port


@contextmanager
def serve_in_thread(app: ASGIApp, timeout: float = 20, keep_alive_s: int = 5) -> Iterator[str]:
    """Yield the app's base URL (`http://127.0.0.1:PORT`) once it accepts connections; stop it on exit."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_keep_alive=keep_alive_s))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"test server on port {port} did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
