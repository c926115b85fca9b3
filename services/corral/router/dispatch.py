"""One inference request through the cluster: a slot on a worker, the trip there and back.

1. ``lease``: a slot on the least loaded worker holding the model (one atomic Redis step);
   else, under the placement lock, a load on the worker ``placement.plan_load`` picks
   (evicting idle least-recently-used models first); else the request joins the model's
   bounded cluster-wide queue (full: Ollama's 503) and tries again. A request that has
   waited ``CORRAL_REPLICATE_AFTER`` on a busy model loads another replica where one fits.
2. ``forward``: the body goes to the worker as it came, except ``keep_alive``, which the
   router owns (the worker is told never to unload; the reaper unloads on expiry). Until the
   first byte of the answer reaches the client, a failed worker (refused, reset, 502-504) is
   left out and the request is placed again: every non-streamed request and the start of
   every stream survive a worker dying. A stream cut later ends with an error line (NDJSON)
   or an error event (SSE). Every worker call has timeouts; nothing waits forever.
3. The slot is given back with the request's keep-alive; ``keep_alive: 0`` unloads at once
   when nothing else runs there.

Error wording for bad requests lives in the workers: a request the router cannot place
because its model is unknown or invalid goes to any live worker, which answers exactly as a
single Ollama would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from redis.exceptions import RedisError

from corral.api.durations import DurationError, parse_keep_alive
from corral.api.errors import CorralError, NotFoundError, RequestCanceledError, ServerBusyError, UpstreamError
from corral.api.streams import ndjson_line
from corral.cluster.workers import MODELS_GENERATION_HEADER, STATE_READY, WorkerInfo, lapsed_workers, live_workers, now_ms
from corral.router.metrics import RouterMetrics
from corral.router.placement import plan_load
from corral.router.settings import RouterSettings
from corral.router.state import NEVER, ClusterState
from corral.store.gguf import kv_cache_bytes
from corral.store.names import ModelName, is_valid_name
from corral.store.oci import RegistryStore

logger = logging.getLogger(__name__)

WORKERS_CACHE_S = 0.5
QUEUE_POLL_S = 0.02
UNLOAD_TIMEOUT_S = 30.0
# Response headers that describe the hop, not the content.
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}
_RETRY_STATUSES = {502, 503, 504}


@dataclass(frozen=True)
class ModelSize:
    weights: int
    kv_per_sequence: int

    def on(self, worker: WorkerInfo) -> int:
        return self.weights + self.kv_per_sequence * max(1, worker.num_parallel)


class ClusterUnavailableError(CorralError):
    status = 503

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class Dispatcher:
    def __init__(
        self, settings: RouterSettings, state: ClusterState, store: RegistryStore, http: httpx.AsyncClient,
        metrics: RouterMetrics,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.state = state
        self.store = store
        self.http = http
        self._workers: tuple[float, list[WorkerInfo]] = (0.0, [])
        self._sizes: dict[str, ModelSize] = {}
        self._models_generation = 0

    # -- cluster reads

    async def workers(self) -> list[WorkerInfo]:
        at, cached = self._workers
        if time.monotonic() - at < WORKERS_CACHE_S:
            return cached
        workers = await live_workers(self.state.redis)
        self._workers = (time.monotonic(), workers)
        return workers

    async def sync_models(self) -> None:
        """Drop this router's cached registry reads if a model changed through any router since."""
        generation = await self.state.models_generation()
        if generation != self._models_generation:
            self._models_generation = generation
            self.store.invalidate()

    async def model_size(self, model: str) -> ModelSize:
        """What loading the model takes: weights plus a KV cache per sequence at the default context."""
        record = await self.store.get(model)
        cached = self._sizes.get(record.digest)
        if cached is not None:
            return cached
        kv = 0
        if record.model_digest:
            try:
                info = await asyncio.to_thread(self.store._blob_gguf, record.model_digest)
                kv = kv_cache_bytes(info, num_ctx=self.settings.default_num_ctx, n_parallel=1)
            except (OSError, CorralError) as exc:
                logger.warning("no memory estimate for %s: %s", model, exc)
        size = ModelSize(record.size, kv)
        if len(self._sizes) > 1024:
            self._sizes.clear()
        self._sizes[record.digest] = size
        return size

    # -- one request

    async def forward(self, request: Request, path: str, body: dict[str, Any]) -> Response:
        try:
            return await self._forward(request, path, body)
        except RedisError as exc:
            self.metrics.rejections.labels("redis").inc()
            raise ClusterUnavailableError(f"cluster state unavailable: {exc}") from exc
        except ServerBusyError:
            self.metrics.rejections.labels("queue_full").inc()
            raise
        except ClusterUnavailableError:
            self.metrics.rejections.labels("no_workers").inc()
            raise

    async def _forward(self, request: Request, path: str, body: dict[str, Any]) -> Response:
        model = body.get("model")
        keep_alive = self._keep_alive(body)
        size = None
        if isinstance(model, str) and model and is_valid_name(model) and keep_alive is not None:
            try:
                size = await self.model_size(model)
            except NotFoundError:
                size = None
        if size is None:  # unknown model or a bad field: let a worker give Ollama's answer
            return await self.relay_anywhere(path, body)
        model = ModelName.parse(model).display  # one placement per model: "m" and "m:latest" are one
        if keep_alive == 0 and _is_empty(body):
            return await self._unload_everywhere(model, path, body)
        payload = json.dumps({**body, "keep_alive": -1} if path.startswith("/api/") else body).encode()
        exclude: set[str] = set()
        last_error = "no worker could serve the request"
        started = time.perf_counter()
        for attempt in range(1 + self.settings.CORRAL_RETRIES):
            if attempt:
                self.metrics.retries.inc()
            worker = await self.lease(request, model, size, exclude, keep_alive)
            try:
                upstream = await self._send(worker, path, payload)
                if upstream.status_code in _RETRY_STATUSES:
                    last_error = f"worker {worker.id} answered {upstream.status_code}"
                    await upstream.aclose()
                    raise _Retry()
                chunks = upstream.aiter_raw()
                first = await _first(chunks, self.settings.load_timeout_seconds)
            except (httpx.TransportError, _Retry, asyncio.TimeoutError) as exc:
                if not isinstance(exc, _Retry):
                    last_error = f"worker {worker.id}: {type(exc).__name__}: {exc}"
                logger.warning("retrying %s elsewhere: %s", model, last_error)
                exclude.add(worker.id)
                await self.finish(worker, model, keep_alive)
                continue
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self.finish(worker, model, keep_alive)
                raise
            self.metrics.ttfb.labels(path).observe(time.perf_counter() - started)
            return StreamingResponse(
                self._relay(first, chunks, upstream, worker, model, keep_alive),
                status_code=upstream.status_code,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in _HOP},
            )
        raise UpstreamError(last_error)

    async def lease(
        self, request: Request, model: str, size: ModelSize, exclude: set[str], keep_alive: float | None
    ) -> WorkerInfo:
        queued = False
        waited_since = time.monotonic()
        try:
            while True:
                everyone = await self.workers()
                ready = [w for w in everyone if w.state == STATE_READY and w.id not in exclude]
                if not ready:
                    raise ClusterUnavailableError("no workers available")
                chosen = await self.state.acquire(model, ready)
                if chosen:
                    self.metrics.placements.labels("resident").inc()
                    return next(w for w in ready if w.id == chosen)
                placements = await self.state.placements([w.id for w in everyone])
                resident = any(p.model == model and p.worker in {w.id for w in ready} for p in placements)
                hot = time.monotonic() - waited_since >= self.settings.CORRAL_REPLICATE_AFTER
                if not resident and not any(_could_hold(w, size) for w in ready):
                    raise _too_big(size, ready)
                if time.monotonic() - waited_since > self.settings.load_timeout_seconds:
                    raise ServerBusyError(f"timed out waiting for a worker to run {model}")
                if not resident or hot:
                    worker = await self._load(model, size, ready, everyone, exclude, keep_alive, replica=resident)
                    if worker is not None:
                        return worker
                if not queued:
                    if not await self.state.enqueue(model, self.settings.OLLAMA_MAX_QUEUE):
                        raise ServerBusyError()
                    queued = True
                if await request.is_disconnected():
                    raise RequestCanceledError()
                await asyncio.sleep(QUEUE_POLL_S)
        finally:
            if queued:
                with anyio.CancelScope(shield=True):
                    await self.state.dequeue(model)

    async def _load(
        self, model: str, size: ModelSize, ready: list[WorkerInfo], everyone: list[WorkerInfo], exclude: set[str],
        keep_alive: float | None, *, replica: bool,
    ) -> WorkerInfo | None:
        token = await self.state.lock(timeout=1.0)
        if token is None:
            return None
        try:
            chosen = await self.state.acquire(model, ready)  # another router placed it meanwhile
            if chosen:
                self.metrics.placements.labels("resident").inc()
                return next(w for w in ready if w.id == chosen)
            placements = await self.state.placements([w.id for w in everyone])
            if not replica and any(p.model == model and p.worker in {w.id for w in ready} for p in placements):
                return None  # placed by another request while this one waited for the lock: queue for it
            plan = plan_load(model, size.on, ready, placements, exclude=exclude)
            if plan is None:
                return None
            for victim in plan.evict:
                if not await self.state.claim_unload(victim.worker, victim.model, expired_only=False):
                    return None  # it got busy: decide again
                self.metrics.evictions.labels("lru").inc()
                await self.unload(plan.worker, victim.model)
            # Until its first request is done, a model being loaded shows now + keep-alive, as in Ollama.
            await self.state.place(plan.worker.id, model, size.on(plan.worker), _expires_at(keep_alive))
            self.metrics.loads.labels("replica" if replica else "first").inc()
            self.metrics.placements.labels("loaded").inc()
            logger.info("placing %s on %s (evicted %s)", model, plan.worker.id, [v.model for v in plan.evict])
            return plan.worker
        finally:
            await self.state.unlock(token)

    async def finish(self, worker: WorkerInfo, model: str, keep_alive: float | None) -> None:
        try:
            remaining = await self.state.release(worker.id, model, _expires_at(keep_alive))
            if keep_alive == 0 and remaining == 0:
                if await self.state.claim_unload(worker.id, model, expired_only=False):
                    self.metrics.evictions.labels("request").inc()
                    await self.unload(worker, model)
        except RedisError as exc:
            logger.warning("could not release %s on %s: %s", model, worker.id, exc)

    async def unload(self, worker: WorkerInfo, model: str) -> None:
        try:
            await self.http.post(
                worker.url + "/api/generate", json={"model": model, "keep_alive": 0}, timeout=UNLOAD_TIMEOUT_S
            )
        except httpx.HTTPError as exc:
            logger.warning("unloading %s on %s failed: %s", model, worker.id, exc)

    # -- helpers

    def _keep_alive(self, body: dict[str, Any]) -> float | None:
        """The request's keep-alive in seconds (inf = forever), the router's default if absent;
        None when it does not parse (the worker then answers with Ollama's error)."""
        if "keep_alive" not in body or body["keep_alive"] is None:
            return self.settings.keep_alive_seconds
        try:
            return parse_keep_alive(body["keep_alive"])
        except DurationError:
            return None

    async def _send(self, worker: WorkerInfo, path: str, payload: bytes) -> httpx.Response:
        headers = {"Content-Type": "application/json", MODELS_GENERATION_HEADER: str(self._models_generation)}
        request = self.http.build_request("POST", worker.url + path, content=payload, headers=headers)
        return await self.http.send(request, stream=True)

    async def _relay(
        self, first: bytes, chunks: AsyncIterator[bytes], upstream: httpx.Response, worker: WorkerInfo,
        model: str, keep_alive: float | None,
    ) -> AsyncIterator[bytes]:
        try:
            if first:
                yield first
            try:
                async for chunk in chunks:
                    yield chunk
            except httpx.HTTPError as exc:
                logger.warning("stream from %s cut: %s", worker.id, exc)
                message = f"worker {worker.id} failed mid-stream: {type(exc).__name__}"
                if "text/event-stream" in upstream.headers.get("content-type", ""):
                    yield f"data: {json.dumps({'error': {'message': message, 'type': 'api_error'}})}\n\n".encode()
                else:
                    yield ndjson_line({"error": message})
        finally:
            # A client that leaves cancels this task, and every await after that: shielded,
            # the slot is given back all the same.
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
                await self.finish(worker, model, keep_alive)

    async def relay_anywhere(self, path: str, body: dict[str, Any], avoid: set[str] = frozenset()) -> Response:
        ready = [w for w in await self.workers() if w.state == STATE_READY]
        workers = [w for w in ready if w.id not in avoid] or ready
        if not workers:
            raise ClusterUnavailableError("no workers available")
        try:
            reply = await self.http.post(
                workers[0].url + path, json=body, timeout=60,
                headers={MODELS_GENERATION_HEADER: str(self._models_generation)},
            )
        except httpx.HTTPError as exc:
            raise UpstreamError(f"worker {workers[0].id}: {exc}") from exc
        return Response(reply.content, status_code=reply.status_code,
                        headers={k: v for k, v in reply.headers.items() if k.lower() not in _HOP})

    async def _unload_everywhere(self, model: str, path: str, body: dict[str, Any]) -> Response:
        """``keep_alive: 0`` with nothing to run: unload the model from every worker holding it."""
        everyone = await self.workers()
        holders = {p.worker for p in await self.state.placements([w.id for w in everyone]) if p.model == model}
        busy = set()
        for worker in everyone:
            if worker.id not in holders:
                continue
            if await self.state.claim_unload(worker.id, model, expired_only=False):
                self.metrics.evictions.labels("request").inc()
                await self.unload(worker, model)
            else:
                busy.add(worker.id)  # requests still run there: the reaper unloads it later
        # The answer comes from a worker (Ollama's wording lives there), but never from one
        # still serving the model: the unload order would reach it behind the router's back.
        return await self.relay_anywhere(path, body, avoid=busy)

    async def snapshot(self) -> dict[str, Any]:
        """Cluster gauges for /metrics, read from Redis now."""
        redis = self.state.redis
        workers = await live_workers(redis)
        by_state: dict[str, int] = {}
        for worker in workers:
            by_state[worker.state] = by_state.get(worker.state, 0) + 1
        placed: dict[str, int] = {}
        for placement in await self.state.placements([w.id for w in workers]):
            placed[placement.model] = placed.get(placement.model, 0) + 1
        queues = {}
        async for key in redis.scan_iter(match="corral:waiting:*", count=500):
            name = key.decode() if isinstance(key, bytes) else key
            queues[name.split(":", 2)[2]] = int(await redis.get(key) or 0)
        return {"workers": by_state, "placed": placed, "queues": queues}

    # -- the reaper

    async def reap(self) -> None:
        """Unload expired idle placements and forget lapsed workers; every router runs this,
        and each expiry is claimed once."""
        redis = self.state.redis
        await self.state.renew()
        if given_back := await self.state.reap_slots():
            logger.warning("gave back %d slots whose router stopped renewing them", given_back)
        for worker_id in await lapsed_workers(redis):
            logger.warning("worker %s missed its heartbeats: dropping it and its models", worker_id)
            self.metrics.evictions.labels("worker_lost").inc(
                len([p for p in await self.state.placements([worker_id])])
            )
            await self.state.drop_worker(worker_id)
            await redis.zrem("corral:workers", worker_id)
        everyone = await live_workers(redis)
        by_id = {w.id: w for w in everyone}
        now = now_ms()
        for placement in await self.state.placements(list(by_id)):
            if placement.expires_at == NEVER or placement.expires_at > now or placement.in_flight:
                continue
            if await self.state.claim_unload(placement.worker, placement.model, expired_only=True):
                logger.info("keep-alive expired: unloading %s on %s", placement.model, placement.worker)
                self.metrics.evictions.labels("keep_alive").inc()
                await self.unload(by_id[placement.worker], placement.model)


class _Retry(Exception):
    pass


def _could_hold(worker: WorkerInfo, size: ModelSize) -> bool:
    """Whether the worker could hold the model with everything else unloaded."""
    return not worker.memory_total or size.on(worker) <= worker.memory_total


def _too_big(size: ModelSize, workers: list[WorkerInfo]) -> CorralError:
    # Ollama's wording when a model cannot fit the machine at all.
    need = min(size.on(w) for w in workers)
    have = max(w.memory_total for w in workers)
    return CorralError(
        f"model requires more system memory ({need / (1 << 30):.1f} GiB) than is available ({have / (1 << 30):.1f} GiB)"
    )


def _expires_at(keep_alive: float | None) -> int:
    if keep_alive is None or math.isinf(keep_alive) or keep_alive < 0:
        return NEVER
    return now_ms() + int(keep_alive * 1000)


async def _first(chunks: AsyncIterator[bytes], timeout: float) -> bytes:
    try:
        return await asyncio.wait_for(chunks.__anext__(), timeout=None if math.isinf(timeout) else timeout)
    except StopAsyncIteration:
        return b""


def _is_empty(body: dict[str, Any]) -> bool:
    return not body.get("prompt") and not body.get("messages") and not body.get("input")
