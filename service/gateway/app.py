"""The two gateway listeners: the public OpenAI-compatible API and the authenticated admin API.

The public app forwards only inference paths, and only allow-listed fields of a size-limited body
(`service.gateway.body`); vLLM's own admin endpoints (`/v1/load_lora_adapter`, ...) and every `/metrics`
do not exist on it. Admin operations and the gateway's `/metrics` live on a separate app that may only
be bound to loopback or a private address (`service.gateway.guards`); its `/admin/*` paths need a bearer key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.gateway.body import DEFAULT_MAX_BODY_BYTES, BodyError, read_request
from service.gateway.core import METRICS_INTERVAL_S, GatewayCore, RoutingError
from service.gateway.engine import EngineError
from service.gateway.guards import API_KEY_ENV, GuardError, adapter_path, check_alias_target, check_key
from service.gateway.names import parse_version_name, version_name
from service.gateway.proxy import forward, openai_error

PUBLIC_PATHS = ("/v1/chat/completions", "/v1/completions")


@dataclass
class GatewayApps:
    public: FastAPI
    admin: FastAPI
    core: GatewayCore
    # Whether the public app checks a bearer key: the server refuses to bind it beyond loopback without one.
    public_key: bool = False


def _bearer_ok(expected: str | None, header: str | None) -> bool:
    if not expected:
        return True
    if not header or not header.startswith("Bearer "):
        return False
    # Constant-time: the key must not leak through response timing.
    return hmac.compare_digest(header[7:].encode(), expected.encode())


def create_gateway(upstreams: list[str], *, admin_key: str, served_name: str = "exaone", api_key: str | None = None,
                   require_api_key: bool = False, engine_api_key: str | None = None, refresh_seconds: float = 5.0,
                   initial_aliases: dict[str, str] | None = None, core: GatewayCore | None = None,
                   adapter_root: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                   routing: str = "scored") -> GatewayApps:
    """Build the public and admin apps over one shared core.

    `admin_key` is mandatory (an admin API without a key is refused at construction); `api_key`
    protects the public API and must be set when `require_api_key` (a GuardError otherwise); a key
    shorter than 16 characters is always refused. `engine_api_key` is what vLLM itself expects.
    `initial_aliases` (alias -> version name, e.g. from the registry's alias.json) are switched at
    start-up where every replica has the version loaded; the reconciler does the rest. `routing` is the replica
    choice (`service.gateway.scoring`); `scored` reads every replica's /metrics in the background.
    """
    check_key("the gateway admin key", admin_key, required=True)
    check_key(f"the public API key (${API_KEY_ENV})", api_key, required=require_api_key)
    if max_body_bytes < 1024:
        raise GuardError(f"the request body limit must be at least 1024 bytes, got {max_body_bytes}")
    for alias, name in (initial_aliases or {}).items():
        check_alias_target(alias, name)
    core = core or GatewayCore.for_upstreams(served_name, upstreams, engine_api_key=engine_api_key, routing=routing)
    core.adapter_root = adapter_root or core.adapter_root
    upstream_headers = {"Authorization": f"Bearer {engine_api_key}"} if engine_api_key else {}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await core.refresh()
        for alias, name in (initial_aliases or {}).items():
            with contextlib.suppress(RoutingError):  # not loaded yet: the reconciler will switch it
                core.switch_alias(alias, name)

        async def keep_fresh() -> None:
            # Replicas restart (systemd Restart=always); re-reading /v1/models heals the routing table.
            while True:
                await asyncio.sleep(refresh_seconds)
                await core.refresh()

        async def keep_loads() -> None:
            # The scorer's view of each replica's queue, KV cache and LoRA slots; stale after METRICS_TTL_S.
            while True:
                await core.read_loads()
                await asyncio.sleep(METRICS_INTERVAL_S)

        tasks = [asyncio.create_task(keep_fresh())]
        if core.routing == "scored":
            tasks.append(asyncio.create_task(keep_loads()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await core.aclose()

    public = FastAPI(title="EXAONE LoRA gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def require_key(request: Request) -> None:
        if not _bearer_ok(api_key, request.headers.get("authorization")):
            raise _Unauthorized()

    async def inference(request: Request, path: str) -> Response:
        require_key(request)
        request_id = uuid.uuid4().hex
        try:
            body = await read_request(request, path, max_body_bytes)
        except BodyError as exc:
            return openai_error(exc.status, exc.code, exc.message, param=exc.param, request_id=request_id)
        return await forward(core, path, body, upstream_headers, request_id)

    @public.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await inference(request, "/v1/chat/completions")

    @public.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await inference(request, "/v1/completions")

    @public.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        require_key(request)
        data = [{"id": core.served_name, "object": "model", "owned_by": "exaone-lora"}]
        data += [{"id": alias, "object": "model", "owned_by": "exaone-lora", "parent": core.served_name}
                 for alias in sorted(core.aliases.targets())]
        return {"object": "list", "data": data}

    @public.get("/health")
    async def health() -> Response:
        ok = bool(core.lora_replicas())  # the base model and every alias are served while one of these is up
        return JSONResponse({"status": "ok" if ok else "no healthy replica"}, status_code=200 if ok else 503)

    _install_handlers(public)
    admin = _admin_app(core, admin_key)
    return GatewayApps(public=public, admin=admin, core=core, public_key=bool(api_key))


class _Unauthorized(Exception):
    pass


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(_Unauthorized)
    async def unauthorized(_: Request, __: _Unauthorized) -> Response:
        return JSONResponse({"error": {"message": "missing or wrong bearer key", "type": "authentication_error",
                                       "code": "unauthorized"}}, status_code=401, headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RoutingError)
    async def routing(_: Request, exc: RoutingError) -> Response:
        return openai_error(exc.status, exc.code, exc.message)

    @app.exception_handler(EngineError)
    async def engine(_: Request, exc: EngineError) -> Response:
        return JSONResponse({"error": {"message": str(exc), "type": "engine_error", "code": "engine_refused",
                                       "upstream_status": exc.status}}, status_code=502)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        # 404/405 and the like as JSON too, in the same shape as every other error of the gateway.
        return JSONResponse({"error": {"message": str(exc.detail), "type": "invalid_request_error", "param": None,
                                       "code": f"http_{exc.status_code}"}}, status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": {"message": f"{where or 'body'}: {first.get('msg', 'invalid')}",
                                       "type": "invalid_request_error", "param": where or None,
                                       "code": "invalid_request"}}, status_code=400)


class LoadRequest(BaseModel):
    name: str = Field(description="immutable version name, `domain-vN`")
    path: str | None = Field(default=None, description="adapter directory on the replica hosts: under the "
                             "gateway's --adapter-root and ending in `name` (default `<adapter-root>/<name>`)")


class SwitchRequest(BaseModel):
    version: int | None = Field(default=None, ge=1)
    name: str | None = None
    warmup: bool = True


class CanaryRequest(BaseModel):
    name: str = Field(description="the candidate's immutable version name, `domain-vN` of the alias's domain")
    weight: int = Field(ge=0, le=100, description="percent of the alias's requests sent to the candidate")
    shadow: int = Field(default=0, ge=0, le=100, description="percent of the other requests mirrored to it")
    sticky: str | None = Field(default=None, description="`user`: the same OpenAI `user` always lands on one side")
    warmup: bool = True


class DrainRequest(BaseModel):
    timeout: float = Field(default=60.0, gt=0, le=600)


def _admin_app(core: GatewayCore, admin_key: str) -> FastAPI:
    def authorized(request: Request) -> None:
        if not _bearer_ok(admin_key, request.headers.get("authorization")):
            raise _Unauthorized()

    app = FastAPI(title="EXAONE LoRA gateway admin", docs_url=None, redoc_url=None, openapi_url=None)
    _install_handlers(app)

    @app.get("/metrics")
    async def metrics() -> Response:
        # On the admin listener (loopback or private only), without the admin key: Prometheus on the host scrapes
        # it and must not hold a key that can switch aliases.
        return Response(core.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    admin = APIRouter(dependencies=[Depends(authorized)])

    def check_name(name: str) -> None:
        if parse_version_name(name) is None:
            raise RoutingError(400, "bad_version_name", f"`{name}` is not an immutable version name (`domain-vN`)")

    @admin.get("/admin/state")
    async def state() -> dict[str, object]:
        return core.snapshot()

    @admin.post("/admin/refresh")
    async def refresh() -> dict[str, object]:
        await core.refresh()
        return core.snapshot()

    @admin.post("/admin/versions")
    async def load(body: LoadRequest) -> dict[str, object]:
        # A new immutable name every time, never vLLM's load_inplace (stale prefix cache upstream).
        check_name(body.name)
        try:
            path = adapter_path(core.adapter_root, body.name, body.path)
        except GuardError as exc:
            raise RoutingError(400, "bad_adapter_path", str(exc)) from None
        results = await asyncio.gather(*(r.engine.load(body.name, path) for r in core.lora_replicas()))
        await core.refresh()
        return {"name": body.name, "loaded_now": sum(results), "state": core.snapshot()}

    @admin.delete("/admin/versions/{name}")
    async def unload(name: str, timeout: float = 60.0) -> dict[str, object]:
        check_name(name)
        await core.drain(name, timeout)
        results = await asyncio.gather(*(r.engine.unload(name) for r in core.lora_replicas()))
        await core.refresh()
        return {"name": name, "unloaded_now": sum(results), "state": core.snapshot()}

    @admin.post("/admin/versions/{name}/drain")
    async def drain(name: str, body: DrainRequest) -> dict[str, object]:
        check_name(name)
        await core.drain(name, body.timeout)
        return {"name": name, "in_flight": 0}

    @admin.put("/admin/aliases/{alias}")
    async def switch(alias: str, body: SwitchRequest) -> dict[str, object]:
        if (body.version is None) == (body.name is None):
            raise RoutingError(400, "bad_switch", "give exactly one of `version` or `name`")
        name = body.name or version_name(alias, body.version or 0)
        check_name(name)
        await core.refresh()
        if body.warmup:
            # The new version must answer on every replica before any client is sent to it.
            await asyncio.gather(*(r.engine.warmup(name) for r in core.lora_replicas() if name in r.loaded))
        return core.switch_alias(alias, name)

    @admin.put("/admin/aliases/{alias}/canary")
    async def canary(alias: str, body: CanaryRequest) -> dict[str, object]:
        check_name(body.name)
        await core.refresh()
        if body.warmup:
            await asyncio.gather(*(r.engine.warmup(body.name) for r in core.lora_replicas() if body.name in r.loaded))
        return core.set_split(alias, body.name, body.weight, body.shadow, body.sticky)

    @admin.delete("/admin/aliases/{alias}/canary")
    async def end_canary(alias: str) -> dict[str, object]:
        # Idempotent: ending a canary that is not there is what a rollback after a restart does.
        return core.clear_split(alias)

    @admin.delete("/admin/aliases/{alias}")
    async def remove(alias: str) -> dict[str, object]:
        core.clear_split(alias)
        removed = core.aliases.remove(alias)
        if removed is None:
            raise RoutingError(404, "unknown_alias", f"no alias `{alias}`")
        core.metrics.alias_version.remove(alias)
        return {"alias": alias, "removed": removed.name}

    app.include_router(admin)
    return app

