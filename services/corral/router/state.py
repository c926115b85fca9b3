"""The cluster's placement state in Redis: which worker holds which model, and how busy it is.

Keys (besides the worker registry of ``corral.cluster.workers``):

    corral:placed:<worker>     HASH  model -> JSON {"size", "since", "expires_at"}
    corral:inflight:<worker>   HASH  model -> requests running there now
    corral:slots               ZSET  "<worker> <model> <token>" -> lease expiry (ms): one per running
                                     request, renewed by its router; a lapsed one is given back
    corral:used:<worker>       HASH  model -> last use (ms), for least-recently-used eviction
    corral:queue:<model>       ZSET  one member per request queued for the model, cluster-wide ->
                                     lease expiry (ms), renewed while it waits: a dead router's lapse
    corral:lock:place          STRING  held while a router decides a load (milliseconds)
    corral:models:generation   STRING  bumped after every model write (create, copy, delete, pull)

Every multi-key change is one Lua script, so routers (any number, any of which may die at
any moment) never see half an update: taking a slot checks residency and the slot count and
increments in one step; the reaper's "unload if expired and idle" is checked and claimed in
one step, so each expiry is acted on once.

``expires_at`` is in ms since the epoch; ``-1`` means never (negative keep-alive); a placement
with requests in flight never expires (the in-flight guard).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from corral.cluster.tenants import ADMIT_FUNCTION, Usage, finish_lua
from corral.cluster.workers import PREFIX, WorkerInfo, now_ms
from corral.router.redis_lane import Packed, RedisLane, Script, packed, unpacked

NEVER = -1
PLACE_LOCK = PREFIX + "lock:place"
PLACE_LOCK_MS = 10_000
SLOTS = PREFIX + "slots"
SLOT_LEASE_MS = 10_000  # a router renews its slots every reaper pass (1 s); a dead router's lapse
# Releases kept for after an outage (beyond these, slots are left to lapse): a bound, not a need.
MAX_UNRELEASED = 100_000
MODELS_GENERATION = PREFIX + "models:generation"
# How long a conversation remembers the worker that last served it (its prefix may be cached there).
AFFINITY_TTL_S = 600


def placed_key(worker_id: str) -> str:
    return f"{PREFIX}placed:{worker_id}"


def inflight_key(worker_id: str) -> str:
    return f"{PREFIX}inflight:{worker_id}"


def used_key(worker_id: str) -> str:
    return f"{PREFIX}used:{worker_id}"


QUEUE_PREFIX = PREFIX + "queue:"
QUEUE_LEASE_MS = 10_000  # a queued request renews its place every QUEUE_RENEW_S
QUEUE_RENEW_S = 1.0


def queue_key(model: str) -> str:
    return QUEUE_PREFIX + model


@dataclass
class Placement:
    worker: str
    model: str
    size: int
    since: int
    expires_at: int
    in_flight: int = 0
    last_used: int = 0


# Take a slot on the least loaded worker already holding the model; ties go to the worker that
# last served this conversation (its KV cache may hold the prefix), then to the least recently used.
# ARGV: model, now, lease ms, token, affinity key ('' for none), affinity TTL s, then (worker id,
# slots) pairs of eligible (live, ready) workers.
_ACQUIRE = """
local model, now = ARGV[1], ARGV[2]
local pref = false
if ARGV[5] ~= '' then pref = redis.call('GET', ARGV[5]) end
local best, best_n, best_used = nil, nil, nil
for i = 7, #ARGV, 2 do
  local w, slots = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('HEXISTS', 'corral:placed:' .. w, model) == 1 then
    local n = tonumber(redis.call('HGET', 'corral:inflight:' .. w, model) or '0')
    local used = tonumber(redis.call('HGET', 'corral:used:' .. w, model) or '0')
    if n < slots then
      local better = best == nil or n < best_n
      if not better and n == best_n then
        if pref and (w == pref) ~= (best == pref) then
          better = w == pref
        else
          better = used < best_used
        end
      end
      if better then best, best_n, best_used = w, n, used end
    end
  end
end
if best then
  redis.call('HINCRBY', 'corral:inflight:' .. best, model, 1)
  redis.call('HSET', 'corral:used:' .. best, model, now)
  redis.call('ZADD', 'corral:slots', tonumber(now) + tonumber(ARGV[3]), best .. ' ' .. model .. ' ' .. ARGV[4])
  if ARGV[5] ~= '' then redis.call('SET', ARGV[5], best, 'EX', tonumber(ARGV[6])) end
