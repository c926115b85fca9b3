"""The cluster-wide queue per model (``ClusterState.enqueue``) against a real redis-server: places
are bounded, counted once, given back, and lapse when the router holding them stops renewing."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

import corral.router.state as state_module
from corral.router.state import ClusterState, queue_key


def test_places_are_bounded_and_given_back(redis_server):
    async def main() -> None:
        redis = aioredis.from_url(redis_server.url)
        state = ClusterState(redis)
        a = await state.enqueue("m", 2)
        b = await state.enqueue("m", 2)
        assert a and b and a != b
        assert await state.enqueue("m", 2) is None  # full: the caller answers 503
        assert await state.queue_depths() == {"m": 2}
        await state.dequeue("m", a)
        assert await state.queue_depths() == {"m": 1}
        assert await state.enqueue("m", 2) is not None  # the freed place is taken again
        await redis.aclose()

    asyncio.run(main())


def test_places_of_a_router_that_stopped_renewing_lapse(redis_server, monkeypatch):
    monkeypatch.setattr(state_module, "QUEUE_LEASE_MS", 300)

    async def main() -> None:
        redis = aioredis.from_url(redis_server.url)
        dead, alive = ClusterState(redis), ClusterState(redis)
        # A router takes both places, then dies: it never gives them back nor renews them.
        assert await dead.enqueue("m", 2) and await dead.enqueue("m", 2)
        assert await alive.enqueue("m", 2) is None  # full for now
        await asyncio.sleep(0.4)  # past their lease
        assert (await alive.queue_depths()).get("m", 0) == 0  # they count no more
        kept = await alive.enqueue("m", 2)
        assert kept is not None  # and the queue has its room back
        for _ in range(6):  # a waiting request renews its place: it stays counted past a lease
            await asyncio.sleep(0.1)
            await alive.keep_place("m", kept)
        assert await alive.queue_depths() == {"m": 1}
        assert await redis.zcard(queue_key("m")) == 1
        await redis.aclose()

    asyncio.run(main())
