"""The router's side of direct streaming (``corral.cluster.direct``): requests it placed and
handed to nginx, and its inbox, where workers report their start and end.

Each router process has its own inbox (a Redis list, read with BLPOP by one task). A direct
request's slot is held, and renewed like any other, until its worker reports the end; then it
is given back exactly as after a relay (``Dispatcher.finish``: keep-alive, the key's usage,
the unload of a keep_alive 0 request). What can go wrong is bounded:
- nginx could not reach the worker, or it answered 502/503/504: nginx sends the request back
  to a router with the lease (``RETRY_HEADER``); that router reports the end to this inbox and
  tries the other workers;
- the request never reached the worker (a lost redirect): no start report within
  ``START_TIMEOUT_S``, and the slot is given back;
- the worker died mid-stream: it leaves the worker list, and its slots are given back. The
  client's stream then ends without Ollama's error line (nginx, not a router, was relaying it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from redis.exceptions import RedisError

from corral.cluster import direct
from corral.cluster.redis_client import async_client
from corral.cluster.tenants import Usage
from corral.cluster.workers import WorkerInfo

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0  # nginx connects within 2 s (corral-direct.conf); a slower start is a lost request
SWEEP_EVERY_S = 1.0
READ_BATCH = 256  # reports taken per read, once BLPOP has one
MAX_PENDING = 65536  # direct requests in flight per router process; past this, requests are relayed


@dataclass
class _Pending:
    worker: WorkerInfo
    model: str
    keep_alive: float | None
    usage: Usage | None
    route: str
    placing_s: float
    since: float
    started: bool = False


Finish = Callable[[WorkerInfo, str, float | None, Usage | None, bool], Coroutine[Any, Any, None]]
LiveWorkers = Callable[[], set[str] | None]


def worker_address(worker: WorkerInfo) -> str | None:
    """host:port for nginx's proxy_pass, when nginx can reach it without a resolver (an IP
    address over plain HTTP); None otherwise (the request is relayed)."""
    parts = urlsplit(worker.url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        return None
    try:
        ip = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return None
    return f"[{ip}]:{parts.port}" if ip.version == 6 else f"{ip}:{parts.port}"


class Inbox:
    def __init__(
        self,
        redis_url: str,
        finish: Finish,
        live_workers: LiveWorkers,
        events: Any,
        first_byte: Callable[[str, float], None] | None = None,
    ) -> None:
        self.key = direct.inbox_key(secrets.token_hex(16))
        # BLPOP waits up to a second: the socket may wait longer than that.
        self.redis: Any = async_client(redis_url, socket_timeout=5.0, socket_connect_timeout=2.0)
        self._finish = finish
        self._events = events  # corral_router_direct_total, by event
        self._first_byte = first_byte  # (route, seconds): corral_router_time_to_first_token_seconds
        self._live_workers = live_workers
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()
        self._swept = time.monotonic()
        # Since when the inbox has been readable: reports held up by a Redis outage (workers keep
        # them until it is back) are waited for that long again before a slot counts as lost.
        self._reachable_since: float | None = time.monotonic()
        self._idle = asyncio.Event()  # set while nothing is pending
        self._idle.set()

    @property
    def full(self) -> bool:
        return len(self._pending) >= MAX_PENDING

    def expect(
        self,
        worker: WorkerInfo,
        model: str,
        keep_alive: float | None,
        usage: Usage | None,
        route: str,
        placing_s: float,
    ) -> direct.Lease:
        """Hold the slot until the worker reports the request's end; the lease tells it where.
        ``placing_s``: from the request's arrival to now (its time to first byte starts there)."""
        ident = f"{next(self._ids):x}"
        self._pending[ident] = _Pending(worker, model, keep_alive, usage, route, placing_s, time.monotonic())
        self._idle.clear()
        self._events.labels("redirected").inc()
        return direct.Lease(self.key, ident, worker.id)

    async def abandon(self, lease: direct.Lease) -> None:
        """nginx gave up on a direct request (``RETRY_HEADER``): its slot goes back, whichever
        router holds it."""
        self._events.labels("retried").inc()
        line = direct.Report(direct.ENDED, lease.id, 502).line()
        if lease.inbox == self.key:
            self._on(line)
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                direct.deliver(pipe, lease.inbox, line)
                await pipe.execute()
        except RedisError as exc:  # the holder gives it back when no start comes (START_TIMEOUT_S)
            logger.warning("could not tell %s that request %s failed: %s", lease.inbox, lease.id, exc)

    async def run(self) -> None:
        """Read reports until cancelled; Redis going away only pauses it."""
        while True:
            try:
                got = await self.redis.blpop([self.key], timeout=SWEEP_EVERY_S)
                if got is not None:
                    self._on(got[1])
                    for line in await self.redis.lpop(self.key, READ_BATCH) or []:
                        self._on(line)
            except RedisError as exc:
                if self._reachable_since is not None:
                    logger.warning("inbox %s unreadable: %s", self.key, exc)
                self._reachable_since = None
                await asyncio.sleep(SWEEP_EVERY_S)
                continue
            except Exception:  # the inbox must outlive any one bad report
                logger.exception("inbox %s: a report failed", self.key)
            if self._reachable_since is None:
                self._reachable_since = time.monotonic()
            if time.monotonic() - self._swept >= SWEEP_EVERY_S:
                self._sweep()

    async def drain(self, timeout: float) -> None:
        """On the way out: wait (up to ``timeout``) for the direct requests still streaming."""
        if self._pending:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    async def close(self) -> None:
        await self.redis.aclose()

    def _on(self, raw: bytes | str) -> None:
        report = direct.Report.parse(raw)
        if report is None:
            logger.warning("inbox %s: unreadable report %r", self.key, raw[:100])
            return
        pending = self._pending.get(report.id)
        if pending is None:  # ended already (a start after the end, a retried request)
            return
        if report.kind == direct.STARTED:
            pending.started = True
            return
        if report.first_byte_ms >= 0 and self._first_byte is not None:
            self._first_byte(pending.route, pending.placing_s + report.first_byte_ms / 1000)
        self._end(report.id, failed=report.status == 0 or report.status >= 400, event="ended")

    def _end(self, ident: str, *, failed: bool, event: str) -> None:
        pending = self._pending.pop(ident, None)  # once: a retried request may be reported twice
        if pending is None:
            return
        self._events.labels(event).inc()
        if not self._pending:
            self._idle.set()
        task = asyncio.get_running_loop().create_task(
            self._finish(pending.worker, pending.model, pending.keep_alive, pending.usage, failed)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _sweep(self) -> None:
        """Give back the slots of requests that never started, or whose worker is gone."""
        self._swept = now = time.monotonic()
        live = self._live_workers()
        if live is None or self._reachable_since is None:
            return  # Redis is away: nothing can be told apart from a report still on its way
        for ident, pending in list(self._pending.items()):
            if not pending.started and now - max(pending.since, self._reachable_since) > START_TIMEOUT_S:
                logger.warning(
                    "direct request %s never reached worker %s: giving its slot back", ident, pending.worker.id
                )
                self._end(ident, failed=True, event="lost")
            elif pending.worker.id not in live:
                logger.warning(
                    "worker %s left with direct request %s streaming: giving its slot back", pending.worker.id, ident
                )
                self._end(ident, failed=True, event="lost")
