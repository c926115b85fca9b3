"""Wiring of the worker: ``create_app(settings)`` and the lifespan that owns every resource."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from corral.api.cloud import router as cloud_router
from corral.api.http import serve_ollama_api
from corral.cluster.model_times import RedisModelTimes
from corral.cluster.workers import MODELS_GENERATION_HEADER
from corral.store.cache import BlobCache
from corral.store.gguf import GGUFCache
from corral.store.local import LocalStore
from corral.store.manifest import manifest_digests
from corral.store.oci import RegistryStore
from corral.store.pull import Registries
from corral.store.registry import RegistryClient
from corral.store.routes import router as models_router
from corral.worker.direct import DirectLeaseMiddleware, DirectReports
from corral.worker.engine import Engine, LlamaModel, LoadOptions
from corral.worker.inference import Inference
from corral.worker.metrics import WorkerMetrics
from corral.worker.modelinfo import ModelInspector
from corral.worker.registration import Registration, device_and_memory
from corral.worker.routes import router
from corral.worker.scheduler import Loaded, Scheduler
from corral.worker.settings import WorkerSettings
from corral.worker.state import WorkerState
from corral.worker.tenancy import ClusterTokenMiddleware, UsageReporter
from corral.worker.vision import Vision

logger = logging.getLogger(__name__)

_GGUF_CACHE_SIZE = 32  # parsed GGUF headers kept; one per distinct model blob


def vram_bytes(size: int, num_gpu: int, n_layer: int) -> int:
    """The part of a loaded model's ``size`` that ``/api/ps`` reports as ``size_vram`` on a GPU
    worker: all of it when every layer is offloaded (``num_gpu`` < 0, Ollama's "as many as
    fit", which llama.cpp turns into all), else the offloaded share of the n_layer blocks plus
    the output layer, as llama.cpp counts ``n_gpu_layers``."""
    layers = n_layer + 1
    if num_gpu < 0 or num_gpu >= layers:
        return size
    return size * num_gpu // layers


def _step_observer(metrics: WorkerMetrics, model: str):
    decode = metrics.step_seconds.labels(model, "decode")
    host = metrics.step_seconds.labels(model, "host")

    def observe(decode_s: float, host_s: float | None) -> None:
        decode.observe(decode_s)
        if host_s is not None:
            host.observe(host_s)

    return observe


def make_loader(settings: WorkerSettings, inspector: ModelInspector, metrics: WorkerMetrics, *, gpu: bool):
    async def load(record: Any, options: LoadOptions) -> Loaded:
        def build() -> Loaded:
            started = time.perf_counter()
            llama = LlamaModel(record.model_path, options)
            threads = options.num_thread or settings.num_threads
            vision = None
            try:
                if record.projectors:
                    vision = Vision(record.projectors[0], llama, threads=threads, gpu=gpu and options.num_gpu != 0)
                engine = Engine(
                    llama,
                    options,
                    threads=threads,
                    on_step=_step_observer(metrics, record.name.display),
                    vision=vision,
                )
            except Exception:
                if vision is not None:
                    vision.close()
                llama.close()
                raise
            metrics.load_seconds.observe(time.perf_counter() - started)
            size = inspector.memory_estimate(record, num_ctx=options.num_ctx, n_parallel=options.n_parallel)
            vram = vram_bytes(size, options.num_gpu, llama.n_layer) if gpu else 0
            return Loaded(
                engine=engine, size=size, context_length=options.num_ctx, close=engine.close, extra={"size_vram": vram}
            )

        return await asyncio.to_thread(build)

    return load


def cluster_stores(settings: WorkerSettings, local: LocalStore, registries: Registries, inspector, scheduler):
    """(store for the API, store inference loads from): the local store twice, or in a
    cluster the registry for the API and the local blob cache of it for loading."""
    if not settings.CORRAL_REGISTRY_URL:
        return local, local
    # With the cluster's Redis, model times are the cluster's (the same through every router).
    times = RedisModelTimes(settings.REDIS_URL) if settings.REDIS_URL else None
    cluster = RegistryStore(
        settings.CORRAL_REGISTRY_URL,
        client=registries.client,
        spool_dir=settings.OLLAMA_MODELS / ".spool",
        capabilities=inspector.capabilities,
        times=times,
    )

    def in_use() -> set[str]:
        # Blobs of loaded models stay: the engine has them open.
        return {h for runner in scheduler.runners() for h in manifest_digests(runner.record.manifest)}

    cache = BlobCache(cluster, local, registries, max_bytes=settings.CORRAL_CACHE_MAX_BYTES, in_use=in_use)
    return cluster, cache


class ModelsGenerationMiddleware:
    """In a cluster: drop cached registry reads when a router says the models changed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen = b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for key, value in scope["headers"]:
                if key == MODELS_GENERATION_HEADER.encode() and value != self.seen:
                    self.seen = value
                    store = getattr(scope["app"].state, "models", None)
                    invalidate = getattr(getattr(store, "store", None), "invalidate", None)
                    if invalidate is not None:
                        invalidate()
        await self.app(scope, receive, send)


def create_app(settings: WorkerSettings) -> FastAPI:
    """The worker's app. With REDIS_URL, ``app.state.registration`` is its membership of the
    cluster: ``WorkerServer`` (``corral worker``) starts it once listening and drains it on
    SIGTERM; the lifespan owns it and deregisters at the end."""
    metrics = WorkerMetrics()
    registration = Registration(settings) if settings.REDIS_URL else None
    reports = DirectReports(settings.REDIS_URL) if settings.REDIS_URL else None  # direct streaming (nginx)
    # The device and the memory offered for models, as the cluster is told (detected once).
    device, memory = (
        (registration.info.device, registration.info.memory_total) if registration else device_and_memory(settings)
    )
    metrics.memory_bytes.set(memory)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.OLLAMA_MODELS.mkdir(parents=True, exist_ok=True)
        gguf = GGUFCache(maxsize=_GGUF_CACHE_SIZE)
        inspector = ModelInspector(gguf)
        registries = Registries(RegistryClient(), mirrors=settings.registry_mirrors)
        local = LocalStore(
            settings.OLLAMA_MODELS,
            gguf_cache=gguf,
            capabilities=inspector.capabilities,
            noprune=settings.OLLAMA_NOPRUNE or bool(settings.CORRAL_REGISTRY_URL),
        )
        scheduler = Scheduler(
            loader=make_loader(settings, inspector, metrics, gpu=device == "cuda"),
            num_parallel=settings.OLLAMA_NUM_PARALLEL,
            max_loaded=settings.max_loaded_models,
            max_queue=settings.OLLAMA_MAX_QUEUE,
            default_keep_alive=settings.keep_alive_seconds,
            load_timeout=settings.load_timeout_seconds,
            on_reject=metrics.rejections.inc,
        )
        store, models = cluster_stores(settings, local, registries, inspector, scheduler)
        usage = UsageReporter(settings.REDIS_URL, metrics) if settings.REDIS_URL else None
        inference = Inference(
            store=models, scheduler=scheduler, settings=settings, metrics=metrics, inspector=inspector, usage=usage
        )
        app.state.worker = app.state.models = WorkerState(settings, store, scheduler, inference, metrics, registries)
        try:
            async with registration or nullcontext():  # on the way out, requests have drained
                yield
        finally:
            await scheduler.close()
            if usage is not None:
                await usage.close()
            if reports is not None:
                await reports.close()

    app = FastAPI(title="Corral worker", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.registration = registration
    app.include_router(router)
    app.include_router(models_router)
    app.include_router(cloud_router)
    serve_ollama_api(app, settings, metrics)
    if settings.CORRAL_REGISTRY_URL:
        app.add_middleware(ModelsGenerationMiddleware)
    if reports is not None:  # inside the token check: only a router's requests report
        app.add_middleware(DirectLeaseMiddleware, reports=reports)
    if settings.cluster_token:
        app.add_middleware(ClusterTokenMiddleware, token=settings.cluster_token)
    return app
