"""Wiring of the worker: ``create_app(settings)`` and the lifespan that owns every resource."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.api.http import OllamaAccessMiddleware, install_error_handlers
from corral.store.gguf import GGUFCache
from corral.store.local import LocalStore
from corral.worker.engine import Engine, LlamaModel, LoadOptions
from corral.worker.inference import Inference
from corral.worker.metrics import WorkerMetrics
from corral.worker.modelinfo import ModelInspector
from corral.worker.routes import router
from corral.worker.scheduler import Loaded, Scheduler
from corral.worker.settings import WorkerSettings
from corral.worker.state import WorkerState

logger = logging.getLogger(__name__)

_GGUF_CACHE_SIZE = 32  # parsed GGUF headers kept; one per distinct model blob


def make_loader(settings: WorkerSettings, inspector: ModelInspector, metrics: WorkerMetrics):
    async def load(record: Any, options: LoadOptions) -> Loaded:
        def build() -> Loaded:
            started = time.perf_counter()
            llama = LlamaModel(record.model_path, options)
            try:
                engine = Engine(llama, options, threads=options.num_thread or settings.num_threads)
            except Exception:
                llama.close()
                raise
            metrics.load_seconds.observe(time.perf_counter() - started)
            size = inspector.memory_estimate(record, num_ctx=options.num_ctx, n_parallel=options.n_parallel)
            return Loaded(engine=engine, size=size, context_length=options.num_ctx, close=engine.close)

        return await asyncio.to_thread(build)

    return load


class RequestMetricsMiddleware:
    """Counts every request by route template and status (not raw path: bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: WorkerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(label, str(status)).inc()
            self.metrics.request_seconds.labels(label).observe(time.perf_counter() - started)


def create_app(settings: WorkerSettings) -> FastAPI:
    metrics = WorkerMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.OLLAMA_MODELS.mkdir(parents=True, exist_ok=True)
        gguf = GGUFCache(maxsize=_GGUF_CACHE_SIZE)
        inspector = ModelInspector(gguf)
        store = LocalStore(
            settings.OLLAMA_MODELS, gguf_cache=gguf, capabilities=inspector.capabilities,
            noprune=settings.OLLAMA_NOPRUNE,
        )
        scheduler = Scheduler(
            loader=make_loader(settings, inspector, metrics),
            num_parallel=settings.OLLAMA_NUM_PARALLEL,
            max_loaded=settings.max_loaded_models,
            max_queue=settings.OLLAMA_MAX_QUEUE,
            default_keep_alive=settings.keep_alive_seconds,
            load_timeout=settings.load_timeout_seconds,
            on_reject=metrics.rejections.inc,
        )
        inference = Inference(
            store=store, scheduler=scheduler, settings=settings, metrics=metrics, describe=inspector.describe
        )
        app.state.worker = WorkerState(settings, store, scheduler, inference, metrics)
        try:
            yield
        finally:
            await scheduler.close()

    app = FastAPI(title="Corral worker", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    app.include_router(router)
    listen = settings.listen
    app.add_middleware(
        OllamaAccessMiddleware,
        origins=settings.OLLAMA_ORIGINS,
        loopback_only=listen.host in ("127.0.0.1", "localhost", "::1"),
    )
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app