end
return {best or '', redis.call('GET', 'corral:models:generation') or '0'}
"""

# With API keys: admit the request's key first (corral.cluster.tenants.ADMIT_FUNCTION; its 5
# KEYS and 6 ARGV come first), and take a slot only if it may go. Returns the acquire's
# {worker, generation} followed by the admission's verdict and retry-after.
_ADMIT_AND_ACQUIRE = (
    ADMIT_FUNCTION
    + "local function acquire(ARGV)\n"
    + _ACQUIRE
    + """end
local verdict, _, retry = admit(KEYS, ARGV)
if verdict ~= 'ok' then return {'', redis.call('GET', 'corral:models:generation') or '0', verdict, retry} end
local out = acquire({unpack(ARGV, 7)})
out[3], out[4] = verdict, retry
return out
"""
)

# Record a new placement and take its first slot (the load happens with that request).
# KEYS: placed, inflight, used, slots; ARGV: model, placement JSON, now, lease expiry, slot.
_PLACE = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5])
return 1
"""

# Give a slot back and set the keep-alive expiry. KEYS: placed, inflight, used, slots.
# ARGV: model, now, expires_at (-1 never), slot. A slot whose lease lapsed was given back already.
# With API keys, the request's end is written in the same round trip (``_RELEASE_USAGE``: KEYS
# and ARGV 5-8 as corral.cluster.tenants.FINISH's).
_RELEASE = """
local n = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if redis.call('ZREM', KEYS[4], ARGV[4]) == 1 then
  n = redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
  if n <= 0 then redis.call('HDEL', KEYS[2], ARGV[1]) end
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then
  local p = cjson.decode(raw)
  p['expires_at'] = tonumber(ARGV[3])
  redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(p))
end
return math.max(n, 0)
"""
_RELEASE_USAGE = _RELEASE.replace("return math.max(n, 0)", finish_lua(4, 4) + "return math.max(n, 0)")

# Remove a placement only if nothing runs on it and (when asked) its keep-alive passed.
# KEYS: placed, inflight, used; ARGV: model, now, check_expiry (1/0). Returns 1 when claimed.
_CLAIM_UNLOAD = """
if tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0') > 0 then return 0 end
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
if ARGV[3] == '1' then
  local exp = cjson.decode(raw)['expires_at']
  if exp == nil or exp < 0 or exp > tonumber(ARGV[2]) then return 0 end
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""

# Join the model's cluster-wide queue unless it is full, first dropping places whose lease lapsed
# (a router died with requests queued: a plain counter would keep them, and the queue would
# shrink for good). KEYS: queue; ARGV: limit, now, lease ms, place.
_ENQUEUE = """
local now = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[4])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""

# Renew a place (put it back if it lapsed meanwhile). KEYS: queue; ARGV: expiry, lease ms, place.
_KEEP_PLACE = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""

# Give back the slots whose lease lapsed (their router died, or lost Redis when it ended them).
# KEYS: slots; ARGV: now. Returns how many.
_REAP_SLOTS = """
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, slot in ipairs(lapsed) do
  local worker, model = string.match(slot, '^(%S+) (%S+) %S+$')
  redis.call('ZREM', KEYS[1], slot)
  if worker then
    local key = 'corral:inflight:' .. worker
    local n = tonumber(redis.call('HGET', key, model) or '0')
    if n <= 1 then redis.call('HDEL', key, model) else redis.call('HINCRBY', key, model, -1) end
  end
end
return #lapsed
"""

# A slot for a request that is already running (taken while Redis was away, or whose lease
# lapsed during an outage), without the slot-count check: it runs whatever the count says.
# KEYS: placed, inflight, slots; ARGV: model, lease expiry, slot. Returns 0 when the placement is
# gone (or the slot is already there).
_ADOPT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('ZADD', KEYS[3], 'NX', ARGV[2], ARGV[3]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return 1
"""

# Remove one slot (its request ended meanwhile). KEYS: slots; ARGV: slot.
_DROP_SLOT = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local worker, model = string.match(ARGV[1], '^(%S+) (%S+) %S+$')
if not worker then return 1 end
local key = 'corral:inflight:' .. worker
local n = tonumber(redis.call('HGET', key, model) or '0')
if n <= 1 then redis.call('HDEL', key, model) else redis.call('HINCRBY', key, model, -1) end
return 1
"""

# What a release records, for a placement used while Redis was away: its last use and expiry.
# KEYS: placed, used; ARGV: model, now, expires_at (-1 never).
_TOUCH = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local p = cjson.decode(raw)
p['expires_at'] = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(p))
return 1
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


