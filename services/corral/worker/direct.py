"""The worker's side of direct streaming (``corral.cluster.direct``): a request that nginx sent
here for a router carries the router's lease; the worker reports its start and its end to the
router's inbox, so that the router gives its slot back, and keeps the model loaded as a relayed
request would (the router, not the request, decides when a model leaves a worker).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections import deque
from contextlib import suppress
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.cluster import direct
from corral.cluster.redis_client import async_client

logger = logging.getLogger(__name__)

_LEASE = direct.LEASE_HEADER.encode()
MAX_QUEUED_REPORTS = 65536  # reports waiting on Redis; past this they are dropped (the slot then lapses)
PUSH_BATCH = 256
RETRY_S = 0.5  # while Redis is away

# A relayed /api/ request reaches the worker with keep_alive -1 (the router owns keep-alive); a
# direct one comes as the client sent it, so the scheduler is told to read it as -1 here.
cluster_keep_alive: contextvars.ContextVar[float | None] = contextvars.ContextVar("cluster_keep_alive", default=None)


class DirectReports:
    """Pushes reports to routers' inboxes, off the request's path: one task, in order, batched,
    and kept while Redis is away (then pushed when it is back, so that no slot stays taken)."""

    def __init__(self, redis_url: str) -> None:
        self.redis: Any = async_client(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._queue: deque[tuple[str, str]] = deque()
        self._wake: asyncio.Event | None = None  # made on first use, in the running loop
        self._empty: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._failing = False

    def __call__(self, lease: direct.Lease, report: direct.Report) -> None:
        if len(self._queue) >= MAX_QUEUED_REPORTS:
            logger.warning("report for %s dropped: %d reports already wait on Redis", lease.inbox, len(self._queue))
            return
        self._queue.append((lease.inbox, report.line()))
        if self._task is None:
            self._wake, self._empty = asyncio.Event(), asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._push_all(), name="corral-direct-reports")
        assert self._wake is not None and self._empty is not None
        self._empty.clear()
        self._wake.set()

    async def _push_all(self) -> None:
        assert self._wake is not None and self._empty is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), PUSH_BATCH))]
                try:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for inbox, line in batch:
                            direct.deliver(pipe, inbox, line)
                        await pipe.execute()
                    if self._failing:
                        logger.info("reports reach Redis again")
                    self._failing = False
                except Exception as exc:  # kept, in order, for when Redis is back
                    self._queue.extendleft(reversed(batch))
                    if not self._failing:
                        logger.warning("reports to routers wait for Redis: %s", exc)
                    self._failing = True
                    await asyncio.sleep(RETRY_S)
            self._empty.set()

    async def close(self) -> None:
        if self._task is not None:
            assert self._empty is not None
            with suppress(TimeoutError):  # the last reports, if Redis takes them
                await asyncio.wait_for(self._empty.wait(), 5)
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        await self.redis.aclose()


class DirectLeaseMiddleware:
    """Reports a leased request's start and end (with its status; 0: no answer began)."""

    def __init__(self, app: ASGIApp, reports: DirectReports) -> None:
        self.app = app
        self.reports = reports

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lease = None
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == _LEASE:
                    lease = direct.Lease.parse(value.decode("latin-1"))
                    break
        if lease is None:
            await self.app(scope, receive, send)
            return
        self.reports(lease, direct.Report(direct.STARTED, lease.id))
        started = time.monotonic()
        status, first_byte_ms = 0, -1

        async def watched(message: Message) -> None:
            nonlocal status, first_byte_ms
            if message["type"] == "http.response.start":
                status = message["status"]
            elif first_byte_ms < 0 and message.get("body"):
                first_byte_ms = int((time.monotonic() - started) * 1000)
            await send(message)

        reset = cluster_keep_alive.set(math.inf) if scope["path"].startswith("/api/") else None
        try:
            await self.app(scope, receive, watched)
        finally:
            if reset is not None:
                cluster_keep_alive.reset(reset)
            self.reports(lease, direct.Report(direct.ENDED, lease.id, status, first_byte_ms))
