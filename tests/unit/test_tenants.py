"""The API keys' Lua scripts (corral.cluster.tenants) against a real redis-server, with the clock
given: admission's verdicts and Retry-After, the sliding windows at their edges, revocation,
and what a request's end and a worker's token report write."""

from __future__ import annotations

import json

import pytest
import redis

from corral.cluster import tenants

NAME = "alice"
SECRET = "corral-test-secret"
KID = tenants.key_id(SECRET)
T0 = 1_700_000_000_000  # ms


def make(db: redis.Redis, **record: object) -> None:
    body = {"name": NAME, "admin": False, "models": None, "rpm": None, "tpm": None, "created_at": "", "id": KID, **record}
    assert db.eval(tenants.CREATE, 2, tenants.KEYS, tenants.id_key(KID), NAME, json.dumps(body), 10) == 1


def admit(db: redis.Redis, now: int, token: str = "r", *, inference: bool = True, flight: int = 0) -> tuple[str, int]:
    verdict, record, retry = db.eval(
        tenants.ADMIT, 5, tenants.id_key(KID), tenants.KEYS, tenants.rpm_key(KID), tenants.tpm_key(KID),
        tenants.flight_key(KID), now, token, 1 if inference else 0, flight, tenants.FLIGHT_LEASE_MS, tenants.WINDOW_MS)
    if verdict != "unknown":  # (the redis_db client decodes replies)
        assert json.loads(record)["name"] == NAME
    return verdict, int(retry)


def tokens(db: redis.Redis, now: int, prompt: int, generated: int, model: str = "m:latest") -> None:
    db.eval(tenants.TOKENS, 2, tenants.tpm_key(KID), tenants.usage_key(tenants.hour_of(now)), now, prompt, generated,
            tenants.usage_prefix(NAME, model), tenants.WINDOW_MS, tenants.USAGE_TTL_S)


def test_an_unknown_key_is_refused(redis_db: redis.Redis) -> None:
    assert admit(redis_db, T0) == ("unknown", 0)
    make(redis_db)
    assert admit(redis_db, T0) == ("ok", 0)


def test_rpm_is_exact_over_a_sliding_minute(redis_db: redis.Redis) -> None:
    make(redis_db, rpm=3)
    for i in range(3):
        assert admit(redis_db, T0 + i * 10_000, f"r{i}") == ("ok", 0)
    # The 4th within the minute: refused until the first admission is 60 s old.
    assert admit(redis_db, T0 + 30_000, "r3") == ("rpm", 30)
    assert admit(redis_db, T0 + 59_999, "r4") == ("rpm", 1)
    assert admit(redis_db, T0 + 60_000, "r5") == ("ok", 0)  # the first has left the window
    assert admit(redis_db, T0 + 60_001, "r6") == ("rpm", 10)  # the second leaves at T0 + 70 s
    # Refusals do not count against the limit.
    assert redis_db.zcard(tenants.rpm_key(KID)) == 3


def test_tpm_admits_until_the_minute_s_tokens_reach_the_limit(redis_db: redis.Redis) -> None:
    make(redis_db, tpm=100)
    assert admit(redis_db, T0) == ("ok", 0)
    tokens(redis_db, T0 + 500, 30, 30)
    assert admit(redis_db, T0 + 1_000) == ("ok", 0)  # 60 < 100
    tokens(redis_db, T0 + 20_000, 20, 30)  # 110: over
    # Refused until enough of the window's tokens are older than a minute: the 60 of second 0
    # leave at T0 + 61 s (per-second buckets), leaving 50 < 100.
    assert admit(redis_db, T0 + 21_000) == ("tpm", 40)
    assert admit(redis_db, T0 + 60_500) == ("tpm", 1)
    assert admit(redis_db, T0 + 61_000) == ("ok", 0)
    assert redis_db.hlen(tenants.tpm_key(KID)) == 1  # second 0 pruned


def test_in_flight_requests_are_bounded_and_released(redis_db: redis.Redis) -> None:
    make(redis_db)
    assert admit(redis_db, T0, "a", flight=2) == ("ok", 0)
    assert admit(redis_db, T0, "b", flight=2) == ("ok", 0)
    assert admit(redis_db, T0, "c", flight=2) == ("flight", 1)
    assert admit(redis_db, T0, "d", inference=False, flight=2) == ("ok", 0)  # not an inference request
    redis_db.eval(tenants.FINISH, 2, tenants.flight_key(KID), tenants.usage_key(tenants.hour_of(T0)), "a",
                  tenants.usage_prefix(NAME, "m:latest"), 0, tenants.USAGE_TTL_S)
    assert admit(redis_db, T0, "e", flight=2) == ("ok", 0)
    # A dead router's requests lapse with their lease.
    assert admit(redis_db, T0 + tenants.FLIGHT_LEASE_MS + 1, "f", flight=2) == ("ok", 0)