_TOKEN_PREFIX = secrets.token_hex(6)
_TOKEN_COUNT = itertools.count()
# This process's id, read once (os.getpid is a system call) and again in a forked child (gunicorn's workers).
_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


@functools.lru_cache(maxsize=4096)
def _release_usage_keys(worker: str, flight: str, usage: str) -> Packed | tuple[Any, ...]:
    """_RELEASE_USAGE's keys, packed once per worker, API key and hour."""
    return packed(placed_key(worker), inflight_key(worker), used_key(worker), SLOTS, flight, usage)


def request_token() -> str:
    """Unique across routers and their processes; cheaper than 8 random bytes per request."""
    return f"{_TOKEN_PREFIX}{_PID[0]:x}.{next(_TOKEN_COUNT):x}"


class HotScript:
    def __init__(self, redis: Any, lane: RedisLane | None, text: str) -> None:
        self.lane = lane
        # The lane's Script, or redis-py's AsyncScript when routers run without the lane.
        self.script: Any = Script(text) if lane else redis.register_script(text)

    async def __call__(self, *, keys: Sequence[Any] | Packed, args: list[Any]) -> Any:
        """``keys`` and ``args`` may hold ``packed`` runs (redis_lane.py), expanded for redis-py."""
        if self.lane is None:
            return await self.script(keys=unpacked(keys), args=unpacked(args))
        return await self.lane.evalsha(self.script, keys, args)


