"""One pipelined Redis connection for the two scripts every request runs (take a slot, give it back).

redis-py spends about 0.3 ms of Python per command (connection pool, retry wrapper, timeouts,
argument filtering): two commands per request were most of what a router cost. Here a command
is packed, written, and its reply parsed by hiredis in the protocol callback; commands from all
concurrent requests share one connection in order (Redis answers in order), so many requests'
commands go out in one write.

Failures look like redis-py's (``redis.exceptions.ConnectionError``, ``TimeoutError``,
``ResponseError``), so callers handle one family of errors. A timed-out command breaks the
connection (later replies could no longer be matched); the next command connects again.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from corral.cluster.redis_client import MasterFinder, is_sentinel, parse_sentinel_url


class Script:
    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


class Packed:
    """A run of arguments packed once, for the ones a command sends again and again (an API
    key's Redis keys, constant limits): ``_pack`` splices it in as it is. Made by ``packed``,
    which keeps the recent ones."""

    __slots__ = ("args", "text")

    def __init__(self, args: tuple[str, ...]) -> None:
        self.args = args
        self.text = "".join(f"${len(arg)}\r\n{arg}\r\n" for arg in args)


@functools.lru_cache(maxsize=4096)
def packed(*args: Any) -> Packed | tuple[Any, ...]:
    """``args`` as one pre-packed run; as they are when not ASCII (``_pack_bytes`` takes them)."""
    texts = tuple(str(arg) for arg in args)
    return Packed(texts) if all(t.isascii() for t in texts) else texts


def unpacked(args: Sequence[Any] | Packed) -> list[Any]:
    """The plain arguments, runs expanded (for redis-py, when there is no lane)."""
    if isinstance(args, Packed):
        return list(args.args)
    out: list[Any] = []
    for arg in args:
        if type(arg) is Packed:
            out.extend(arg.args)
        elif type(arg) is tuple:
            out.extend(arg)
        else:
            out.append(arg)
    return out


def _pack(args: tuple[Any, ...]) -> bytes:
    """A command in RESP. Built as one str and encoded once (a command of 20 arguments packs in
    a third of the time it takes argument by argument): keys, ids and numbers are ASCII, where
    a character is a byte; anything else takes ``_pack_bytes``."""
    parts = [""]
    n = len(args)
    for arg in args:
        kind = type(arg)
        if kind is str:
            parts.append(f"${len(arg)}\r\n{arg}\r\n")
        elif kind is Packed:
            parts.append(arg.text)
            n += len(arg.args) - 1
        elif kind is bytes or kind is tuple:
            return _pack_bytes(args)
        else:
            text = str(arg)
            parts.append(f"${len(text)}\r\n{text}\r\n")
    parts[0] = f"*{n}\r\n"
    packed = "".join(parts)
    return packed.encode() if packed.isascii() else _pack_bytes(args)


def _pack_bytes(args: tuple[Any, ...]) -> bytes:
    plain = unpacked(args)
    out = [b"*%d\r\n" % len(plain)]
    for arg in plain:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.pending: deque[asyncio.Future] = deque()
        # Set by connection_made, which the event loop calls before the connection is handed out.
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.broken: Exception | None = None
        # Commands written in one turn of the event loop go out in one write (one system call,
        # not one per command: under load, many requests' commands meet in the same turn).
        self.outgoing: list[bytes] = []

    def queue(self, packed: bytes) -> None:
        if not self.outgoing:
            asyncio.get_running_loop().call_soon(self.flush)
        self.outgoing.append(packed)

    def flush(self) -> None:
        data, self.outgoing = b"".join(self.outgoing), []
        if self.broken is None:
            self.transport.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream's transport is a Transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                if self.pending:
                    waiter = self.pending.popleft()
                    if not waiter.done():
                        waiter.set_result(reply)
        except hiredis.ProtocolError as exc:
            self.fail(RedisConnectionError(f"bad reply from Redis: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"Redis connection lost: {exc or 'closed'}"))

    def fail(self, exc: Exception) -> None:
        if self.broken is None:
            self.broken = exc
        while self.pending:
            waiter = self.pending.popleft()
            if not waiter.done():
                waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


class RedisLane:
    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        self.timeout = timeout
        # With Sentinel, the master's address is asked of the sentinels at every connect.
        self.find_master: MasterFinder | None = None
        if is_sentinel(url):
            parsed = parse_sentinel_url(url)
            self.scheme, self.host, self.port, self.path = "redis", "", 0, ""
            self.db, self.username, self.password = parsed.db, parsed.username, parsed.password
            self.find_master = MasterFinder(url, timeout)
        else:
            parts = urlsplit(url)
            self.scheme = parts.scheme
            self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 6379
            self.path = unquote(parts.path) if parts.scheme == "unix" else ""
            query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
            db = parts.path.strip("/") if parts.scheme != "unix" else query.get("db", "")
            self.db = int(db or 0)
            self.username = unquote(parts.username) if parts.username else None
            self.password = unquote(parts.password) if parts.password else None
        self._conn: _Protocol | None = None
        self._connecting: asyncio.Future | None = None

    @staticmethod
    def supports(url: str) -> bool:
        """TLS (``rediss://``) stays with redis-py."""
        return url.startswith(("redis://", "unix://")) or is_sentinel(url)

    async def evalsha(self, script: Script, keys: Sequence[Any] | Packed, args: list[Any]) -> Any:
        """``keys``: the keys, or one ``packed`` run of them; ``args`` may hold runs anywhere."""
        run: Sequence[Any] = (keys,) if isinstance(keys, Packed) else keys
        numkeys = len(keys.args) if isinstance(keys, Packed) else len(keys)
        try:
            return await self.call("EVALSHA", script.sha, numkeys, *run, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.call("EVAL", script.text, numkeys, *run, *args)

    async def call(self, *args: Any) -> Any:
        conn = await self._connection()
        return await self._send(conn, _pack(args))

    async def _send(self, conn: _Protocol, packed: bytes) -> Any:
        waiter = asyncio.get_running_loop().create_future()
        conn.pending.append(waiter)
        conn.queue(packed)
        handle = asyncio.get_running_loop().call_later(self.timeout, _expire, conn, waiter)
        try:
            reply = await waiter
        finally:
            handle.cancel()
        if isinstance(reply, ResponseError):
            if str(reply).startswith("READONLY"):
                # A failover made this master a replica: connect again, to the new one.
                error = RedisConnectionError(f"Redis is a replica now: {reply}")
                conn.fail(error)
                raise error
            raise reply
        return reply

    async def _connection(self) -> _Protocol:
        conn = self._conn
        if conn is not None and conn.broken is None:
            return conn
        if self._connecting is None:  # one connect for everyone waiting
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, task: asyncio.Future) -> None:
        self._connecting = None
        if not task.cancelled() and task.exception() is None:
            self._conn = task.result()

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                if self.scheme == "unix":
                    _, conn = await loop.create_unix_connection(_Protocol, self.path)
                else:
                    host, port = await self.find_master() if self.find_master else (self.host, self.port)
                    _, conn = await loop.create_connection(_Protocol, host, port)
                try:
                    if self.password is not None:
                        auth = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
                        await self._send(conn, _pack(auth))
                    if self.db:
                        await self._send(conn, _pack(("SELECT", self.db)))
                except BaseException as exc:
                    conn.fail(RedisConnectionError(f"Redis refused the connection: {exc}"))
                    raise
        except TimeoutError as exc:
            raise RedisTimeoutError("Timeout connecting to Redis") from exc
        except OSError as exc:
            raise RedisConnectionError(f"Error connecting to Redis: {exc}") from exc
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.fail(RedisConnectionError("closed"))
            self._conn = None


def _expire(conn: _Protocol, waiter: asyncio.Future) -> None:
    # The error is made only when it happens: a command's timer is cancelled far more often.
    if not waiter.done():
        conn.fail(RedisTimeoutError("Timeout reading from Redis"))  # replies can no longer be matched: start over
