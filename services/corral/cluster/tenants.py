"""API keys in Redis: who may call the cluster, what they may use, and what they used.

Routers admit requests (``ADMIT``), serve the key admin API and read usage; workers report
the tokens each request took (``TOKENS``). Both sides import this module; neither imports
the other. Keys (all under ``corral:``):

    corral:apikeys          HASH    name -> JSON {"name", "admin", "models", "rpm", "tpm", "created_at", "id"}
    corral:apikey:<id>      STRING  name; <id> is the SHA-256 (hex) of the secret, the only trace of it
    corral:rpm:<id>         ZSET    one member per request admitted in the last minute -> its time (ms)
    corral:tpm:<id>         HASH    second (epoch) -> tokens reported in it, for the last minute
    corral:flight:<id>      ZSET    request -> lease expiry (ms): the key's inference requests in flight
    corral:usage:<hour>     HASH    "<name>\\t<model>\\t<field>" -> count, per hour (epoch hours), kept 35 days

Limits are sliding windows of one minute, checked and taken in one script, so they hold
exactly across any number of routers: a key with ``rpm: 30`` gets its 31st request in any
60 s refused. Tokens are known only once a request ends, so ``tpm`` admits while the last
minute's reported tokens are under the limit: it can be passed by what was in flight when it
was reached, never by a request admitted after.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from corral.api.errors import CorralError, ForbiddenError, RateLimitError, UnauthorizedError
from corral.cluster.workers import PREFIX, now_ms
from corral.store.names import ModelName, is_valid_name

KEYS = PREFIX + "apikeys"
WINDOW_MS = 60_000
FLIGHT_LEASE_MS = 15 * 60_000  # a dead router's in-flight entries lapse after this
USAGE_TTL_S = 35 * 86_400
USAGE_FIELDS = ("requests", "errors", "prompt_tokens", "generated_tokens")
MAX_KEYS = 10_000
MAX_MODELS_PER_KEY = 1_000
MAX_LIMIT = 1_000_000_000
SECRET_PREFIX = "corral-"
ADMIN_NAME = "admin"  # CORRAL_ADMIN_KEY's name in usage and metrics; no stored key may take it
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# Routers tell workers whose request it is (the key's id and name), so that the worker
# reports its tokens to that key; workers trust it because it comes with the cluster token.
TENANT_HEADER = "x-corral-tenant"
# Where a router's request scope holds the admitted ``Tenant`` (absent with CORRAL_AUTH=off),
# and for an inference request its ``Usage``.
TENANT_SCOPE = "corral.tenant"
USAGE_SCOPE = "corral.usage"
CLUSTER_TOKEN_HEADER = "x-corral-cluster-token"


def key_id(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def same_secret(given: str, expected: str) -> bool:
    # Key ids are hex, and compare_digest takes ASCII str as it is; anything else as bytes.
    if given.isascii() and expected.isascii():
        return hmac.compare_digest(given, expected)
    return hmac.compare_digest(given.encode(), expected.encode())


def rpm_key(kid: str) -> str:
    return f"{PREFIX}rpm:{kid}"


def tpm_key(kid: str) -> str:
    return f"{PREFIX}tpm:{kid}"


def flight_key(kid: str) -> str:
    return f"{PREFIX}flight:{kid}"


def id_key(kid: str) -> str:
    return f"{PREFIX}apikey:{kid}"


@functools.lru_cache(maxsize=64)
def usage_key(hour: int) -> str:
    # The same str object for the hour: its hash is computed once (router/state.py packs it).
    return f"{PREFIX}usage:{hour}"


def hour_of(ms: int) -> int:
    return ms // 3_600_000


@dataclass(frozen=True)
class Tenant:
    """A key a request came with, as admitted."""

    id: str
    name: str
    admin: bool = False
    models: frozenset[str] | None = None  # ``model_key``s of the models it may use; None: every model
    rpm: int | None = None
    tpm: int | None = None
    created_at: str = ""
    public: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Tenant:
        models = record.get("models")
        return cls(
            id=record["id"],
            name=record["name"],
            admin=bool(record.get("admin")),
            models=None if models is None else frozenset(filter(None, map(model_key, models))),
            rpm=record.get("rpm"),
            tpm=record.get("tpm"),
            created_at=record.get("created_at", ""),
            public={k: v for k, v in record.items() if k != "id"},
        )

    @functools.cached_property
    def header(self) -> str:
        """``TENANT_HEADER``'s value."""
        return f"{self.id} {self.name}"

    @functools.cached_property
    def flight_key(self) -> str:
        return flight_key(self.id)

    @functools.cached_property
    def admission_keys(self) -> tuple[str, ...]:
        """The Redis keys admitting its requests takes (``ADMIT``'s KEYS), made once per key."""
        return admission_keys(self.id)

    def allows(self, model: Any) -> bool:
        return self.models is None or model_key(model) in self.models


