"""Which models are loaded on this worker, who may use them, and when they go.

The worker's scheduler follows Ollama's (server/sched.go) where it matters to clients:
``OLLAMA_NUM_PARALLEL`` slots per loaded model, at most ``OLLAMA_MAX_LOADED_MODELS``
models, one load at a time, keep-alive expiry (a request's value overwrites the model's;
0 unloads after the request; negative pins), and a reload when a load-time option
changes. Unlike Ollama (its issue #7758), ``OLLAMA_MAX_QUEUE`` bounds every waiting
request, including those waiting for a slot on an already-loaded model.

Loading is a seam (``loader``), so tests can drive the real loop; the app passes one
that builds a llama.cpp engine.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from corral.api.errors import CorralError, ServerBusyError
from corral.worker.direct import cluster_keep_alive

logger = logging.getLogger(__name__)


@dataclass
class Loaded:
    """What a loader returns: the engine and what the scheduler reports about it."""

    engine: Any  # corral.worker.engine.Engine (kept abstract so tests can load anything)
    size: int
    context_length: int
    close: Callable[[], None]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class Runner:
    key: str
    name: str
    record: Any  # corral.store.local.ModelRecord
    options: Any  # corral.worker.engine.LoadOptions
    loaded: Loaded
    slots: asyncio.Semaphore
    keep_alive: float
    load_seconds: float
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    expires_at: float | None = None  # wall clock; None while in use
    closing: bool = False
    _timer: asyncio.TimerHandle | None = None

    @property
    def engine(self) -> Any:
        return self.loaded.engine


Loader = Callable[[Any, Any], Awaitable[Loaded]]


class Lease:
    """One request's hold on a slot of a runner; release exactly once."""

    def __init__(self, scheduler: Scheduler, runner: Runner, load_seconds: float) -> None:
        self._scheduler = scheduler
        self.runner = runner
        self.load_seconds = load_seconds
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._scheduler._release(self.runner)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class Scheduler:
    def __init__(
        self,
        *,
        loader: Loader,
        num_parallel: int,
        max_loaded: int,
        max_queue: int,
        default_keep_alive: float,
        load_timeout: float = math.inf,
        on_reject: Callable[[], None] | None = None,
    ) -> None:
        self._loader = loader
        self._num_parallel = num_parallel
        self._max_loaded = max_loaded
        self._max_queue = max_queue
        self._default_keep_alive = default_keep_alive
        self._load_timeout = load_timeout
        self._on_reject = on_reject or (lambda: None)
        self._runners: dict[str, Runner] = {}
        self._waiting: dict[str, int] = {}
        self._load_lock = asyncio.Lock()
        # Notified whenever a runner becomes idle or goes away: loads waiting for room retry.
        self._changed = asyncio.Condition()

    # -- requests ---------------------------------------------------------------------

    async def acquire(self, record: Any, options: Any, keep_alive: float | None) -> Lease:
        """Wait for a slot on ``record`` loaded with ``options``; load it if needed."""
        key = self.key(record)
        if self._waiting.get(key, 0) >= self._max_queue:
            self._on_reject()
            raise ServerBusyError()
        self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            while True:
                runner, load_seconds = await self._runner_for(key, record, options)
                await runner.slots.acquire()
                if runner.closing:
                    runner.slots.release()
                    continue
                break
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]
        runner.in_flight += 1
        runner.last_used = time.monotonic()
        runner.expires_at = None
        if runner._timer:
            runner._timer.cancel()
            runner._timer = None
        keep_alive = cluster_keep_alive.get() or keep_alive  # a direct request: the router owns keep-alive
        if keep_alive is not None:
            runner.keep_alive = keep_alive
        return Lease(self, runner, load_seconds)

    async def unload(self, record: Any) -> None:
        """Ollama's empty prompt with keep_alive 0: unload once the model is idle."""
        runner = self._runners.get(self.key(record))
        if runner is None:
            return
        runner.keep_alive = 0
        if runner.in_flight == 0:
            await self._unload(runner, reason="request")

    async def load(self, record: Any, options: Any, keep_alive: float | None) -> float:
        """Ollama's empty prompt: make sure the model is loaded; returns load seconds."""
        lease = await self.acquire(record, options, keep_alive)
        lease.release()
        return lease.load_seconds

    @staticmethod
    def key(record: Any) -> str:
        # Runners are per model name, not per weights file: variants of one GGUF are
        # distinct models to clients, ps and placement. On CPU their weights are mmapped,
        # so the pages are shared anyway.
        return record.name.display

    def waiting(self, key: str | None = None) -> int:
        if key is None:
            return sum(self._waiting.values())
        return self._waiting.get(key, 0)

    def runners(self) -> list[Runner]:
        return list(self._runners.values())

    async def close(self) -> None:
        for runner in list(self._runners.values()):
            await self._unload(runner, reason="shutdown")

    # -- internals ----------------------------------------------------------------------

    async def _runner_for(self, key: str, record: Any, options: Any) -> tuple[Runner, float]:
        while True:
            runner = self._runners.get(key)
            if runner is not None and not runner.closing:
                if runner.options == options and runner.record.digest == record.digest:
                    return runner, 0.0
                # A load-time option changed, or the model was re-created under this name:
                # reload once the old runner is idle (Ollama does the same).
                if runner.in_flight == 0:
                    await self._unload(runner, reason="reload")
                else:
                    await self._wait_for_change()
                continue
            async with self._load_lock:
                current = self._runners.get(key)
                if current is not None and not current.closing:
                    continue
                if await self._make_room():
                    runner = await self._load(key, record, options)
                    return runner, runner.load_seconds
            # Every loaded model is busy: wait for one to finish, then try again.
            await self._wait_for_change()

    async def _make_room(self) -> bool:
        """Evict the least recently used idle model if the worker is full."""
        live = [r for r in self._runners.values() if not r.closing]
        if len(live) < self._max_loaded:
            return True
        idle = [r for r in live if r.in_flight == 0]
        if not idle:
            return False
        victim = min(idle, key=lambda r: (math.isinf(r.keep_alive), r.last_used))
        await self._unload(victim, reason="capacity")
        return True

    async def _load(self, key: str, record: Any, options: Any) -> Runner:
        started = time.perf_counter()
        try:
            loaded = await asyncio.wait_for(self._loader(record, options), timeout=self._load_timeout)
        except TimeoutError as exc:
            raise CorralError("timed out waiting for llama runner to start") from exc
        load_seconds = time.perf_counter() - started
        runner = Runner(
            key=key,
            name=record.name.display,
            record=record,
            options=options,
            loaded=loaded,
            slots=asyncio.Semaphore(self._num_parallel),
            keep_alive=self._default_keep_alive,
            load_seconds=load_seconds,
        )
        self._runners[key] = runner
        logger.info("loaded %s in %.2fs", runner.name, load_seconds)
        return runner

    def _release(self, runner: Runner) -> None:
        runner.in_flight -= 1
        runner.last_used = time.monotonic()
        runner.slots.release()
        if runner.in_flight == 0 and not runner.closing:
            if runner.keep_alive <= 0:
                asyncio.get_running_loop().create_task(self._unload(runner, reason="keep_alive"))
            elif not math.isinf(runner.keep_alive):
                runner.expires_at = time.time() + runner.keep_alive
                runner._timer = asyncio.get_running_loop().call_later(
                    runner.keep_alive, lambda: asyncio.ensure_future(self._expire(runner))
                )
            else:
                runner.expires_at = math.inf
        asyncio.get_running_loop().create_task(self._notify())

    async def _expire(self, runner: Runner) -> None:
        if runner.in_flight == 0 and not runner.closing and self._runners.get(runner.key) is runner:
            await self._unload(runner, reason="expired")

    async def _unload(self, runner: Runner, *, reason: str) -> None:
        if runner.closing:
            return
        runner.closing = True
        if runner._timer:
            runner._timer.cancel()
        if self._runners.get(runner.key) is runner:
            del self._runners[runner.key]
        logger.info("unloading %s (%s)", runner.name, reason)
        await asyncio.to_thread(runner.loaded.close)
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _wait_for_change(self) -> None:
        async with self._changed:
            # Bounded so a missed notification can never strand a request.
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=1.0)
            except TimeoutError:
                pass
