"""Redis made highly available with Sentinel: ``REDIS_URL=redis+sentinel://...``.

A real master, replica and three sentinels on loopback (``tests.support.redisd.SentinelGroup``); the
master is SIGKILLed and the sentinels promote the replica. Every kind of client Corral makes
of the cluster's Redis follows the failover (the asyncio and blocking clients, the router's own
pipelined lane), and a whole cluster on it loses no request across the failover.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cluster.redis_client import async_client, sync_client
from corral.router.redis_lane import RedisLane, Script
from tests.integration.test_cluster import Load, _ok, generate
from tests.support.answers import wait_for
from tests.support.cluster import Cluster
from tests.support.redisd import SentinelGroup

pytestmark = pytest.mark.integration

INCR = Script("return redis.call('INCR', KEYS[1])")


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path / "sentinel")
    try:
        yield group
    finally:
        group.stop()


def test_every_client_follows_a_failover(sentinels: SentinelGroup):
    async def run() -> None:
        client = async_client(sentinels.url, socket_timeout=2, socket_connect_timeout=2)
        lane = RedisLane(sentinels.url)
        blocking = sync_client(sentinels.url, socket_timeout=2, socket_connect_timeout=2)
        try:
            await client.set("corral:test", "before")
            assert await lane.evalsha(INCR, ["corral:count"], []) == 1
            assert blocking.get("corral:test") == b"before"
            first = sentinels.master()
            time.sleep(0.5)  # replication is asynchronous: let the replica have the writes
            promoted = sentinels.kill_master()
            assert promoted is not first

            async def eventually(call):
                deadline = time.monotonic() + 20
                while True:
                    try:
                        return await call()
                    except Exception:  # the old master's connection fails once, then the new one answers
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)

            assert await eventually(lambda: client.get("corral:test")) == b"before"
            assert await eventually(lambda: lane.evalsha(INCR, ["corral:count"], [])) == 2
            await client.set("corral:test", "after")
            deadline = time.monotonic() + 20
            while True:
                try:
                    assert blocking.get("corral:test") == b"after"
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            with promoted.client() as direct:  # the writes went to the new master
                assert direct.get("corral:count") == "2"
        finally:
            lane.close()
            await client.aclose()
            blocking.close()

    asyncio.run(run())


def test_a_cluster_on_sentinel_loses_no_request_in_a_failover(tmp_path: Path, sentinels: SentinelGroup,
                                                             gguf_path: Path, gguf_digest: str):
    """``corral up --redis-url redis+sentinel://...``: requests for a placed model go on while
    the master dies and the replica takes over; afterwards routers place through the new one."""
    with Cluster(tmp_path / "cluster", workers=2, routers=2, redis_url=sentinels.url,
                 env={"OLLAMA_NUM_PARALLEL": "4"}) as c:
        c.import_models(gguf_path, gguf_digest, ["d1"])
        generate(c, "d1", 1)
        placed = c.ps()
        time.sleep(0.5)  # replication is asynchronous
        load = Load(c.endpoint, "d1")
        try:
            wait_for("requests to flow", lambda: len([x for x in load.calls if _ok(x)]) >= 3, 30)
            killed_at = time.monotonic()
            sentinels.kill_master()
            promoted_at = time.monotonic()
            wait_for("requests after the failover",
                     lambda: len([x for x in load.calls if x.started > promoted_at + 3]) >= 6, 30, interval=0.2)
        finally:
            load.stop()
        report = "\n".join(f"{x.started - killed_at:+.1f}s {x.status} {x.error or str(x.body)[:100]}"
                           for x in load.calls)
        assert all(_ok(x) for x in load.calls), report
        assert [x for x in load.calls if killed_at < x.started < promoted_at], report  # some ran in the gap
        assert c.ps() == placed
        assert [w["id"] for w in c.workers()] == ["worker-1", "worker-2"]
        generate(c, "d1", 1)