def test_usage_counts_requests_errors_and_tokens_per_hour(redis_db: redis.Redis) -> None:
    make(redis_db)
    usage = tenants.usage_key(tenants.hour_of(T0))
    for failed in (0, 1, 0):
        redis_db.eval(tenants.FINISH, 2, tenants.flight_key(KID), usage, "t", tenants.usage_prefix(NAME, "m:latest"),
                      failed, tenants.USAGE_TTL_S)
    tokens(redis_db, T0, 7, 5)
    tokens(redis_db, T0, 3, 0)
    prefix = tenants.usage_prefix(NAME, "m:latest")
    assert {k.removeprefix(prefix): int(v) for k, v in redis_db.hgetall(usage).items()} == {
        "requests": 3, "errors": 1, "prompt_tokens": 10, "generated_tokens": 5}
    assert 0 < redis_db.ttl(usage) <= tenants.USAGE_TTL_S


def test_revoking_removes_the_key_and_its_windows(redis_db: redis.Redis) -> None:
    make(redis_db, rpm=5, tpm=5)
    admit(redis_db, T0)
    tokens(redis_db, T0, 1, 1)
    assert redis_db.eval(tenants.REVOKE, 1, tenants.KEYS, NAME) == 1
    assert admit(redis_db, T0) == ("unknown", 0)
    assert not redis_db.exists(tenants.rpm_key(KID), tenants.tpm_key(KID), tenants.id_key(KID))
    assert redis_db.eval(tenants.REVOKE, 1, tenants.KEYS, NAME) == 0


def test_names_are_unique_and_the_store_is_bounded(redis_db: redis.Redis) -> None:
    make(redis_db)
    other = tenants.key_id("another")
    assert redis_db.eval(tenants.CREATE, 2, tenants.KEYS, tenants.id_key(other), NAME, "{}", 10) == 0
    assert redis_db.eval(tenants.CREATE, 2, tenants.KEYS, tenants.id_key(other), "bob", "{}", 1) == -1


@pytest.mark.parametrize(("models", "name", "allowed"), [
    (None, "anything", True),
    (["llama3.2"], "llama3.2:latest", True),
    (["llama3.2:latest"], "LLaMA3.2", True),
    (["llama3.2"], "llama3.2:1b", False),
    (["team/m:v1"], "registry.ollama.ai/team/m:v1", True),
    (["m"], "not a name!", False),
])
def test_a_key_s_model_list(models, name, allowed) -> None:
    tenant = tenants.Tenant.from_record({"id": KID, "name": NAME, "models": models})
    assert tenant.allows(name) is allowed


def test_the_tenant_header_is_parsed_strictly() -> None:
    assert tenants.parse_tenant_header(f"{KID} {NAME}") == (KID, NAME)
    for bad in ("", KID, f"{KID} ", f"{KID[:-1]} {NAME}", f"{KID} a b", f"{KID.upper()} {NAME}", f"{KID} -x"):
        assert tenants.parse_tenant_header(bad) is None, bad


def test_a_seen_key_is_admitted_with_its_slot_and_a_refusal_takes_none(redis_server, redis_db: redis.Redis) -> None:
    """router/state.py's admit-and-acquire script: the admission first, in the same round trip."""
    import asyncio

    import redis.asyncio as aioredis

    from corral.api.errors import RateLimitError, UnauthorizedError
    from corral.cluster.workers import WorkerInfo
    from corral.router.state import ClusterState, inflight_key, placed_key

    make(redis_db, rpm=1)
    tenant = tenants.Tenant.from_record(json.loads(redis_db.hget(tenants.KEYS, NAME)))
    redis_db.hset(placed_key("w"), "m:latest", json.dumps({"size": 1, "since": 0, "expires_at": -1}))
    worker = WorkerInfo(id="w", url="http://w", num_parallel=4)

    async def main() -> None:
        client = aioredis.from_url(redis_server.url)
        try:
            state = ClusterState(client)
            first = tenants.Usage(tenant, "t1", flight_limit=4, admitted=False)
            assert await state.acquire("m:latest", [worker], admission=first) == "w" and first.admitted
            second = tenants.Usage(tenant, "t2", flight_limit=4, admitted=False)
            with pytest.raises(RateLimitError, match="1 requests per minute"):
                await state.acquire("m:latest", [worker], admission=second)
            assert second.admitted and second.refused == "rpm"
            assert int(await client.hget(inflight_key("w"), "m:latest")) == 1  # the refused one took no slot
            redis_db.eval(tenants.REVOKE, 1, tenants.KEYS, NAME)
            third = tenants.Usage(tenant, "t3", flight_limit=4, admitted=False)
            with pytest.raises(UnauthorizedError):
                await state.acquire("m:latest", [worker], admission=third)
        finally:
            await client.aclose()

    asyncio.run(main())
