"""The router: the whole Ollama API for the cluster. ``create_app(settings)`` and its routes.

Inference routes are placed and forwarded (``dispatch.py``); model management is the shared
``corral.store.routes`` on the cluster's registry store, except ``/api/show``, which a worker
answers; ``/api/ps`` and ``/api/cluster/workers`` are assembled from Redis and the workers.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Receive, Scope, Send

from corral.api import OLLAMA_VERSION, requests
from corral.api.cloud import router as cloud_router
from corral.api.http import (
    json_response,
    read_json,
    serve_ollama_api,
)
from corral.api.streams import format_time
from corral.cluster import tenants
from corral.cluster.model_times import RedisModelTimes
from corral.cluster.redis_client import async_client
from corral.cluster.tenants import CLUSTER_TOKEN_HEADER
from corral.router.direct import Inbox
from corral.router.dispatch import ClusterUnavailableError, Dispatcher
from corral.router.forward import FORWARDED, RAW_SEND, ForwardEndpoint, ForwardShortcut, relayed_response
from corral.router.metrics import RouterMetrics
from corral.router.reaper import Reaper
from corral.router.redis_lane import RedisLane
from corral.router.settings import RouterSettings
from corral.router.state import NEVER, ClusterState
from corral.router.tenants import AuthMiddleware, Gate
from corral.router.tenants import admin as admin_router
from corral.store import routes as store_routes
from corral.store.oci import RegistryStore
from corral.store.pull import Registries
from corral.store.registry import RegistryClient
from corral.store.routes import router as models_router

logger = logging.getLogger(__name__)

PS_TIMEOUT_S = 5.0

router = APIRouter()


@dataclass
class RouterModels:
    store: RegistryStore
    registries: Registries


def dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


@router.api_route("/", methods=["GET", "HEAD"])
async def root() -> Response:
    return PlainTextResponse("Ollama is running")


@router.api_route("/api/version", methods=["GET", "HEAD"])
async def version() -> Response:
    return json_response({"version": OLLAMA_VERSION})


_FORWARD_ROUTES = {}
for _path in FORWARDED:
    # An ASGI endpoint (Starlette calls it with scope, receive, send): the stubs know only functions.
    router.add_route(_path, ForwardEndpoint(_path), methods=["POST"])  # type: ignore[arg-type]
    _FORWARD_ROUTES[_path] = router.routes[-1]


@router.post("/api/show")
async def show(request: Request) -> Response:
    """Relayed to a worker: a model's capabilities come from its template, which workers parse
    (the router parses none). With no worker up, the registry answers here."""
    body = await read_json(request, requests.SHOW)
    tenants.require_model(request.scope, body.get("model") or body.get("name"))
    try:
        return relayed_response(await dispatcher(request).relay_anywhere("/api/show", body))
    except ClusterUnavailableError:
        return await store_routes.show(request, request.app.state.models)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    d = dispatcher(request)
    try:
        cluster = await d.snapshot()
    except RedisError:
        cluster = {"redis_up": False}
    return Response(d.metrics.render(cluster), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/ps")
async def ps(request: Request) -> Response:
    """Each loaded model once, with the workers holding it (Corral's ``workers`` field)."""
    d = dispatcher(request)
    workers, placements = await _cluster_view(d)
    by_worker = {w.id: w for w in workers}
    held: dict[str, list[Any]] = {}
    for placement in placements:
        held.setdefault(placement.model, []).append(placement)
    replies = await asyncio.gather(*(_worker_ps(d.http, w.url) for w in workers))
    entries: dict[str, dict] = {}
    for models in replies:
        for entry in models:
            entries.setdefault(entry["name"].lower(), entry)
    out = []
    for model, group in held.items():
        if not tenants.may_use(request.scope, model):
            continue
        found = _match(entries, model)
        if found is None:
            continue  # placed but not loaded yet (or already gone)
        expiry = max((p.expires_at for p in group), key=lambda e: float("inf") if e == NEVER else e)
        entry = dict(found)
        entry["workers"] = sorted(p.worker for p in group if p.worker in by_worker)
        if expiry != NEVER:
            entry["expires_at"] = format_time(datetime.fromtimestamp(expiry / 1000, tz=UTC).astimezone())
        out.append(entry)
    out.sort(key=lambda e: e["expires_at"], reverse=True)
    return json_response({"models": out})


@router.get("/api/cluster/workers")
async def cluster_workers(request: Request) -> Response:
    d = dispatcher(request)
    workers, placements = await _cluster_view(d)
    out = []
    for worker in workers:
        mine = [p for p in placements if p.worker == worker.id]
        out.append(
            {
                "id": worker.id,
                "url": worker.url,
                "state": worker.state,
                "device": worker.device,
                "memory_total": worker.memory_total,
                "memory_used": sum(p.size for p in mine),
                "models": sorted(p.model for p in mine),
            }
        )
    return json_response({"workers": out})


@router.get("/api/cluster/ready")
async def cluster_ready(request: Request) -> Response:
    """The readiness probe: 200 when this router can place requests (from Redis, or while Redis
    is away from its last known placements), else 503. Open to all, as ``/`` is: it says nothing
    about the cluster but whether this router is ready."""
    await _cluster_view(dispatcher(request))
    return json_response({"status": "ready"})


async def _cluster_view(d: Dispatcher) -> tuple[list[Any], list[Any]]:
    """Live workers and their placements; while Redis is away, as it last said them (the
    router still places requests from them), or 503 when it never did."""
    if not d.offline.active:
        try:
            workers = await d.workers()
            return workers, await d.state.placements([w.id for w in workers])
        except RedisError as exc:
            d.offline.redis_failed(exc)
    known = d.offline.known
    if not known.at:
        raise ClusterUnavailableError("cluster state unavailable: redis is unreachable")
    return known.workers, known.placements


async def _worker_ps(http: httpx.AsyncClient, url: str) -> list[dict]:
    try:
        reply = await http.get(url + "/api/ps", timeout=PS_TIMEOUT_S)
        return reply.json().get("models") or []
    except (httpx.HTTPError, ValueError):
        return []


def _match(entries: dict[str, dict], model: str) -> dict | None:
    key = model.lower()
    return entries.get(key) or entries.get(f"{key}:latest")


# Routes that change the cluster's models, and routes that never read them. (The forwarded
# routes read the generation with their slot: dispatch.py.)
_MODEL_WRITES = {"/api/create", "/api/copy", "/api/delete", "/api/pull"}
_NO_MODELS = {"/", "/api/version", "/metrics", "/api/ps", "/api/cluster/workers", "/api/cluster/ready"}


class FreshModelsMiddleware:
    """Read-your-writes across routers, which cache registry reads for a moment: a model write
    bumps a generation in Redis once it is done, and a router that sees the generation change
    drops its caches before it serves the next request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _NO_MODELS or scope["path"] in FORWARDED:
            await self.app(scope, receive, send)
            return
        d: Dispatcher = scope["app"].state.dispatcher
        try:
            await d.sync_models()
        except RedisError as exc:
            logger.debug("model store generation unavailable: %s", exc)
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["path"] in _MODEL_WRITES:
                with suppress(RedisError):
                    await d.state.models_changed()


class _RouterApp(FastAPI):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The server's own send, for streams piped past the middleware (forward.py).
        scope[RAW_SEND] = send
        await super().__call__(scope, receive, send)


def create_app(settings: RouterSettings) -> FastAPI:
    metrics = RouterMetrics()
    metrics.start_at_zero(list(FORWARDED))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = async_client(
            settings.REDIS_URL, socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=10
        )
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=settings.CORRAL_CONNECT_TIMEOUT, read=None, write=60.0, pool=30.0),
            limits=httpx.Limits(max_connections=2048, max_keepalive_connections=256),
            # Workers with CORRAL_CLUSTER_TOKEN answer only requests that carry it.
            headers={CLUSTER_TOKEN_HEADER: settings.cluster_token} if settings.cluster_token else None,
        )
        client = RegistryClient()
        times = RedisModelTimes(settings.REDIS_URL)
        store = RegistryStore(
            settings.CORRAL_REGISTRY_URL, client=client, spool_dir=settings.CORRAL_SPOOL_DIR, times=times
        )
        app.state.models = RouterModels(store, Registries(client, mirrors=settings.registry_mirrors))
        lane = RedisLane(settings.REDIS_URL) if RedisLane.supports(settings.REDIS_URL) else None
        app.state.dispatcher = d = Dispatcher(settings, ClusterState(redis, lane), store, http, metrics)
        app.state.gate = Gate(settings, redis, lane, metrics) if settings.CORRAL_AUTH == "keys" else None
        reaper = asyncio.create_task(Reaper(d).run())
        if settings.CORRAL_DIRECT_STREAMING:
            d.inbox = Inbox(
                settings.REDIS_URL,
                d.finish,
                d.live_worker_ids,
                metrics.direct,
                lambda route, seconds: metrics.ttfb.labels(route).observe(seconds),
            )
            inbox = asyncio.create_task(d.inbox.run())
        # What startup made (FastAPI's routes, pydantic's validators, the metrics) lives as long
        # as the process: frozen, the collector stops walking it each time requests' cyclic
        # garbage triggers a full collection (measured: a fifth of the router's CPU before).
        gc.freeze()
        try:
            yield
        finally:
            if d.inbox is not None:  # streams nginx still carries end before their slots go back
                await d.inbox.drain(settings.drain_timeout_seconds)
                inbox.cancel()
                with suppress(asyncio.CancelledError):
                    await inbox
                await d.inbox.close()
            reaper.cancel()
            with suppress(asyncio.CancelledError):
                await reaper
            if app.state.gate is not None:
                app.state.gate.flush()  # the last second's key counts
            d.upstream.close()
            if lane is not None:
                lane.close()
            await http.aclose()
            await redis.aclose()
            times.close()

    app = _RouterApp(title="Corral router", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(router)
    app.include_router(admin_router)
    app.include_router(models_router)
    app.include_router(cloud_router)
    app.add_middleware(ForwardShortcut, routes=_FORWARD_ROUTES)
    app.add_middleware(FreshModelsMiddleware)
    if settings.CORRAL_AUTH == "keys":
        app.add_middleware(AuthMiddleware)
    serve_ollama_api(app, settings, metrics)
    return app


def from_env() -> FastAPI:
    """The app from the environment: what gunicorn and uvicorn load (``corral.router.app:from_env``)."""
    from corral.logs import configure_logging

    settings = RouterSettings()
    configure_logging(level=settings.log_level, fmt=settings.CORRAL_LOG_FORMAT)
    # httpx logs every request at INFO; the router's own lines say what matters.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    return create_app(settings)