class ClusterState:
    def __init__(self, redis: Any, lane: RedisLane | None = None) -> None:
        self.redis = redis
        # The scripts every request runs go through the lean lane when there is one.
        self.lane = lane
        self._acquire = HotScript(redis, lane, _ACQUIRE)
        self._admit_and_acquire = HotScript(redis, lane, _ADMIT_AND_ACQUIRE)
        self._place = redis.register_script(_PLACE)
        self._release = HotScript(redis, lane, _RELEASE)
        self._release_usage = HotScript(redis, lane, _RELEASE_USAGE)
        self._claim = redis.register_script(_CLAIM_UNLOAD)
        self._enqueue = redis.register_script(_ENQUEUE)
        self._keep_place = redis.register_script(_KEEP_PLACE)
        self._unlock = redis.register_script(_UNLOCK)
        self._reap_slots = redis.register_script(_REAP_SLOTS)
        self._adopt = redis.register_script(_ADOPT)
        self._drop_slot = redis.register_script(_DROP_SLOT)
        self._touch = redis.register_script(_TOUCH)
        # The slots this router holds, by (worker, model): any one of them is given back at the
        # end of a request there; all are renewed while they run.
        self._held: dict[tuple[str, str], list[str]] = {}
        # The model-store generation as of the last acquire (it comes with the answer: no extra round trip).
        self.models_generation_seen = 0
        # (worker, model, expires_at, slot) of releases Redis did not get (release_pending).
        self._unreleased: list[tuple[str, str, int, str]] = []

    def _take(self, worker: str, model: str) -> str:
        slot = f"{worker} {model} {request_token()}"
        self._held.setdefault((worker, model), []).append(slot)
        return slot

    def _give_back(self, worker: str, model: str) -> str:
        """Forget one slot (before Redis is told: if that fails, the slot's lease lapses)."""
        held = self._held.get((worker, model))
        slot = held.pop() if held else f"{worker} {model} unknown"
        if not held:
            self._held.pop((worker, model), None)
        return slot

    async def renew(self) -> None:
        """Extend the lease of every slot this router holds (only those still there)."""
        slots = [slot for held in self._held.values() for slot in held]
        if slots:
            expiry = now_ms() + SLOT_LEASE_MS
            await self.redis.zadd(SLOTS, {slot: expiry for slot in slots}, xx=True)

    # -- after an outage (router/offline.py)

    async def adopt(self, worker: str, model: str) -> str | None:
        """A slot in Redis for a request already running there; None if the placement is gone."""
        slot = f"{worker} {model} {request_token()}"
        keys = [placed_key(worker), inflight_key(worker), SLOTS]
        return slot if await self._adopt(keys=keys, args=[model, now_ms() + SLOT_LEASE_MS, slot]) else None

    def hold(self, worker: str, model: str, slot: str) -> None:
        """Count an adopted slot among this router's (renewed, given back at a release)."""
        self._held.setdefault((worker, model), []).append(slot)

    async def drop_slot(self, slot: str) -> None:
        await self._drop_slot(keys=[SLOTS], args=[slot])

    async def touch(self, worker: str, model: str, expires_at: int) -> None:
        await self._touch(keys=[placed_key(worker), used_key(worker)], args=[model, now_ms(), expires_at])

    async def restore_held(self) -> int:
        """Put back this router's slots that lapsed while Redis was away (their requests still
        run); returns how many."""
        restored = 0
        for (worker, model), slots in list(self._held.items()):
            keys = [placed_key(worker), inflight_key(worker), SLOTS]
            for slot in list(slots):
                if slot not in self._held.get((worker, model), ()):
                    continue  # its request ended since (its release found no slot to give back)
                if not int(await self._adopt(keys=keys, args=[model, now_ms() + SLOT_LEASE_MS, slot])):
                    continue
                if slot in self._held.get((worker, model), ()):
                    restored += 1
                else:  # the request ended while the slot was put back: nobody would release it
                    await self.drop_slot(slot)
        return restored

    async def reap_slots(self) -> int:
        return int(await self._reap_slots(keys=[SLOTS], args=[now_ms()]))

    # -- slots

    async def acquire(
        self,
        model: str,
        workers: list[WorkerInfo],
        affinity: str = "",
        admission: Usage | None = None,
    ) -> str | None:
        """A slot on the least loaded worker holding ``model``; ``affinity`` (a conversation's
        key, from ``affinity_key``) breaks ties towards the worker that last served it.
        ``admission``: a keyed request not admitted yet, admitted first in the same script; a
        refusal raises its error (401 or 429) and takes no slot."""
        # A keyed request's first slot shares its admission's token (unique too: one less to make).
        token = admission.token if admission is not None else request_token()
        key = f"{PREFIX}affinity:{model}:{affinity}" if affinity else ""
        args: list[Any] = [model, now_ms(), SLOT_LEASE_MS, token, key, AFFINITY_TTL_S]
        for worker in workers:
            args += [worker.id, worker.num_parallel]
        if admission is None:
            chosen, generation = await self._acquire(keys=[], args=args)
        else:
            # The key's Redis keys and the constant limits are packed once (redis_lane.packed).
            keys, admit_args = admission.admission_keys_args()
            admit = [admit_args[0], admit_args[1], packed(*admit_args[2:])]
            chosen, generation, verdict, retry = await self._admit_and_acquire(keys=packed(*keys), args=[*admit, *args])
            admission.admitted = True
            if reply_text(verdict) != "ok":
                self.models_generation_seen = int(generation)
                raise admission.refusal(reply_text(verdict), int(retry))
        self.models_generation_seen = int(generation)
        if not chosen:
            return None
        chosen = reply_text(chosen)
        self._held.setdefault((chosen, model), []).append(f"{chosen} {model} {token}")
        return chosen

    async def place(self, worker: str, model: str, size: int, expires_at: int = NEVER) -> None:
        now = now_ms()
        record = json.dumps({"size": size, "since": now, "expires_at": expires_at})
        slot = self._take(worker, model)
        await self._place(
            keys=[placed_key(worker), inflight_key(worker), used_key(worker), SLOTS],
            args=[model, record, now, now + SLOT_LEASE_MS, slot],
        )

    async def release(
        self, worker: str, model: str, expires_at: int, usage: tuple[list[str], list[Any]] | None = None
    ) -> int:
        """Give the slot back; returns how many requests still run on that placement. A slot
        Redis could not be told about is kept for ``release_pending`` (after an outage), so it
        does not count as running until its lease lapses. ``usage``: a keyed request's end
        (``Usage.finish_keys_args``), written in the same script."""
        slot = self._give_back(worker, model)
        try:
            if usage is not None:  # the keys and the key's constant arguments packed once (redis_lane.packed)
                keys = _release_usage_keys(worker, *usage[0])
                token, *constant = usage[1]
                args = [model, now_ms(), expires_at, slot, token, packed(*constant)]
                return int(await self._release_usage(keys=keys, args=args))
            return await self._release_slot(worker, model, expires_at, slot)
        except RedisError:
            if len(self._unreleased) < MAX_UNRELEASED:
                self._unreleased.append((worker, model, expires_at, slot))
            raise

    async def _release_slot(self, worker: str, model: str, expires_at: int, slot: str) -> int:
        keys = [placed_key(worker), inflight_key(worker), used_key(worker), SLOTS]
        return int(await self._release(keys=keys, args=[model, now_ms(), expires_at, slot]))

    @property
    def unreleased(self) -> bool:
        return bool(self._unreleased)

    async def release_pending(self) -> int:
        """Give back the slots whose release failed while Redis was away; returns how many."""
        pending, self._unreleased = self._unreleased, []
        for i, (worker, model, expires_at, slot) in enumerate(pending):
            try:
                await self._release_slot(worker, model, expires_at, slot)
            except RedisError:
                self._unreleased = pending[i:] + self._unreleased
                raise
        return len(pending)

    async def claim_unload(self, worker: str, model: str, *, expired_only: bool) -> bool:
        keys = [placed_key(worker), inflight_key(worker), used_key(worker)]
        return bool(await self._claim(keys=keys, args=[model, now_ms(), 1 if expired_only else 0]))

    async def drop_worker(self, worker: str) -> None:
        await self.redis.delete(placed_key(worker), inflight_key(worker), used_key(worker))

    # -- queue

    async def enqueue(self, model: str, limit: int) -> str | None:
        """A place in the model's queue (renew it with ``keep_place``), or None when the queue is full."""
        place = request_token()
        joined = await self._enqueue(keys=[queue_key(model)], args=[limit, now_ms(), QUEUE_LEASE_MS, place])
        return place if joined else None

    async def keep_place(self, model: str, place: str) -> None:
        await self._keep_place(keys=[queue_key(model)], args=[now_ms() + QUEUE_LEASE_MS, QUEUE_LEASE_MS, place])

    async def dequeue(self, model: str, place: str) -> None:
        await self.redis.zrem(queue_key(model), place)

    async def queue_depths(self) -> dict[str, int]:
        """Requests queued per model, cluster-wide (places whose lease lapsed not counted)."""
        depths = {}
        now = now_ms()
        async for key in self.redis.scan_iter(match=QUEUE_PREFIX + "*", count=500):
            name = key.decode() if isinstance(key, bytes) else key
            depths[name[len(QUEUE_PREFIX) :]] = int(await self.redis.zcount(key, f"({now}", "+inf"))
        return depths

    # -- the model store's generation

    async def models_generation(self) -> int:
        return int(await self.redis.get(MODELS_GENERATION) or 0)

    async def models_changed(self) -> None:
        await self.redis.incr(MODELS_GENERATION)

    # -- the placement lock

    async def lock(self, timeout: float) -> str | None:
        """Take the cluster-wide placement lock, waiting up to ``timeout``; its token, or None."""
        token = secrets.token_hex(8)
        deadline = time.monotonic() + timeout
        while True:
            if await self.redis.set(PLACE_LOCK, token, nx=True, px=PLACE_LOCK_MS):
                return token
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.01)

    async def unlock(self, token: str) -> None:
        await self._unlock(keys=[PLACE_LOCK], args=[token])

    # -- reads

    async def placements(self, workers: list[str]) -> list[Placement]:
        if not workers:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for worker in workers:
                pipe.hgetall(placed_key(worker))
                pipe.hgetall(inflight_key(worker))
                pipe.hgetall(used_key(worker))
            replies = await pipe.execute()
        out = []
        for i, worker in enumerate(workers):
            placed, inflight, used = replies[3 * i : 3 * i + 3]
            for model, raw in placed.items():
                model = reply_text(model)
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue
                out.append(
                    Placement(
                        worker=worker,
                        model=model,
                        size=int(record.get("size", 0)),
                        since=int(record.get("since", 0)),
                        expires_at=int(record.get("expires_at", NEVER)),
                        in_flight=int(_get(inflight, model) or 0),
                        last_used=int(_get(used, model) or 0),
                    )
                )
        return out


def _get(mapping: dict, key: str) -> Any:
    return mapping.get(key, mapping.get(key.encode()))


def reply_text(value: Any) -> str:
    """A Redis reply as text (the lane gives bytes, redis-py as configured)."""
    return value.decode() if isinstance(value, bytes) else str(value)
