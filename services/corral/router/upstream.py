"""HTTP/1.1 from a router to its workers: pooled keep-alive connections and one parser.

The router's hot path is "send a small JSON body to a worker, relay what comes back". A general
client (httpx: URL and header objects, anyio, h11 in pure Python, a pool that polls every idle
socket on every request) cost most of a router's CPU per request. This one does only that
path: an ``asyncio.Protocol`` per connection, ``httptools`` (the C parser uvicorn already uses)
for responses, and per worker a LIFO stack of idle connections, so taking one is O(1).

A streamed body can also be *piped* (``Reply.pipe``): each piece goes to a sink function from
the connection's read callback, so relaying one token line costs no task wake-up, future or timer.
With 64 streams a decode step delivers 64 lines at once and one process relays them in turn, so
the per-line cost is what a line waits behind (bench_router part 1).

Bounded everywhere: connect timeout, a first-byte timeout, at most ``MAX_IDLE_PER_WORKER`` idle
connections per worker, idle connections dropped before the worker's own keep-alive would close
them, and at most ``HIGH_WATER`` bytes read ahead of the client before reading pauses.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httptools

from corral.api.errors import UpstreamError

MAX_IDLE_PER_WORKER = 256
# Workers keep idle connections open 75 s (``corral worker``); reuse stops well before.
IDLE_FOR_AT_MOST_S = 30.0
HIGH_WATER = 1 << 20


class WorkerConnectionError(UpstreamError):
    """The worker could not be reached, or the connection failed before the answer was complete
    (the dispatcher retries elsewhere, or ends the stream with an error line)."""


class WorkerTimeoutError(WorkerConnectionError):
    pass


class Reply:
    """One response from a worker: status and headers once its head arrived, then the body."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_done",
        "_error",
        "_head",
        "_moved",
        "_paused",
        "_received",
        "_sink",
        "_waiter",
        "conn",
        "headers",
        "keep_alive",
        "parser",
        "status",
    )

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._done = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future | None = None
        self._head: asyncio.Future = asyncio.get_running_loop().create_future()
        self._received = False  # any byte of the answer: a reused connection that fails before is retried
        self.keep_alive = False
        self._sink: Callable[[bytes], bool] | None = None  # set while piped
        self._moved = False  # a piece was piped since the gap timer last looked

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        if self._sink is not None:
            return  # _feed hands over what the whole read brought, in one piece
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused:
            self._paused = True
            self.conn.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        self._done = True
        self._wake()

    # -- from the connection

    def _feed(self, data: bytes) -> None:
        self._received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(WorkerConnectionError(f"bad response from worker: {exc}"))
            return
        if self._sink is not None and self._chunks:
            self._pass_on()

    def _take(self) -> bytes:
        """Everything buffered, as one piece."""
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return data

    def _pass_on(self) -> None:
        data = self._take()
        self._moved = True
        sink = self._sink
        assert sink is not None  # _pass_on runs only while piped
        if not sink(data) and not self._paused:  # the client is behind: stop reading until it catches up
            self._paused = True
            self.conn.transport.pause_reading()
            self._wake()

    def fail(self, exc: Exception) -> None:
        """The connection broke (or a timeout or the router gave up): wake whoever waits."""
        if self._done or self._error is not None:
            return
        self._error = exc
        if not self._head.done():
            self._head.set_exception(exc)
            self._head.exception()  # retrieved here: nobody may be waiting any more
        self._wake()
        self.conn.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- for the caller

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def complete(self) -> bool:
        return self._done

    async def read(self) -> bytes:
        """What arrived since the last read, as one piece (b"" once the body is complete).
        Raises WorkerConnectionError if the connection broke first; bytes that came before are returned first."""
        while not self._chunks:
            if self._done:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._take()
        if self._paused:
            self._paused = False
            self.conn.transport.resume_reading()
        return data

    async def read_within(self, timeout: float) -> bytes:
        """``read``, failing the reply if nothing comes within ``timeout`` seconds."""
        if self._chunks or self._done or math.isinf(timeout):
            return await self.read()
        handle = asyncio.get_running_loop().call_later(
            timeout, self.fail, WorkerTimeoutError(f"no answer from the worker within {timeout:g} s")
        )
        try:
            return await self.read()
        finally:
            handle.cancel()

    async def pipe(self, sink: Callable[[bytes], bool], drained: Callable[[], Awaitable[None]], gap: float) -> None:
        """Hand the rest of the body to ``sink`` piece by piece, straight from the read callback,
        until it is complete. ``sink`` returns False when the client has fallen behind; reading
        then pauses until ``drained()`` returns. Raises WorkerConnectionError like ``read``, also when
        nothing arrives for ``gap`` seconds (one timer per gap, not one per piece)."""
        loop = asyncio.get_running_loop()
        self._sink = sink
        timer = None

        def look() -> None:
            nonlocal timer
            if self._moved:
                self._moved = False
                timer = loop.call_later(gap, look)
            else:
                self.fail(WorkerTimeoutError(f"no answer from the worker within {gap:g} s"))

        try:
            if self._chunks:
                self._pass_on()
            if not math.isinf(gap):
                timer = loop.call_later(gap, look)
            while True:
                if self._error is not None:
                    raise self._error
                if self._done:
                    return
                if self._paused:
                    await drained()
                    self._paused = False
                    self._moved = True
                    if not self.conn.closed:
                        self.conn.transport.resume_reading()
                    continue
                self._waiter = loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        finally:
            self._sink = None
            if timer is not None:
                timer.cancel()

    async def read_all(self) -> bytes:
        parts = []
        while chunk := await self.read():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Done with this reply: a complete one gives its connection back for reuse, any other closes it."""
        conn = self.conn
        if conn.reply is self:
            conn.reply = None
        if self._done and self.keep_alive and self._error is None and not conn.closed:
            conn.pool.put(conn)
        else:
            conn.abort()


class _Connection(asyncio.Protocol):
    def __init__(self, pool: _WorkerPool) -> None:
        self.pool = pool
        # Set by connection_made, which the event loop calls before the connection is handed out.
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.reply: Reply | None = None
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream's transport is a Transport

    def data_received(self, data: bytes) -> None:
        if self.reply is None:  # bytes nobody asked for: the connection can't be trusted
            self.abort()
            return
        self.reply._feed(data)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.reply is not None:
            self.reply.fail(WorkerConnectionError(f"connection to worker lost: {exc or 'closed by the worker'}"))

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _WorkerPool:
    def __init__(self, host: str, port: int, authority: str) -> None:
        self.host, self.port, self.authority = host, port, authority
        self.idle: list[_Connection] = []

    def take(self) -> _Connection | None:
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_FOR_AT_MOST_S:
                return conn
            conn.abort()
        return None

    def put(self, conn: _Connection) -> None:
        if len(self.idle) >= MAX_IDLE_PER_WORKER:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def close(self) -> None:
        for conn in self.idle:
            conn.abort()
        self.idle.clear()


class Upstream:
    """Connections to every worker, by base URL (``http://host:port``)."""

    def __init__(self, connect_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self._pools: dict[str, _WorkerPool] = {}

    def _pool(self, base_url: str) -> _WorkerPool:
        pool = self._pools.get(base_url)
        if pool is None:
            parts = urlsplit(base_url)
            if parts.scheme != "http" or not parts.hostname:
                raise WorkerConnectionError(f"unsupported worker URL {base_url!r}")
            pool = _WorkerPool(parts.hostname, parts.port or 80, parts.netloc)
            if len(self._pools) > 4096:  # workers come and go: don't keep every one forever
                self.close()
            self._pools[base_url] = pool
        return pool

    async def post(
        self,
        base_url: str,
        path: str,
        body: bytes,
        headers: list[tuple[str, str]],
        *,
        first_byte_timeout: float,
        owner: Any = None,
    ) -> Reply:
        """POST ``body`` and wait for the answer's head (status and headers). ``owner.reply`` is
        set to the reply while it is awaited, so that whoever holds ``owner`` can fail it."""
        pool = self._pool(base_url)
        head = _request_head(pool.authority, path, len(body), headers)
        while True:
            conn = pool.take()
            reused = conn is not None
            if conn is None:
                conn = await self._connect(pool)
            reply = Reply(conn)
            conn.reply = reply
            if owner is not None:
                owner.reply = reply
            conn.transport.write(head + body)
            try:
                await _wait_head(reply, first_byte_timeout)
                return reply
            except WorkerTimeoutError:
                raise
            except WorkerConnectionError:
                if reused and not reply._received:
                    continue  # the worker had closed that idle connection: a fresh one
                raise
            except BaseException:
                reply.fail(WorkerConnectionError("request abandoned"))
                raise

    async def _connect(self, pool: _WorkerPool) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: _Connection(pool), pool.host, pool.port)
        except TimeoutError as exc:
            raise WorkerConnectionError(f"dial tcp {pool.authority}: i/o timeout") from exc
        except OSError as exc:
            raise WorkerConnectionError(f"dial tcp {pool.authority}: {exc.strerror or exc}") from exc
        return conn

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


async def _wait_head(reply: Reply, timeout: float) -> None:
    if math.isinf(timeout):
        await reply._head
        return
    handle = asyncio.get_running_loop().call_later(
        timeout, reply.fail, WorkerTimeoutError(f"no answer from the worker within {timeout:g} s")
    )
    try:
        await reply._head
    finally:
        handle.cancel()


def _request_head(authority: str, path: str, length: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"host: {authority}", f"content-length: {length}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
