"""The test traffic loop itself: it reports a budget that ran out instead of letting a phase pass without traffic."""

from __future__ import annotations

import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.gateway import VERSION_HEADER
from tests.support.asgi import serve_in_thread
from tests.support.serving import TrafficLoop


async def _completion(request: Request) -> Response:
    """Answers every completion as model `medical`, version `medical-v1` (stands in for the gateway's contract)."""
    headers = {VERSION_HEADER: "medical-v1"}
    if (await request.json()).get("stream"):
        events = f'data: {json.dumps({"model": "medical"})}\n\ndata: [DONE]\n\n'
        return Response(events, media_type="text/event-stream", headers=headers)
    return JSONResponse({"model": "medical"}, headers=headers)


APP = Starlette(routes=[Route("/v1/completions", _completion, methods=["POST"])])


def test_wait_for_returns_once_requests_completed() -> None:
    with serve_in_thread(APP) as url:
        traffic = TrafficLoop(url, "medical", workers=2, max_requests=500, max_seconds=20)
        with traffic.running():
            traffic.wait_for(10)
            traffic.wait_for(10)
        assert traffic.failures == []
        assert sum(traffic.statuses.values()) >= 20
        assert set(traffic.versions) == {"medical-v1"}


def test_wait_for_fails_when_the_request_budget_ran_out() -> None:
    with serve_in_thread(APP) as url:
        traffic = TrafficLoop(url, "medical", workers=2, max_requests=12, max_seconds=20)
        with traffic.running():
            traffic.wait_for(5)
            with pytest.raises(AssertionError, match="traffic loop ended after 12 requests"):
                traffic.wait_for(100, timeout=10)
        assert sum(traffic.statuses.values()) == 12
