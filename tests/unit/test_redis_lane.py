"""The router's lean Redis connection (``corral.router.redis_lane``) against a real redis-server."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from corral.router.redis_lane import RedisLane, Script

INCR_BY = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")


def test_scripts_load_themselves_and_many_callers_share_the_connection(redis_server):
    async def main() -> None:
        lane = RedisLane(redis_server.url)
        # The first call finds no cached script (NOSCRIPT) and sends its text.
        results = await asyncio.gather(*(lane.evalsha(INCR_BY, ["n"], [i]) for i in range(1, 101)))
        assert len(set(results)) == 100 and max(results) == 5050  # each ran once, each got its own reply
        assert await lane.call("GET", "n") == b"5050"
        assert await lane.call("SCRIPT", "EXISTS", INCR_BY.sha) == [1]
        with pytest.raises(ResponseError):
            await lane.call("INCRBY", "n", "not a number")
        assert await lane.call("GET", "n") == b"5050"  # an error reply leaves the connection usable
        lane.close()

    asyncio.run(main())
    with redis_server.client() as client:
        assert client.get("n") == "5050"  # the database in the URL


def test_arguments_of_every_kind_arrive_as_sent(redis_server):
    """Commands are packed as one ASCII string where they can be; model names outside ASCII,
    bytes and numbers take the other path and must arrive byte for byte all the same."""

    async def main() -> None:
        lane = RedisLane(redis_server.url)
        values = ["llama3.2:latest", "modèle-日本:q4", "", 12345, 1.5, b"\x00\xff raw", "a\r\nb"]
        for i, value in enumerate(values):
            assert await lane.call("SET", f"v{i}", value) == b"OK"
            expected = value if isinstance(value, bytes) else str(value).encode()
            assert await lane.call("GET", f"v{i}") == expected
        assert await lane.call("MSET", "x", "é", "y", b"\x01") == b"OK"  # both kinds in one command
        assert await lane.call("MGET", "x", "y") == ["é".encode(), b"\x01"]
        lane.close()

    asyncio.run(main())


def test_a_slow_reply_times_out_and_the_next_call_reconnects(redis_server):
    async def main() -> None:
        lane = RedisLane(redis_server.url, timeout=0.3)
        assert await lane.call("PING") == b"PONG"
        with pytest.raises(RedisTimeoutError):
            await lane.call("BLPOP", "nothing-here", 2)  # Redis answers only after 2 s
        assert await lane.call("PING") == b"PONG"  # on a new connection
        lane.close()

    asyncio.run(main())


def test_redis_gone_and_back(redis_server):
    async def main() -> None:
        lane = RedisLane(redis_server.url, timeout=1)
        assert await lane.evalsha(INCR_BY, ["k"], [1]) == 1
        redis_server.shutdown()
        with pytest.raises((RedisConnectionError, RedisTimeoutError)):
            await lane.evalsha(INCR_BY, ["k"], [1])
        redis_server.start()  # empty again, and the script cache too
        assert await lane.evalsha(INCR_BY, ["k"], [1]) == 1
        lane.close()

    asyncio.run(main())
