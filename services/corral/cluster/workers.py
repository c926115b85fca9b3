"""Workers in Redis: the contract between a worker that registers and the routers that read.

Keys (all under ``corral:``; one Redis per cluster):

    corral:workers            ZSET   member = worker id, score = lease expiry (ms since epoch)
    corral:worker:<id>        HASH   the worker's record (``WorkerInfo.to_redis``), state included

A worker registers by writing its record and adding itself to ``corral:workers`` with a lease
``LEASE_MS`` ahead; it renews the lease every ``HEARTBEAT_S``. A worker whose lease lapsed is
gone: routers ignore it (``live_workers``) and drop its placements. On SIGTERM a worker sets
``state`` to ``draining`` (routers place nothing new on it), finishes what it runs, then
deregisters (removes both keys). The record also expires on its own (``RECORD_TTL_S``), so a
worker killed outright leaves nothing behind for long.

Both sides import this module; neither imports the other.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

PREFIX = "corral:"
WORKERS = PREFIX + "workers"
HEARTBEAT_S = 2.0
LEASE_MS = 10_000  # five missed heartbeats
RECORD_TTL_S = 60

# Routers send the cluster's model-store generation (bumped on every create/copy/delete/pull)
# with each request they forward, so a worker drops registry reads cached before a change.
MODELS_GENERATION_HEADER = "x-corral-models-generation"

STATE_READY = "ready"
STATE_DRAINING = "draining"


def worker_key(worker_id: str) -> str:
    return f"{PREFIX}worker:{worker_id}"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class WorkerInfo:
    id: str
    url: str  # how routers reach it, e.g. http://10.0.0.7:11434
    device: str = "cpu"  # cpu | cuda
    memory_total: int = 0  # bytes available for models
    num_parallel: int = 1  # OLLAMA_NUM_PARALLEL: slots per loaded model
    max_loaded: int = 3  # OLLAMA_MAX_LOADED_MODELS (effective)
    labels: dict[str, str] = field(default_factory=dict)
    state: str = STATE_READY
    started_at: int = 0  # ms since epoch
    version: str = ""
    # When its lease runs out, as read from corral:workers (ms since epoch; not stored in the record):
    # a router that keeps the list a moment still sees a worker leave at the right time.
    lease_until: int = 0

    def to_redis(self) -> dict[str, str]:
        out = {}
        for key, value in asdict(self).items():
            if key == "lease_until":
                continue
            out[key] = json.dumps(value) if isinstance(value, dict) else str(value)
        return out

    @classmethod
    def from_redis(cls, data: dict[Any, Any]) -> WorkerInfo | None:
        """Decode a record; None for one that is incomplete (mid-write or mid-expiry)."""
        text = {_s(k): _s(v) for k, v in data.items()}
        if not text.get("id") or not text.get("url"):
            return None
        try:
            return cls(
                id=text["id"],
                url=text["url"],
                device=text.get("device", "cpu"),
                memory_total=int(text.get("memory_total", 0)),
                num_parallel=int(text.get("num_parallel", 1)),
                max_loaded=int(text.get("max_loaded", 3)),
                labels=json.loads(text.get("labels") or "{}"),
                state=text.get("state", STATE_READY),
                started_at=int(text.get("started_at", 0)),
                version=text.get("version", ""),
            )
        except (ValueError, TypeError):
            return None


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def register(redis: Any, info: WorkerInfo) -> None:
    """Write the record and take the first lease, atomically."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(worker_key(info.id), mapping=info.to_redis())
        pipe.expire(worker_key(info.id), RECORD_TTL_S)
        pipe.zadd(WORKERS, {info.id: now_ms() + LEASE_MS})
        await pipe.execute()


async def heartbeat(redis: Any, info: WorkerInfo) -> None:
    """Renew the lease; rewrites the record too, so a Redis that lost it (restart) recovers."""
    await register(redis, info)


async def deregister(redis: Any, worker_id: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(WORKERS, worker_id)
        pipe.delete(worker_key(worker_id))
        await pipe.execute()


async def live_workers(redis: Any, *, lapsed_for_at_most_ms: int = 0) -> list[WorkerInfo]:
    """Workers whose lease holds, ready or draining, in id order (also those whose lease ran
    out at most ``lapsed_for_at_most_ms`` ago: right after a Redis outage, whose heartbeats
    failed meanwhile)."""
    leases = await redis.zrangebyscore(WORKERS, now_ms() - lapsed_for_at_most_ms, "+inf", withscores=True)
    if not leases:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for worker_id, _ in leases:
            pipe.hgetall(worker_key(_s(worker_id)))
        records = await pipe.execute()
    workers = []
    for (_, lease_until), record in zip(leases, records):
        worker = WorkerInfo.from_redis(record) if record else None
        if worker is not None:
            worker.lease_until = int(lease_until)
            workers.append(worker)
    return sorted(workers, key=lambda w: w.id)


async def lapsed_workers(redis: Any) -> list[str]:
    """Ids whose lease ran out (a router removes them and their placements)."""
    return [_s(worker_id) for worker_id in await redis.zrangebyscore(WORKERS, "-inf", now_ms() - 1)]
