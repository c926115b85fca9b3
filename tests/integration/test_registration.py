"""Workers join and leave the cluster through Redis: a real redis-server, real worker processes."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import redis
import redis.asyncio

from corral.cluster.workers import (
    HEARTBEAT_S,
    LEASE_MS,
    STATE_DRAINING,
    WORKERS,
    WorkerInfo,
    lapsed_workers,
    live_workers,
    now_ms,
    worker_key,
)
from corral.worker.registration import device_and_memory
from corral.worker.settings import WorkerSettings
from tests.support.answers import wait_for
from tests.support.model import MODEL_NAME
from tests.support.servers import WorkerProcess, import_model, start_worker

pytestmark = pytest.mark.integration


T = TypeVar("T")
PROMPT = "Once upon a time, in a small village by the sea, there lived"  # raw: SmolLM2 keeps going
UNREACHABLE = "unreachable"  # in the warning logged once per Redis outage


@contextmanager
def cluster_worker(tmp: Path, redis_url: str | None, **env: str) -> Iterator[WorkerProcess]:
    """A worker process (registering at ``redis_url``, if any), stopped at the end."""
    env = {"CORRAL_NUM_THREADS": "1", **env}
    if redis_url:
        env["REDIS_URL"] = redis_url
    proc = start_worker(tmp, env)
    try:
        yield proc
    finally:
        proc.stop()


def registered(db: redis.Redis) -> str:
    """The one worker's id, once it is in ``corral:workers`` with its record."""
    ids = wait_for("a worker in corral:workers", lambda: db.zrange(WORKERS, 0, -1), timeout=5)
    assert len(ids) == 1 and db.exists(worker_key(ids[0]))
    return ids[0]


def lease(db: redis.Redis, worker_id: str) -> float | None:
    return db.zscore(WORKERS, worker_id)


def live(url: str) -> tuple[list[WorkerInfo], list[str]]:
    """What a router reads: the live workers and the ids whose lease lapsed."""

    async def read() -> tuple[list[WorkerInfo], list[str]]:
        async with redis.asyncio.Redis.from_url(url) as client:
            return await live_workers(client), await lapsed_workers(client)

    return asyncio.run(read())


def gone(db: redis.Redis, worker_id: str) -> bool:
    return lease(db, worker_id) is None and not db.exists(worker_key(worker_id))


def exits_cleanly(proc: WorkerProcess, timeout: float = 30) -> None:
    assert proc.process.wait(timeout=timeout) == 0, proc.log()


def test_worker_registers_and_renews_its_lease(tmp_path, redis_server, redis_db):
    with cluster_worker(
        tmp_path, redis_server.url,
        OLLAMA_NUM_PARALLEL="3", OLLAMA_MAX_LOADED_MODELS="2",
        CORRAL_WORKER_MEMORY="3GiB", CORRAL_WORKER_LABELS="zone=eu-1,tier=gold",
    ) as proc:
        worker_id = registered(redis_db)
        port = proc.url.rsplit(":", 1)[1]
        assert worker_id.startswith(f"{socket.gethostname()}-{port}-")
        first = lease(redis_db, worker_id)
        assert now_ms() < first <= now_ms() + LEASE_MS
        record = redis_db.hgetall(worker_key(worker_id))
        assert record | {"started_at": ""} == {
            "id": worker_id,
            "url": proc.url,
            "device": device_and_memory(WorkerSettings())[0],  # cpu, unless llama.cpp has a GPU
            "memory_total": str(3 << 30),
            "num_parallel": "3",
            "max_loaded": "2",
            "labels": json.dumps({"zone": "eu-1", "tier": "gold"}),
            "state": "ready",
            "started_at": "",
            "version": metadata.version("corral"),  # the installed package's, what an operator sees
        }
        assert 0 < now_ms() - int(record["started_at"]) < 60_000
        assert 0 < redis_db.ttl(worker_key(worker_id)) <= 60  # a record outlives no worker for long

        # What routers read: the shared decoder of the record.
        (info,), lapsed = live(redis_server.url)
        assert (info.id, info.url, info.memory_total, info.labels) == (
            worker_id, proc.url, 3 << 30, {"zone": "eu-1", "tier": "gold"}
        )
        assert lapsed == []
        assert "registered in the cluster as " + worker_id in proc.log()

        # The heartbeat renews the lease.
        time.sleep(3)
        assert lease(redis_db, worker_id) > first

        proc.process.send_signal(signal.SIGTERM)
        exits_cleanly(proc)
        assert gone(redis_db, worker_id)


