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
import logging
import math
import time
from collections.abc import Awaitable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import httpx
from redis.exceptions import RedisError

from corral.api.durations import DurationError, parse_keep_alive
from corral.api.errors import CorralError, NotFoundError, RequestCanceledError, ServerBusyError, UpstreamError
from corral.api.gojson import dumps
from corral.cluster.tenants import CLUSTER_TOKEN_HEADER, TENANT_HEADER, Tenant, Usage
from corral.cluster.workers import (
    MODELS_GENERATION_HEADER,
    STATE_READY,
    WorkerInfo,
    live_workers,
    now_ms,
)
from corral.router.direct import Inbox
from corral.router.metrics import RouterMetrics
from corral.router.offline import OfflineLeases
from corral.router.placement import ModelSize, affinity_key, could_hold, expires_at, plan_load, too_big
from corral.router.settings import RouterSettings
from corral.router.state import QUEUE_RENEW_S, ClusterState
from corral.router.upstream import Reply, Upstream, WorkerConnectionError
from corral.store.gguf import kv_cache_bytes
from corral.store.names import ModelName, is_valid_name
from corral.store.oci import RegistryStore

logger = logging.getLogger(__name__)

WORKERS_CACHE_S = 0.5
SEEN_FRESH_S = 5.0  # the reaper reads the workers every second
# A model's size by name is kept this long, and dropped at once when a model changes through any
# router (the generation check); what changes behind Corral's back is seen within this time.
SIZE_BY_NAME_S = 2.0
QUEUE_POLL_S = 0.02
UNLOAD_TIMEOUT_S = 30.0
# Response headers that describe the hop, not the content.
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}
_RETRY_STATUSES = {502, 503, 504}


@dataclass(frozen=True)
class Relayed:
    """A worker's whole answer, passed on as it came (an error, or a request that needed no
    placement); the HTTP layer turns it into the response."""

    status: int
    headers: dict[str, str]
    body: bytes


class Downstream:
    """The client's side of one forwarded request, as far as placing it is concerned."""

    __slots__ = ("disconnected", "reply")

    def __init__(self) -> None:
        self.disconnected = False
        self.reply: Reply | None = None  # the worker's answer being waited for or relayed

    def gone(self) -> None:
        """The client left: stop queueing, and close the worker connection so the worker stops too."""
        self.disconnected = True
        if self.reply is not None:
            self.reply.fail(WorkerConnectionError("the client went away"))


@dataclass
class Forwarded:
    """A worker is answering: its reply, the body's first piece (all of it when not streamed)
    and the slot to give back when done."""

    reply: Reply
    first: bytes
    worker: WorkerInfo
    model: str
    keep_alive: float | None


@dataclass
class Placed:
    """A slot on a worker for a request nginx sends there itself, and what the worker must be told."""

    worker: WorkerInfo
    model: str
    keep_alive: float | None
    headers: list[tuple[str, str]]


class _Target(NamedTuple):
    model: str
    size: ModelSize
    keep_alive: float | None
    headers: list[tuple[str, str]]
    affinity: str


_T = TypeVar("_T")


