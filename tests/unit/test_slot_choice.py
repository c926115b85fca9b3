"""Which worker a request for a placed model goes to (``ClusterState.acquire``, the ``_ACQUIRE``
script), case by case against a real redis-server: the fewest requests in flight first, then
the worker that last served the conversation, then the least recently used; full workers and
workers not holding the model are never chosen."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from corral.cluster.workers import PREFIX, WorkerInfo
from corral.router.state import ClusterState, inflight_key, placed_key, used_key

MODEL = "m:latest"
CONVERSATION = "c0ffee"

# Each worker: (holds the model, requests in flight, slots, last used); then the worker that last
# served the conversation ("" for none), and the worker expected ("" for no slot anywhere).
CASES = {
    "fewest in flight": ({"a": (True, 1, 4, 1), "b": (True, 0, 4, 9)}, "", "b"),
    "a full worker is skipped": ({"a": (True, 2, 2, 1), "b": (True, 3, 4, 9)}, "", "b"),
    "not holding the model": ({"a": (False, 0, 4, 1), "b": (True, 2, 4, 9)}, "", "b"),
    "tie: the conversation's worker": ({"a": (True, 1, 4, 1), "b": (True, 1, 4, 9)}, "b", "b"),
    "tie, no conversation: least recently used": ({"a": (True, 1, 4, 9), "b": (True, 1, 4, 1)}, "", "b"),
    "the conversation does not beat fewer in flight": ({"a": (True, 0, 4, 9), "b": (True, 1, 4, 1)}, "b", "a"),
    "the conversation's worker is full": ({"a": (True, 1, 4, 9), "b": (True, 2, 2, 1)}, "b", "a"),
    "the conversation's worker lost the model": ({"a": (True, 0, 4, 9), "b": (False, 0, 4, 1)}, "b", "a"),
    "every worker full": ({"a": (True, 1, 1, 1), "b": (True, 2, 2, 1)}, "", ""),
}


@pytest.mark.parametrize("case", CASES)
def test_slot_choice(redis_server, case):
    workers, last_served, expected = CASES[case]

    async def main() -> str | None:
        redis = aioredis.from_url(redis_server.url)
        try:
            await redis.flushdb()
            for wid, (holds, in_flight, _slots, used) in workers.items():
                if holds:
                    await redis.hset(placed_key(wid), MODEL, json.dumps({"size": 1, "since": 0, "expires_at": -1}))
                await redis.hset(inflight_key(wid), MODEL, in_flight)
                await redis.hset(used_key(wid), MODEL, used)
            if last_served:
                await redis.set(f"{PREFIX}affinity:{MODEL}:{CONVERSATION}", last_served)
            infos = [WorkerInfo(id=wid, url=f"http://{wid}", num_parallel=slots) for wid, (_, _, slots, _) in workers.items()]
            chosen = await ClusterState(redis).acquire(MODEL, infos, CONVERSATION)
            if chosen:  # the slot is taken: one more in flight there, and it is the conversation's now
                assert int(await redis.hget(inflight_key(chosen), MODEL)) == workers[chosen][1] + 1
                assert (await redis.get(f"{PREFIX}affinity:{MODEL}:{CONVERSATION}")).decode() == chosen
            return chosen
        finally:
            await redis.aclose()

    assert (asyncio.run(main()) or "") == expected