def streaming(url: str, num_predict: int) -> tuple[threading.Thread, list[dict]]:
    """A streaming /api/generate in a thread, returned once its first line came; the lines
    keep arriving in the list (a stream the worker cuts just ends)."""
    body = {"model": MODEL_NAME, "prompt": PROMPT, "raw": True, "options": {"num_predict": num_predict, "temperature": 0}}
    lines: list[dict] = []
    started = threading.Event()

    def generate() -> None:
        try:
            with httpx.stream("POST", url + "/api/generate", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    lines.append(json.loads(line))
                    started.set()
        except httpx.HTTPError:
            pass
        finally:
            started.set()

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    started.wait(60)
    assert lines, "the stream did not start"
    return thread, lines


def test_sigterm_drains_a_stream_in_flight_then_deregisters(tmp_path, redis_server, redis_db, gguf_path, gguf_digest):
    with cluster_worker(tmp_path, redis_server.url, CORRAL_DRAIN_TIMEOUT="60s") as proc:
        import_model(proc.url, gguf_path, gguf_digest)
        worker_id = registered(redis_db)
        stream, lines = streaming(proc.url, num_predict=200)

        proc.process.send_signal(signal.SIGTERM)
        # Routers are told at once, while the stream still runs.
        wait_for("state draining", lambda: redis_db.hget(worker_key(worker_id), "state") == STATE_DRAINING, timeout=2)
        at_draining = len(lines)
        assert not lines[-1]["done"]

        # New connections fail fast: the listener is closed.
        def refused() -> bool:
            try:
                httpx.get(proc.url + "/api/version", timeout=2)
            except httpx.ConnectError:
                return True
            return False

        wait_for("new connections refused", refused, timeout=2)
        assert proc.process.poll() is None and not lines[-1]["done"]

        stream.join(60)
        assert not stream.is_alive()
        assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 200, lines[-1]
        assert len(lines) > at_draining + 10  # generation went on while draining
        exits_cleanly(proc)
        assert gone(redis_db, worker_id)
        log = proc.log()
        assert log.index("draining: set") < log.index("deregistered " + worker_id)


def test_drain_is_bounded(tmp_path, redis_server, redis_db, gguf_path, gguf_digest):
    with cluster_worker(tmp_path, redis_server.url, CORRAL_DRAIN_TIMEOUT="1s") as proc:
        import_model(proc.url, gguf_path, gguf_digest)
        worker_id = registered(redis_db)
        stream, lines = streaming(proc.url, num_predict=5000)
        sent = time.monotonic()
        proc.process.send_signal(signal.SIGTERM)
        exits_cleanly(proc, timeout=15)
        assert time.monotonic() - sent < 8
        stream.join(10)
        assert not lines[-1].get("done")  # cut when the drain ran out
        assert gone(redis_db, worker_id)


def test_sigkill_leaves_a_lease_that_lapses(tmp_path, redis_server, redis_db):
    with cluster_worker(tmp_path, redis_server.url) as proc:
        worker_id = registered(redis_db)
        proc.process.kill()
        proc.process.wait(10)
        killed = now_ms()
        expiry = lease(redis_db, worker_id)
        assert redis_db.exists(worker_key(worker_id))  # nobody deregistered it...
        assert expiry <= killed + LEASE_MS  # ...but nobody renews it either
        assert [w.id for w in live(redis_server.url)[0]] == [worker_id]
        time.sleep(max(0.0, (expiry - now_ms()) / 1000) + 0.2)
        assert lease(redis_db, worker_id) == expiry
        alive, lapsed = live(redis_server.url)
        assert alive == [] and lapsed == [worker_id]


def test_worker_rejoins_after_redis_restarts_empty(tmp_path, redis_server, redis_db):
    with cluster_worker(tmp_path, redis_server.url) as proc:
        worker_id = registered(redis_db)
        redis_server.shutdown()
        wait_for("the outage warning", lambda: UNREACHABLE in proc.log(), timeout=3 * HEARTBEAT_S)
        # Local requests are served meanwhile, and a missed beat more logs nothing more.
        assert httpx.get(proc.url + "/api/tags", timeout=5).status_code == 200
        time.sleep(HEARTBEAT_S + 0.5)
        redis_server.start()
        assert redis_db.zcard(WORKERS) == 0  # everything lost
        assert registered(redis_db) == worker_id
        assert redis_db.hget(worker_key(worker_id), "url") == proc.url
        log = proc.log()
        assert log.count(UNREACHABLE) == 1, log
        assert "Redis reachable again" in log


def test_worker_starts_while_redis_is_down_and_registers_when_it_comes(tmp_path, redis_server, redis_db):
    redis_server.shutdown()
    with cluster_worker(tmp_path, redis_server.url) as proc:
        assert httpx.get(proc.url + "/api/version", timeout=5).status_code == 200
        wait_for("the outage warning", lambda: UNREACHABLE in proc.log(), timeout=3 * HEARTBEAT_S)
        redis_server.start()
        worker_id = registered(redis_db)
        proc.process.send_signal(signal.SIGTERM)
        exits_cleanly(proc)
        assert gone(redis_db, worker_id)


def test_worker_without_redis_url_touches_no_redis(tmp_path, redis_server, redis_db):
    connections = redis_db.info("stats")["total_connections_received"]
    with cluster_worker(tmp_path, None, CORRAL_WORKER_LABELS="zone=eu-1") as proc:
        assert httpx.get(proc.url + "/api/tags", timeout=5).status_code == 200
        proc.process.send_signal(signal.SIGTERM)
        exits_cleanly(proc)
    assert redis_db.info("stats")["total_connections_received"] == connections
    assert redis_db.dbsize() == 0
    log = proc.log()
    assert "cluster" not in log and "Redis" not in log, log
