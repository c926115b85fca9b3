"""Connecting to the cluster's Redis from ``REDIS_URL``: one Redis, or one found through Sentinel.

    redis://[[user]:password@]host[:port][/db]             one Redis (rediss:// for TLS, unix:// too)
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?sentinel_password=...]

With Sentinel the hosts are the sentinels (port 26379 unless given); ``service`` is the name
they monitor the master under; the password in the URL is the master's (and its replicas'),
``sentinel_password`` (and ``sentinel_username``) the sentinels' own if they have one. Clients
ask the sentinels where the master is when they connect, and again after a failover: a
connection to a master that became a replica fails (``READONLY``), and the next one goes to
the new master. Every client of the cluster's Redis is made here, so all of them (routers,
workers, model times) follow the same URL the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
SCHEMES = ("redis", "rediss", "unix", SENTINEL_SCHEME)


@dataclass(frozen=True)
class SentinelURL:
    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_auth: dict[str, str] = field(default_factory=dict)


def parse_sentinel_url(url: str) -> SentinelURL:
    """The parts of a ``redis+sentinel://`` URL; ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    sentinels = []
    for item in filter(None, hosts.split(",")):
        if item.startswith("["):  # [IPv6]:port
            host, _, rest = item[1:].partition("]")
            port = rest.removeprefix(":")
        else:
            host, _, port = item.partition(":")
        if not host or (port and not port.isdigit()):
            raise ValueError(f"bad sentinel address {item!r}")
        sentinels.append((host, int(port) if port else SENTINEL_PORT))
    if not sentinels:
        raise ValueError("no sentinel address")
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError("expected /<service name>[/<db>] after the sentinels")
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError(f"database must be a number, got {path[1]!r}")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    auth = {k: query[f"sentinel_{k}"] for k in ("username", "password") if f"sentinel_{k}" in query}
    return SentinelURL(
        sentinels,
        path[0],
        int(path[1]) if len(path) == 2 else 0,
        unquote(username) or None,
        unquote(password) or None,
        auth,
    )


def check_redis_url(url: str) -> str:
    """A validator for ``REDIS_URL``."""
    scheme = url.partition("://")[0]
    if scheme not in SCHEMES or "://" not in url:
        raise ValueError("must be a redis://, rediss://, unix:// or redis+sentinel:// URL")
    if scheme == SENTINEL_SCHEME:
        parse_sentinel_url(url)
    return url


def is_sentinel(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME + "://")


def _sentinel_kwargs(parsed: SentinelURL, options: dict[str, Any]) -> dict[str, Any]:
    # The sentinels get the same timeouts as the master; their own credentials if any.
    timeouts = {k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")}
    return {**timeouts, **parsed.sentinel_auth}


def async_client(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio client of the cluster's Redis (``options``: redis-py's connection options)."""
    return _client(url, options, aioredis.Redis, AsyncSentinel)


def sync_client(url: str, **options: Any) -> redis.Redis:
    """The same, blocking (for code running in threads)."""
    return _client(url, options, redis.Redis, Sentinel)


def _client(
    url: str, options: dict[str, Any], plain: Any, sentinel_class: Any
) -> Any:  # redis's sync or asyncio classes
    if not is_sentinel(url):
        return plain.from_url(url, **options)
    parsed = parse_sentinel_url(url)
    sentinel = sentinel_class(parsed.sentinels, sentinel_kwargs=_sentinel_kwargs(parsed, options))
    return sentinel.master_for(
        parsed.service, db=parsed.db, username=parsed.username, password=parsed.password, **options
    )


class MasterFinder:
    """Where the master is now, asked of the sentinels (for ``RedisLane``'s own connection)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.parsed = parse_sentinel_url(url)
        options = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        self.sentinel = AsyncSentinel(self.parsed.sentinels, sentinel_kwargs=_sentinel_kwargs(self.parsed, options))

    async def __call__(self) -> tuple[str, int]:
        # MasterNotFoundError (no sentinel knows a master now) is a redis ConnectionError.
        host, port = await self.sentinel.discover_master(self.parsed.service)
        return host, int(port)
