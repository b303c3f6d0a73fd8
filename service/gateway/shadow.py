"""Shadow requests: a copy of a client's request sent to an alias's canary candidate, its answer discarded.

The client's request never waits for the copy and never sees its outcome: the copy runs as its own task after the
client's request was placed, bounded by `GatewayCore.max_shadow_in_flight` (beyond it a request is not mirrored
and `exaone_gateway_shadow_skipped` counts it). Its status, duration and output tokens are recorded per version in
the `exaone_gateway_shadow_*` metrics, apart from the clients' own, so the rollout analysis can read them without
them counting as client traffic.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp

from service.gateway.core import GatewayCore, RoutingError
from service.gateway.state import Route

log = logging.getLogger("service.gateway.shadow")
# Tasks are held here until they end: the event loop keeps only weak references to tasks.
_TASKS: set[asyncio.Task[None]] = set()


def mirror(core: GatewayCore, route: Route, path: str, body: dict[str, Any], headers: dict[str, str]) -> None:
    """Start the shadow copy of one request when its route has one and the cap allows it; returns at once."""
    if route.shadow is None:
        return
    if core.shadow_in_flight >= core.max_shadow_in_flight:
        core.metrics.shadow_skipped.labels(route.alias).inc()
        return
    core.shadow_in_flight += 1
    # Not streamed: the copy's answer is only measured, and one JSON body is the cheapest way to read its usage.
    copy = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    copy["model"] = route.shadow
    task = asyncio.get_running_loop().create_task(_run(core, route.alias, route.shadow, path, copy, headers))
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


async def _run(core: GatewayCore, alias: str, name: str, path: str, body: dict[str, Any], headers: dict[str, str]
               ) -> None:
    start = time.perf_counter()
    status = "error"
    core.traffic.begin(name)  # a drain of the candidate waits for its shadow copies too
    try:
        replica = core.pick(Route(alias=alias, upstream_model=name, label=name))
        async with core.inference_session().post(f"{replica.url}{path}", json=body, headers=headers) as response:
            raw = await response.read()
            status = str(response.status)
        if response.status == 200:
            usage = json.loads(raw).get("usage") or {}
            tokens = usage.get("completion_tokens")
            if isinstance(tokens, int) and tokens > 0:
                core.metrics.shadow_tokens.labels(alias, name).inc(tokens)
    except (TimeoutError, RoutingError, aiohttp.ClientError, ValueError, AttributeError) as exc:
        log.info("shadow request to %s failed: %r", name, exc)
    finally:
        core.shadow_in_flight -= 1
        core.traffic.end(name)
        core.metrics.shadow_requests.labels(alias, name, status).inc()
        core.metrics.shadow_duration.labels(alias, name).observe(time.perf_counter() - start)
