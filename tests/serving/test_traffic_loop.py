"""The test traffic loop itself: it reports a budget that ran out instead of letting a phase pass without traffic."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from service.gateway import VERSION_HEADER
from tests.serving.conftest import TrafficLoop


class _Completions(BaseHTTPRequestHandler):
    """Answers every completion as model `medical`, version `medical-v1` (stands in for the gateway's contract)."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if body.get("stream"):
            payload = f'data: {json.dumps({"model": "medical"})}\n\ndata: [DONE]\n\n'.encode()
            content_type = "text/event-stream"
        else:
            payload, content_type = json.dumps({"model": "medical"}).encode(), "application/json"
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(payload)))
        self.send_header(VERSION_HEADER, "medical-v1")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Completions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_wait_for_returns_once_requests_completed() -> None:
    with _server() as url:
        traffic = TrafficLoop(url, "medical", workers=2, max_requests=500, max_seconds=20)
        with traffic.running():
            traffic.wait_for(10)
            traffic.wait_for(10)
        assert traffic.failures == []
        assert sum(traffic.statuses.values()) >= 20
        assert set(traffic.versions) == {"medical-v1"}


def test_wait_for_fails_when_the_request_budget_ran_out() -> None:
    with _server() as url:
        traffic = TrafficLoop(url, "medical", workers=2, max_requests=12, max_seconds=20)
        with traffic.running():
            traffic.wait_for(5)
            with pytest.raises(AssertionError, match="traffic loop ended after 12 requests"):
                traffic.wait_for(100, timeout=10)
        assert sum(traffic.statuses.values()) == 12