def model_key(name: Any) -> str | None:
    """How an allow-list compares names: ``m`` is ``m:latest``, case does not count (as in Ollama)."""
    return _names(name)[0] if isinstance(name, str) else None


def display_name(name: Any) -> str:
    """A model's name as usage and metrics show it (``m`` is ``m:latest``); ``-`` for none."""
    return _names(name)[1] if isinstance(name, str) else "-"


@functools.lru_cache(maxsize=4096)
def _names(name: str) -> tuple[str | None, str]:
    # Parsed once per distinct name: every admitted inference request asks for both.
    if not is_valid_name(name):
        return None, "-"
    parsed = ModelName.parse(name)
    return parsed.casefold_key(), parsed.display


def tenant_of(scope: Any) -> Tenant | None:
    return scope.get(TENANT_SCOPE)


def may_use(scope: Any, model: Any) -> bool:
    """Whether the request's key may use ``model`` (always, without keys)."""
    tenant = tenant_of(scope)
    return tenant is None or tenant.allows(model)


def require_model(scope: Any, model: Any) -> None:
    """403 unless the request's key may use ``model`` (none named: the handler's own 400)."""
    if model is not None and model != "" and not may_use(scope, model):
        raise ForbiddenError(f"this API key may not use model '{model}'")


def parse_tenant_header(value: str) -> tuple[str, str] | None:
    """(id, name) from ``TENANT_HEADER``; None for anything else."""
    kid, _, name = value.partition(" ")
    if len(kid) == 64 and all(c in "0123456789abcdef" for c in kid) and NAME.fullmatch(name):
        return kid, name
    return None


# Admit one request of a key, or say why not. KEYS: id key, the key records, rpm, tpm, flight.
# ARGV: now (ms), request token, 1 if it is an inference request (counts in flight), the most
# such requests the key may have in flight (0: no bound), flight lease (ms), window (ms).
# Returns verdict, record JSON, retry after (s); verdict: ok | unknown | rpm | tpm | flight.
# A Lua function, so that the script that takes a slot (router/state.py) can admit first in
# the same round trip (``ADMIT_FUNCTION``); ``ADMIT`` is it on its own.
ADMIT_FUNCTION = """
local function admit(KEYS, ARGV)
  local name = redis.call('GET', KEYS[1])
  if not name then return 'unknown', '', 0 end
  local record = redis.call('HGET', KEYS[2], name)
  if not record then return 'unknown', '', 0 end
  local key = cjson.decode(record)
  local now, window = tonumber(ARGV[1]), tonumber(ARGV[6])
  local since = now - window
  local function wait(ms) return math.max(1, math.ceil((ms - now) / 1000)) end
  local rpm = tonumber(key['rpm'])
  if rpm then
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', since)
    if redis.call('ZCARD', KEYS[3]) >= rpm then
      local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
      return 'rpm', record, wait(tonumber(oldest[2]) + window)
    end
  end
  local tpm = tonumber(key['tpm'])
  if tpm then
    -- At most one field per second of the last minute: a bounded scan however busy the key is.
    local buckets = redis.call('HGETALL', KEYS[4])
    local used, live = 0, {}
    for i = 1, #buckets, 2 do
      local second = tonumber(buckets[i])
      if (second + 1) * 1000 <= since then
        redis.call('HDEL', KEYS[4], buckets[i])
      else
        used = used + tonumber(buckets[i + 1])
        live[#live + 1] = {second, tonumber(buckets[i + 1])}
      end
    end
    if used >= tpm then
      table.sort(live, function(a, b) return a[1] < b[1] end)
      for _, bucket in ipairs(live) do
        used = used - bucket[2]
        if used < tpm then return 'tpm', record, wait((bucket[1] + 1) * 1000 + window) end
      end
    end
  end
  if ARGV[3] == '1' and tonumber(ARGV[4]) > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
    if redis.call('ZCARD', KEYS[5]) >= tonumber(ARGV[4]) then return 'flight', record, 1 end
    redis.call('ZADD', KEYS[5], now + tonumber(ARGV[5]), ARGV[2])
    redis.call('PEXPIRE', KEYS[5], tonumber(ARGV[5]))
  end
  if rpm then
    redis.call('ZADD', KEYS[3], now, ARGV[2])
    redis.call('PEXPIRE', KEYS[3], window + 1000)
  end
  return 'ok', record, 0
end
"""
ADMIT = (
    ADMIT_FUNCTION
    + """
local verdict, record, retry = admit(KEYS, ARGV)
return {verdict, record, retry}
"""
)
ADMIT_KEYS, ADMIT_ARGS = 5, 6  # how many of each it takes


def admission_keys(kid: str) -> tuple[str, ...]:
    return (id_key(kid), KEYS, rpm_key(kid), tpm_key(kid), flight_key(kid))


def admission_args(token: str, *, inference: bool, flight_limit: int) -> list[Any]:
    return [now_ms(), token, 1 if inference else 0, flight_limit, FLIGHT_LEASE_MS, WINDOW_MS]