class ClusterUnavailableError(CorralError):
    status = 503

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class Dispatcher:
    def __init__(
        self,
        settings: RouterSettings,
        state: ClusterState,
        store: RegistryStore,
        http: httpx.AsyncClient,
        metrics: RouterMetrics,
    ) -> None:
        self.settings = settings
        # Inference goes through the lean client; httpx serves the rare calls (unload, ps, show).
        self.upstream = Upstream(settings.CORRAL_CONNECT_TIMEOUT)
        self.metrics = metrics
        self.state = state
        self.store = store
        self.http = http
        self._workers: tuple[float, list[WorkerInfo]] = (0.0, [])
        self._seen: tuple[float, set[str]] = (-math.inf, set())
        self.inbox: Inbox | None = None  # direct streaming's reports (router/direct.py), when on
        self._reading_workers: asyncio.Future | None = None
        # The last known cluster, and the slots given out from it while Redis is away.
        self.offline = OfflineLeases()
        self._sizes: dict[str, ModelSize] = {}  # by the model's digest
        self._by_name: dict[str, tuple[float, ModelSize]] = {}
        self._models_generation = 0

    # -- cluster reads

    async def workers(self) -> list[WorkerInfo]:
        """The live workers: as Redis says (read at most every WORKERS_CACHE_S), or while Redis
        is away as it last said (ClusterUnavailableError when it never did)."""
        if self.offline.active:
            return self._last_known_workers()
        try:
            return await self._live_workers()
        except RedisError as exc:
            self.offline.redis_failed(exc)
            return self._last_known_workers()

    def seen_workers(self, workers: list[WorkerInfo]) -> None:
        """The reaper's read of the live workers (every second)."""
        self._seen = (time.monotonic(), {w.id for w in workers})

    def live_worker_ids(self) -> set[str] | None:
        """The workers alive at the reaper's last read; None when that read is old (Redis away)."""
        at, ids = self._seen
        return ids if time.monotonic() - at < SEEN_FRESH_S and not self.offline.active else None

    def _last_known_workers(self) -> list[WorkerInfo]:
        workers = self.offline.workers()
        if not workers:
            raise ClusterUnavailableError("cluster state unavailable: redis is unreachable and no worker is known")
        return workers

    async def _live_workers(self) -> list[WorkerInfo]:
        at, cached = self._workers
        if time.monotonic() - at < WORKERS_CACHE_S:
            now = now_ms()  # a lease may have run out since the list was read
            return [w for w in cached if w.lease_until > now]
        # One read for everyone: when the list expires under load, every request in flight
        # would otherwise read it again at once.
        if self._reading_workers is None:
            self._reading_workers = asyncio.ensure_future(self._read_workers())
        return await asyncio.shield(self._reading_workers)

    async def _read_workers(self) -> list[WorkerInfo]:
        try:
            # Right after an outage a worker's lease may have lapsed while its heartbeats failed:
            # it is taken as live until it beats again (or the grace ends and the reaper drops it).
            grace = self.offline.lease_grace_ms()
            workers = await live_workers(self.state.redis, lapsed_for_at_most_ms=grace)
            if grace:
                now = now_ms()
                for worker in workers:
                    worker.lease_until = max(worker.lease_until, now + int(WORKERS_CACHE_S * 1000))
            self._workers = (time.monotonic(), workers)
            return workers
        finally:
            self._reading_workers = None

    async def sync_models(self) -> bool:
        """Drop this router's cached registry reads if a model changed through any router since
        (True then)."""
        return self._models_seen(await self.state.models_generation())

    def _models_seen(self, generation: int) -> bool:
        if generation == self._models_generation:
            return False
        self._models_generation = generation
        self.store.invalidate()
        self._by_name.clear()
        return True

    async def model_size(self, model: str) -> ModelSize:
        """What loading the model takes: weights plus a KV cache per sequence at the default context."""
        at, size = self._by_name.get(model, (0.0, None))
        if size is not None and time.monotonic() - at < SIZE_BY_NAME_S:
            return size  # no trip to the store's thread for every request
        size = await self._model_size(model)
        if len(self._by_name) > 1024:
            self._by_name.clear()
        self._by_name[model] = (time.monotonic(), size)
        return size

    async def _model_size(self, model: str) -> ModelSize:
        record = await self.store.get(model)
        cached = self._sizes.get(record.digest)
        if cached is not None:
            return cached
        kv = 0
        if record.model_digest:
            try:
                info = await asyncio.to_thread(self.store.blob_gguf, record.model_digest)
                kv = kv_cache_bytes(info, num_ctx=self.settings.default_num_ctx, n_parallel=1)
            except (OSError, CorralError) as exc:
                logger.warning("no memory estimate for %s: %s", model, exc)
        size = ModelSize(record.size, kv)
        if len(self._sizes) > 1024:
            self._sizes.clear()
        self._sizes[record.digest] = size
        return size

    # -- one request

    async def forward(
        self,
        client: Downstream,
        path: str,
        body: dict[str, Any],
        usage: Usage | None = None,
        exclude: AbstractSet[str] = frozenset(),
    ) -> Forwarded | Relayed:
        """``usage``: the API key it came with (CORRAL_AUTH=keys): admitted with its first slot
        if it was not yet, and told to the worker for its tokens. ``exclude``: workers not to
        try (one that already failed this request)."""
        return await self._counted(self._forward(client, path, body, usage, set(exclude)))

    async def place(
        self,
        client: Downstream,
        path: str,
        body: dict[str, Any],
        usage: Usage | None = None,
        exclude: AbstractSet[str] = frozenset(),
    ) -> Placed | Relayed:
        """A slot for a request that nginx sends to the worker itself (direct streaming): the
        same placement as ``forward``, without the call. Failing over is then nginx's (it comes
        back with ``exclude``)."""
        return await self._counted(self._place(client, path, body, usage, set(exclude)))

    async def _counted(self, call: Awaitable[_T]) -> _T:
        try:
            return await call
        except RedisError as exc:
            self.metrics.rejections.labels("redis").inc()
            raise ClusterUnavailableError(f"cluster state unavailable: {exc}") from exc
        except ServerBusyError:
            self.metrics.rejections.labels("queue_full").inc()
            raise
        except ClusterUnavailableError:
            self.metrics.rejections.labels("redis" if self.offline.active else "no_workers").inc()
            raise

    async def _target(self, path: str, body: dict[str, Any], usage: Usage | None) -> _Target | Relayed:
        """Where a request may go: its model's size and the headers a worker gets with it, or
        the whole answer when it needs no placement (an unknown model, an unload)."""
        tenant = usage.tenant if usage is not None else None
        model = body.get("model")
        keep_alive = self._keep_alive(body)
        size = None
        if isinstance(model, str) and model and is_valid_name(model) and keep_alive is not None:
            size = await self._size_if_known(model)
        if size is None or not isinstance(model, str):  # unknown model or a bad field: a worker gives Ollama's answer
            if usage is not None:
                await usage.ensure_admitted()
            return await self.relay_anywhere(path, body, tenant=tenant)
        model = ModelName.parse(model).display  # one placement per model: "m" and "m:latest" are one
        if keep_alive == 0 and _is_empty(body):
            if usage is not None:
                await usage.ensure_admitted()
            return await self._unload_everywhere(model, path, body)
        headers = [
            ("content-type", "application/json"),
            (MODELS_GENERATION_HEADER, str(self._models_generation)),
            *self._cluster_headers(tenant),
        ]
        return _Target(model, size, keep_alive, headers, affinity_key(path, body))

    async def _place(
        self, client: Downstream, path: str, body: dict[str, Any], usage: Usage | None, exclude: set[str]
    ) -> Placed | Relayed:
        target = await self._target(path, body, usage)
        if isinstance(target, Relayed):
            return target
        worker = await self.lease(client, target.model, target.size, exclude, target.keep_alive, target.affinity, usage)
        if client.disconnected:
            await self.finish(worker, target.model, target.keep_alive)
            raise RequestCanceledError()
        return Placed(worker, target.model, target.keep_alive, target.headers)

    async def _forward(
        self, client: Downstream, path: str, body: dict[str, Any], usage: Usage | None, exclude: set[str]
    ) -> Forwarded | Relayed:
        target = await self._target(path, body, usage)
        if isinstance(target, Relayed):
            return target
        model, size, keep_alive, headers, affinity = target
        payload = dumps({**body, "keep_alive": -1} if path.startswith("/api/") else body).encode()
        last_error = "no worker could serve the request"
        started = time.perf_counter()
        timeout = self.settings.load_timeout_seconds
        for attempt in range(1 + self.settings.CORRAL_RETRIES):
            if attempt:
                self.metrics.retries.inc()
            worker = await self.lease(client, model, size, exclude, keep_alive, affinity, usage)
            reply = None
            try:
                if client.disconnected:
                    raise RequestCanceledError()
                reply = await self.upstream.post(
                    worker.url, path, payload, headers, first_byte_timeout=timeout, owner=client
                )
                if reply.status in _RETRY_STATUSES:
                    raise _Retry(f"worker {worker.id} answered {reply.status}")
                if reply.header(b"content-length") is not None:
                    first = await reply.read_all()  # not streamed: whole, so a cut is still retried
                else:
                    first = await reply.read_within(timeout)
            except (WorkerConnectionError, _Retry) as exc:
                if reply is not None:
                    reply.release()
                await self.finish(worker, model, keep_alive)
                if client.disconnected:
                    raise RequestCanceledError() from exc
                last_error = str(exc) if isinstance(exc, _Retry) else f"worker {worker.id}: {exc}"
                logger.warning("retrying %s elsewhere: %s", model, last_error)
                exclude.add(worker.id)
                continue
            except BaseException:
                if reply is not None:
                    reply.release()
                await asyncio.shield(self.finish(worker, model, keep_alive))
                raise
            self.metrics.ttfb.labels(path).observe(time.perf_counter() - started)
            return Forwarded(reply, first, worker, model, keep_alive)
        raise UpstreamError(last_error)

    async def _size_if_known(self, model: str) -> ModelSize | None:
        # The model-store generation comes with each acquire (read-your-writes across routers at
        # no extra round trip); a model this router has not seen yet is worth one fresh look.
        try:
            return await self.model_size(model)
        except NotFoundError:
            if self.offline.active or not await self._sync_models_if_up():
                return None
        try:
            return await self.model_size(model)
        except NotFoundError:
            return None

    async def _sync_models_if_up(self) -> bool:
        try:
            return await self.sync_models()
        except RedisError as exc:
            self.offline.redis_failed(exc)
            return False

    async def lease(
        self,
        client: Downstream,
        model: str,
        size: ModelSize,
        exclude: set[str],
        keep_alive: float | None,
        affinity: str = "",
        usage: Usage | None = None,
    ) -> WorkerInfo:
        """A slot for the request: in Redis, or while Redis is away from the last known placements."""
        if not self.offline.active:
            try:
                return await self._lease(client, model, size, exclude, keep_alive, affinity, usage)
            except RedisError as exc:
                self.offline.redis_failed(exc)
        worker = self.offline.lease(model, exclude)
        if worker is None:
            raise ClusterUnavailableError(
                f"cluster state unavailable: redis is unreachable and {model} is not placed on a known worker"
            )
        self.metrics.placements.labels("offline").inc()
        return worker

    async def _lease(
        self,
        client: Downstream,
        model: str,
        size: ModelSize,
        exclude: set[str],
        keep_alive: float | None,
        affinity: str = "",
        usage: Usage | None = None,
    ) -> WorkerInfo:
        place: str | None = None  # in the model's queue, once this request waits
        renewed = 0.0
        waited_since = time.monotonic()
        try:
            while True:
                everyone = await self.workers()
                ready = [w for w in everyone if w.state == STATE_READY and w.id not in exclude]
                if not ready:
                    raise ClusterUnavailableError("no workers available")
                admission = usage if usage is not None and not usage.admitted else None
                chosen = await self.state.acquire(model, ready, affinity, admission)
                self._models_seen(self.state.models_generation_seen)
                if chosen:
                    self.metrics.placements.labels("resident").inc()
                    return next(w for w in ready if w.id == chosen)
                placements = await self.state.placements([w.id for w in everyone])
                resident = any(p.model == model and p.worker in {w.id for w in ready} for p in placements)
                # Right after a Redis outage the slot counts still hold the slots of routers
                # that have not reconciled yet (their requests ended while Redis was away): a
                # model looks busy that is not, so no replica is loaded on that reading.
                hot = (
                    time.monotonic() - waited_since >= self.settings.CORRAL_REPLICATE_AFTER
                    and not self.offline.rejoining()
                )
                if not resident and not any(could_hold(w, size) for w in ready):
                    raise too_big(size, ready)
                if time.monotonic() - waited_since > self.settings.load_timeout_seconds:
                    raise ServerBusyError(f"timed out waiting for a worker to run {model}")
                if not resident or hot:
                    worker = await self._load(model, size, ready, everyone, exclude, keep_alive, replica=resident)
                    if worker is not None:
                        return worker
                if place is None:
                    place = await self.state.enqueue(model, self.settings.OLLAMA_MAX_QUEUE)
                    if place is None:
                        raise ServerBusyError()
                    renewed = time.monotonic()
                elif time.monotonic() - renewed >= QUEUE_RENEW_S:
                    await self.state.keep_place(model, place)
                    renewed = time.monotonic()
                if client.disconnected:
                    raise RequestCanceledError()
                await asyncio.sleep(QUEUE_POLL_S)
        finally:
            if place is not None:
                await asyncio.shield(self.state.dequeue(model, place))

    async def _load(
        self,
        model: str,
        size: ModelSize,
        ready: list[WorkerInfo],
        everyone: list[WorkerInfo],
        exclude: set[str],
        keep_alive: float | None,
        *,
        replica: bool,
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
            await self.state.place(plan.worker.id, model, size.on(plan.worker), expires_at(keep_alive))
            self.metrics.loads.labels("replica" if replica else "first").inc()
            self.metrics.placements.labels("loaded").inc()
            logger.info("placing %s on %s (evicted %s)", model, plan.worker.id, [v.model for v in plan.evict])
            return plan.worker
        finally:
            await self.state.unlock(token)

    async def finish(
        self, worker: WorkerInfo, model: str, keep_alive: float | None, usage: Usage | None = None, failed: bool = False
    ) -> None:
        """Give the slot back; with ``usage`` (a keyed request), write its end in the same script."""
        if self.offline.release(worker.id, model, expires_at(keep_alive)):
            return  # a slot taken while Redis was away (its keep-alive is set when Redis is back)
        try:
            told = usage.finish_keys_args(failed) if usage is not None and not usage.recorded else None
            remaining = await self.state.release(worker.id, model, expires_at(keep_alive), told)
            if usage is not None and told is not None:
                usage.recorded = True
            if (
                keep_alive == 0
                and remaining == 0
                and await self.state.claim_unload(worker.id, model, expired_only=False)
            ):
                self.metrics.evictions.labels("request").inc()
                await self.unload(worker, model)
        except RedisError as exc:
            self.offline.redis_failed(exc)
            logger.warning(
                "could not release %s on %s (its slot lapses, or is put back when Redis returns): %s",
                model,
                worker.id,
                exc,
            )

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

    def _cluster_headers(self, tenant: Tenant | None) -> list[tuple[str, str]]:
        """What workers are told besides the body: the cluster token, and whose request it is."""
        token = self.settings.cluster_token
        if not token:
            return []
        if tenant is None:
            return [(CLUSTER_TOKEN_HEADER, token)]
        return [(CLUSTER_TOKEN_HEADER, token), (TENANT_HEADER, tenant.header)]

    async def relay_anywhere(
        self, path: str, body: dict[str, Any], avoid: AbstractSet[str] = frozenset(), *, tenant: Tenant | None = None
    ) -> Relayed:
        if not self.offline.active:
            await self._sync_models_if_up()  # the answer can come from a worker either way
        ready = [w for w in await self.workers() if w.state == STATE_READY]
        workers = [w for w in ready if w.id not in avoid] or ready
        if not workers:
            raise ClusterUnavailableError("no workers available")
        try:
            reply = await self.http.post(
                workers[0].url + path,
                content=dumps(body).encode(),
                timeout=60,
                headers={
                    "content-type": "application/json",
                    MODELS_GENERATION_HEADER: str(self._models_generation),
                    **dict(self._cluster_headers(tenant)),
                },
            )
        except httpx.HTTPError as exc:
            raise UpstreamError(f"worker {workers[0].id}: {exc}") from exc
        return Relayed(
            reply.status_code, {k: v for k, v in reply.headers.items() if k.lower() not in HOP_HEADERS}, reply.content
        )

    async def _unload_everywhere(self, model: str, path: str, body: dict[str, Any]) -> Relayed:
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

    def forget_workers(self) -> None:
        """Read the workers from Redis on the next look (after it comes back)."""
        self._workers = (0.0, [])

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
        return {"workers": by_state, "placed": placed, "queues": await self.state.queue_depths()}


class _Retry(Exception):
    pass


def _is_empty(body: dict[str, Any]) -> bool:
    """Ollama's load/unload request: nothing to run (a transcription's content is its ``file``)."""
    return not any(body.get(k) for k in ("prompt", "messages", "input", "file"))
