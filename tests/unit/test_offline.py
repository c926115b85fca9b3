"""Slots taken while Redis is away (``corral.router.offline``), and how Redis gets them back,
against a real redis-server."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from corral.cluster.workers import WorkerInfo, now_ms
from corral.router.offline import OfflineLeases
from corral.router.state import SLOTS, ClusterState, Placement, inflight_key, placed_key, used_key
from tests.support.redisd import RedisServer

W1, W2, W3 = (WorkerInfo(id=f"w{i}", url=f"http://w{i}", num_parallel=2) for i in (1, 2, 3))


async def placed(state: ClusterState, worker: WorkerInfo, model: str) -> None:
    """A placement with nothing running on it (a load's first slot, given back)."""
    await state.place(worker.id, model, 100)
    await state.release(worker.id, model, now_ms() + 60_000)


def test_offline_slots_go_to_the_known_replicas_least_used_first():
    offline = OfflineLeases()
    assert offline.lease("m", set()) is None  # nothing known yet: a 503 for the caller
    offline.record([W1, W2, W3], [])
    assert offline.lease("m", set()) is None  # placed nowhere known
    offline.record([W1, W2, W3], [Placement("w1", "m", 1, 0, -1), Placement("w2", "m", 1, 0, -1),
                                  Placement("w3", "other", 1, 0, -1)])
    taken = [offline.lease("m", set()).id for _ in range(4)]
    assert sorted(taken) == ["w1", "w1", "w2", "w2"]  # spread over both replicas
    assert offline.lease("m", {"w1", "w2"}) is None  # both failed this request: nowhere else
    assert offline.release("w1", "m", 123) and offline.release("w1", "m", 456)
    assert not offline.release("w1", "m", 789)  # no slot of its own left: that one was Redis's
    assert offline.pending  # uses to record, slots still running on w2


def test_reconcile_hands_redis_running_slots_and_last_uses(redis_server):
    async def main() -> None:
        redis = aioredis.from_url(redis_server.url)
        state = ClusterState(redis)
        await placed(state, W1, "m")
        offline = OfflineLeases()
        offline.record([W1], await state.placements(["w1"]))
        offline.redis_failed(RedisConnectionError("gone"))
        assert offline.active
        # Two requests run, one finishes, while Redis is away.
        assert offline.lease("m", set()).id == "w1" and offline.lease("m", set()).id == "w1"
        expiry = now_ms() + 300_000
        assert offline.release("w1", "m", expiry)
        await offline.reconcile(state)
        assert not offline.active
        # The one still running holds a slot in Redis now, which its release gives back.
        assert int(await redis.hget(inflight_key("w1"), "m")) == 1
        assert await redis.zcard(SLOTS) == 1
        assert json.loads(await redis.hget(placed_key("w1"), "m"))["expires_at"] == expiry
        assert int(await redis.hget(used_key("w1"), "m")) >= expiry - 300_000
        assert not offline.release("w1", "m", expiry)  # not offline's any more...
        assert await state.release("w1", "m", expiry) == 0  # ...Redis's
        assert await redis.zcard(SLOTS) == 0 and not offline.pending
        await redis.aclose()

    asyncio.run(main())


def test_a_release_redis_missed_is_done_when_it_returns(tmp_path):
    async def main(server: RedisServer) -> None:
        redis = aioredis.from_url(server.url, socket_connect_timeout=0.5, socket_timeout=0.5)
        state = ClusterState(redis)
        await placed(state, W1, "m")
        assert await state.acquire("m", [W1]) == "w1"
        server.shutdown()  # an outage: the request ends meanwhile, and its release fails
        with pytest.raises(RedisError):
            await state.release("w1", "m", now_ms())
        assert state.unreleased
        server.start()  # back, with its append-only file
        assert int(await redis.hget(inflight_key("w1"), "m")) == 1  # still counted as running...
        assert await state.release_pending() == 1
        assert not state.unreleased  # ...until the missed release is done
        assert await redis.hget(inflight_key("w1"), "m") is None and await redis.zcard(SLOTS) == 0
        await redis.aclose()

    with RedisServer(tmp_path / "redis", args=["--appendonly", "yes"]) as server:
        asyncio.run(main(server))


def test_slots_that_lapsed_during_an_outage_are_put_back(redis_server):
    async def main() -> None:
        redis = aioredis.from_url(redis_server.url)
        state = ClusterState(redis)
        await placed(state, W1, "m")
        assert await state.acquire("m", [W1]) == "w1"
        # A long outage: the slot's lease ran out and another router's reaper gave it back.
        await redis.zadd(SLOTS, {next(iter(state._held.values()))[0]: 0}, xx=True)
        assert await state.reap_slots() == 1
        assert await redis.hget(inflight_key("w1"), "m") is None
        assert await state.restore_held() == 1  # the request still runs: counted again
        assert int(await redis.hget(inflight_key("w1"), "m")) == 1
        assert await state.restore_held() == 0  # once
        assert await state.release("w1", "m", now_ms()) == 0
        await redis.aclose()

    asyncio.run(main())


def test_a_request_that_ends_while_its_slot_is_put_back_leaves_none(redis_server):
    # Two requests' slots lapsed during an outage; one request ends while they are being put
    # back (its release finds no slot to give back). Only the one still running may count:
    # an orphan slot would make the model look busy until its lease ran out (a needless replica).
    async def main() -> None:
        redis = aioredis.from_url(redis_server.url)
        state = ClusterState(redis)
        await placed(state, W1, "m")
        assert await state.acquire("m", [W1]) == "w1" and await state.acquire("m", [W1]) == "w1"
        for slot in next(iter(state._held.values())):
            await redis.zadd(SLOTS, {slot: 0}, xx=True)
        assert await state.reap_slots() == 2
        restored, remaining = await asyncio.gather(state.restore_held(), state.release("w1", "m", now_ms()))
        assert restored == 1 and remaining == 1  # the other request still runs
        assert int(await redis.hget(inflight_key("w1"), "m")) == 1 and await redis.zcard(SLOTS) == 1
        assert await state.release("w1", "m", now_ms()) == 0  # the last one gives back the last slot
        assert await redis.hget(inflight_key("w1"), "m") is None and await redis.zcard(SLOTS) == 0
        await redis.aclose()

    asyncio.run(main())