def refusal(verdict: str, tenant: Tenant | None, retry_after: int, flight_limit: int) -> CorralError:
    """The error for an admission that said no (``tenant``: None when the key is unknown)."""
    if verdict == "unknown" or tenant is None:
        return UnauthorizedError("unauthorized: invalid API key")
    if verdict == "rpm":
        message, limit = f"rate limit reached for key '{tenant.name}': {tenant.rpm} requests per minute", "requests"
    elif verdict == "tpm":
        message, limit = f"rate limit reached for key '{tenant.name}': {tenant.tpm} tokens per minute", "tokens"
    else:
        message = f"too many requests in flight for key '{tenant.name}': at most {flight_limit} at once"
        limit = "requests"
    return RateLimitError(message, retry_after=retry_after, limit=limit)


# A key's request has ended: out of flight, and counted. KEYS: flight, usage hour.
# ARGV: request token, "<name>\t<model>\t", 1 if it failed, usage TTL (s). Run on its own
# (``FINISH``) or at the end of the script that gives a slot back (router/state.py's release),
# with KEYS and ARGV offset: ``finish_lua(k, a)`` names them from KEYS[k+1] and ARGV[a+1].
def finish_lua(k: int, a: int) -> str:
    return f"""
redis.call('ZREM', KEYS[{k + 1}], ARGV[{a + 1}])
redis.call('HINCRBY', KEYS[{k + 2}], ARGV[{a + 2}] .. 'requests', 1)
if ARGV[{a + 3}] == '1' then redis.call('HINCRBY', KEYS[{k + 2}], ARGV[{a + 2}] .. 'errors', 1) end
redis.call('EXPIRE', KEYS[{k + 2}], tonumber(ARGV[{a + 4}]))
"""


FINISH = finish_lua(0, 0)

# A worker reports the tokens one request took. KEYS: tpm, usage hour.
# ARGV: now (ms), prompt tokens, generated tokens, "<name>\t<model>\t", window (ms), usage TTL (s).
TOKENS = """
local prompt, generated = tonumber(ARGV[2]), tonumber(ARGV[3])
if prompt + generated > 0 then
  redis.call('HINCRBY', KEYS[1], math.floor(tonumber(ARGV[1]) / 1000), prompt + generated)
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5]) + 1000)
end
redis.call('HINCRBY', KEYS[2], ARGV[4] .. 'prompt_tokens', prompt)
redis.call('HINCRBY', KEYS[2], ARGV[4] .. 'generated_tokens', generated)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[6]))
"""

# Store a new key unless its name is taken or the store is full. KEYS: the key records, id key.
# ARGV: name, record JSON, the most keys. Returns 1, or 0 (name taken), or -1 (full).
CREATE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""

# Revoke a key: its record, its id and its windows. KEYS: the key records. ARGV: name.
# Returns 1, or 0 if there is no such key.
REVOKE = """
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return 0 end
local id = cjson.decode(record)['id']
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', 'corral:apikey:' .. id, 'corral:rpm:' .. id, 'corral:tpm:' .. id, 'corral:flight:' .. id)
return 1
"""


@dataclass(slots=True)
class Usage:
    """One admitted inference request's accounting, from admission to its end."""

    tenant: Tenant
    token: str  # its member in the key's flight (and rpm) window
    flight_limit: int = 0  # the most inference requests the key may have in flight
    model: str = "-"  # as usage shows it, once the body is read
    recorded: bool = False  # its end was written (with its slot's release)
    # Admitted (its limits checked and taken) yet? A key the router has seen is admitted with
    # the request's first slot (router/state.py), in the same round trip; ``admit`` does it on
    # its own where a request answers without taking a slot.
    admitted: bool = True
    admit: Callable[[Usage], Awaitable[None]] | None = field(default=None, repr=False)
    refused: str = ""  # the verdict, when the admission made with its slot said no
    status: int = 0  # the response's status once it starts (router/forward.py sets it); 0: none

    def admission_keys_args(self) -> tuple[tuple[str, ...], list[Any]]:
        return self.tenant.admission_keys, admission_args(self.token, inference=True, flight_limit=self.flight_limit)

    def refusal(self, verdict: str, retry_after: int) -> CorralError:
        self.refused = verdict
        return refusal(verdict, self.tenant, retry_after, self.flight_limit)

    async def ensure_admitted(self) -> None:
        """Admit it now unless it was (raises its 401 or 429)."""
        if not self.admitted and self.admit is not None:
            self.admitted = True
            await self.admit(self)

    def finish_keys_args(self, failed: bool) -> tuple[list[str], list[Any]]:
        keys = [self.tenant.flight_key, usage_key(hour_of(now_ms()))]
        return keys, [self.token, usage_prefix(self.tenant.name, self.model), 1 if failed else 0, USAGE_TTL_S]


def usage_prefix(name: str, model: str) -> str:
    return f"{name}\t{model}\t"


def record_json(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"))
