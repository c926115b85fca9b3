"""When each model in the cluster's registry was written, kept in Redis for every router and worker.

Distribution keeps no timestamps, so without this each process would date a model from when it
first saw it, and ``/api/tags`` (or ``/v1/models``) would answer differently through different
routers. Here a write records its time (``HSET``); a model found with no time gets the first
reader's (``HSETNX``), and everyone reads that one back.

    corral:models:modified   HASH   "<repository>:<tag>" -> ms since epoch

Called from the registry store's threads, so this uses the synchronous client; a Redis that
cannot answer makes ``agreed`` return None (the store falls back to its own guess).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from redis.exceptions import RedisError

from corral.cluster.redis_client import sync_client
from corral.cluster.workers import PREFIX, now_ms

logger = logging.getLogger(__name__)

MODIFIED = PREFIX + "models:modified"


class RedisModelTimes:
    def __init__(self, url: str) -> None:
        self.redis = sync_client(url, socket_timeout=2.0, socket_connect_timeout=2.0)

    def agreed(self, key: str) -> datetime | None:
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.hsetnx(MODIFIED, key, now_ms())
                pipe.hget(MODIFIED, key)
                _, raw = pipe.execute()
        except RedisError as exc:
            logger.debug("model times unavailable: %s", exc)
            return None
        return datetime.fromtimestamp(int(raw) / 1000, tz=UTC) if raw else None

    def touch(self, key: str) -> None:
        try:
            self.redis.hset(MODIFIED, key, now_ms())
        except RedisError as exc:
            logger.warning("could not record when %s was written: %s", key, exc)

    def forget(self, key: str) -> None:
        try:
            self.redis.hdel(MODIFIED, key)
        except RedisError as exc:
            logger.warning("could not forget the time of %s: %s", key, exc)

    def close(self) -> None:
        self.redis.close()
