"""API keys on the router (``CORRAL_AUTH=keys``): which key may call which route, its limits,
what it used, and the admin API that manages keys.

Who may call what:

    GET/HEAD /, /api/version, GET /metrics,       anyone (probes, Prometheus)
    GET /api/cluster/ready
    create, delete, copy, push, pull, blobs,      an admin key (they change the cluster for
    /api/cluster/*                                everyone); a user key gets 403
    everything else (inference, tags, show, ps,   any valid key; a model outside the key's
    /v1/models)                                   allow-list gets 403, and lists omit it

A key comes as ``Authorization: Bearer <key>`` (the ``ollama`` client from ``OLLAMA_API_KEY``,
the OpenAI SDK from ``api_key``) or ``x-api-key: <key>`` (the Anthropic SDK). The bootstrap
admin key is ``CORRAL_ADMIN_KEY``, checked here without Redis; every other key is admitted by
one Lua script (``corral.cluster.tenants.ADMIT``) that also checks and takes its limits, so a
revoked key fails on the next request on every router. While Redis is away, keys admitted in
the last ``OFFLINE_GRACE_S`` are let in without limits (the cluster keeps serving, as it does
for placements); others get 503.

When an inference request ends, its key's in-flight entry is dropped and its usage counted
(``FINISH``, off the request's path); the worker that ran it reports its tokens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Receive, Scope, Send

from corral.api.durations import DurationError, parse_go_duration
from corral.api.errors import (
    BadRequestError,
    CorralError,
    ForbiddenError,
    NotFoundError,
    UnauthorizedError,
)
from corral.api.gojson import BOOL, INT, STRING, Slice, Struct
from corral.api.http import answer_error, json_response, read_json
from corral.cluster import tenants
from corral.cluster.tenants import Tenant
from corral.router.dispatch import ClusterUnavailableError
from corral.router.forward import FORWARDED
from corral.router.metrics import RouterMetrics
from corral.router.redis_lane import RedisLane
from corral.router.settings import RouterSettings
from corral.router.state import HotScript, reply_text, request_token

logger = logging.getLogger(__name__)

PUBLIC = {
    ("GET", "/"),
    ("HEAD", "/"),
    ("GET", "/api/version"),
    ("HEAD", "/api/version"),
    ("GET", "/metrics"),
    ("GET", "/api/cluster/ready"),
}
ADMIN_PATHS = {"/api/create", "/api/delete", "/api/copy", "/api/push", "/api/pull"}
ADMIN_PREFIXES = ("/api/blobs/", "/api/cluster/")
OFFLINE_GRACE_S = 600.0
REMEMBER_REFRESH_S = 60.0  # how stale "last seen" may get (far inside the grace period)
MAX_REMEMBERED = 10_000  # keys remembered for a Redis outage
MAX_SECRET = 512
MAX_PENDING_FINISHES = 4096
COUNT_FLUSH_S = 1.0  # how late key_requests may run behind the requests it counts
MAX_USAGE_WINDOW_S = tenants.USAGE_TTL_S

_AUTHORIZATION, _X_API_KEY = b"authorization", b"x-api-key"

KEY_REQUEST = Struct(
    "corral.KeyRequest",
    {"name": STRING, "admin": BOOL, "models": Slice(STRING, "[]string"), "rpm": INT, "tpm": INT},
)
KEY_NAME = Struct("corral.KeyName", {"name": STRING})


def needs_admin(path: str) -> bool:
    return path in ADMIN_PATHS or path.startswith(ADMIN_PREFIXES)


def secret_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The key a request carries ('' when none): ``Authorization: Bearer``, else ``x-api-key``."""
    api_key = ""
    for name, value in headers:
        if name == _AUTHORIZATION:
            if value[:7] == b"Bearer ":  # as every client sends it: the rest is the key
                secret = value[7:].strip()
                if secret and b" " not in secret:
                    return secret.decode("latin-1")
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
        elif name == _X_API_KEY:
            api_key = value.decode("latin-1").strip()
    return api_key


class Gate:
    """Admits keys and accounts for their requests."""

    def __init__(self, settings: RouterSettings, redis: Any, lane: RedisLane | None, metrics: RouterMetrics) -> None:
        self.redis = redis
        self.metrics = metrics
        self.admin = Tenant(id=tenants.key_id(settings.CORRAL_ADMIN_KEY), name=tenants.ADMIN_NAME, admin=True)
        self.flight_limit = settings.key_flight_limit
        self._admit = HotScript(redis, lane, tenants.ADMIT)
        # Both scripts run once per request: through the lean lane (redis_lane.py), as placement's do.
        self._finish = HotScript(redis, lane, tenants.FINISH)
        self._remembered: OrderedDict[str, tuple[Tenant, float]] = OrderedDict()
        # Secret -> its key's id (a SHA-256 each request would cost more than the rest of the
        # check), for the admin key and keys admitted here only; a memo of a pure function, so
        # a revoked key still fails (its id is no longer admitted). It holds what every request
        # holds while it is served, in this process only; never logged.
        self._ids: dict[str, str] = {}
        # Records as Redis returns them -> parsed: a key's record changes only when it is remade.
        self._parsed: dict[str, Tenant] = {}
        self._children: dict[tuple[str, str, str], Any] = {}  # key_requests' children, looked up once
        self._counts: dict[tuple[str, str, str], int] = {}  # not yet in key_requests (``_count``)
        self._pending: set[asyncio.Task] = set()
        self._admit_usage = self.admit_usage  # bound once: every keyed request's Usage holds it

    def _id_of(self, secret: str) -> str:
        """The key's id; 401 for no key or one too long to be one."""
        if not secret:
            raise UnauthorizedError("unauthorized: no API key (send Authorization: Bearer <key>)")
        if len(secret) > MAX_SECRET:
            raise UnauthorizedError("unauthorized: invalid API key")
        return tenants.key_id(secret)

    def known(self, secret: str) -> Tenant | None:
        """The admin key, or a key this router admitted before (records never change: a key is
        made or revoked, and a revoked one fails its next admission), without Redis."""
        kid = self._ids.get(secret)
        if kid is None:
            if not secret or len(secret) > MAX_SECRET:
                return None
            kid = tenants.key_id(secret)
            if not tenants.same_secret(kid, self.admin.id) and kid not in self._remembered:
                return None
            if len(self._ids) >= MAX_REMEMBERED:
                self._ids.clear()
            self._ids[secret] = kid
        if tenants.same_secret(kid, self.admin.id):
            return self.admin
        seen = self._remembered.get(kid)
        if seen is None:
            return None
        now = time.monotonic()
        if now - seen[1] > REMEMBER_REFRESH_S:  # in use: kept for an outage (``_offline``)
            self._remembered[kid] = (seen[0], now)
        return seen[0]

    async def admit(self, secret: str, token: str, *, inference: bool) -> Tenant:
        kid = self._id_of(secret)
        if tenants.same_secret(kid, self.admin.id):
            return self.admin
        return await self.admit_id(kid, token, inference=inference)

    async def admit_id(self, kid: str, token: str, *, inference: bool) -> Tenant:
        """One admission round trip: the key's record and its limits (raises its 401 or 429)."""
        args = tenants.admission_args(token, inference=inference, flight_limit=self.flight_limit)
        try:
            verdict, record, retry_after = await self._admit(keys=tenants.admission_keys(kid), args=args)
        except RedisError as exc:
            return self._offline(kid, exc)
        verdict = reply_text(verdict)
        if verdict == "unknown":
            self.metrics.key_rejections.labels("", "unknown").inc()
            self.forget(kid)
            raise tenants.refusal(verdict, None, 0, self.flight_limit)
        tenant = self._tenant(reply_text(record))
        self._remember(tenant)
        if verdict != "ok":
            self.metrics.key_rejections.labels(tenant.name, verdict).inc()
            raise tenants.refusal(verdict, tenant, int(retry_after), self.flight_limit)
        return tenant

    def usage(self, tenant: Tenant, token: str, *, admitted: bool) -> tenants.Usage:
        """An inference request's accounting; not ``admitted`` yet: with its first slot."""
        return tenants.Usage(
            tenant, token, self.flight_limit, admitted=admitted or tenant.admin, admit=self._admit_usage
        )

    async def admit_usage(self, usage: tenants.Usage) -> None:
        await self.admit_id(usage.tenant.id, usage.token, inference=True)

    def forget(self, kid: str) -> None:
        self._remembered.pop(kid, None)

    def _count(self, name: str, model: str, outcome: str) -> None:
        """One more request in ``key_requests``, added with the others of the last second
        (``flush``): a multiprocess counter's ``inc`` costs µs, which each keyed request would
        otherwise pay on top of the unkeyed cost."""
        labels = (name, model, outcome)
        if not self._counts:
            asyncio.get_running_loop().call_later(COUNT_FLUSH_S, self.flush)
        self._counts[labels] = self._counts.get(labels, 0) + 1

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        if len(self._children) >= MAX_REMEMBERED:
            self._children.clear()
        for labels, n in counts.items():
            child = self._children.get(labels)
            if child is None:
                child = self._children[labels] = self.metrics.key_requests.labels(*labels)
            child.inc(n)

    def _tenant(self, record: str) -> Tenant:
        tenant = self._parsed.get(record)
        if tenant is None:
            if len(self._parsed) >= MAX_REMEMBERED:
                self._parsed.clear()
            tenant = self._parsed[record] = Tenant.from_record(json.loads(record))
        return tenant

    def reject(self, tenant: Tenant, reason: str) -> None:
        self.metrics.key_rejections.labels(tenant.name, reason).inc()

    def _remember(self, tenant: Tenant) -> None:
        self._remembered[tenant.id] = (tenant, time.monotonic())
        self._remembered.move_to_end(tenant.id)
        while len(self._remembered) > MAX_REMEMBERED:
            self._remembered.popitem(last=False)

    def _offline(self, kid: str, exc: RedisError) -> Tenant:
        known = self._remembered.get(kid)
        if known is not None and time.monotonic() - known[1] < OFFLINE_GRACE_S:
            return known[0]
        raise ClusterUnavailableError(f"cannot check the API key: redis is unreachable ({exc})") from exc

    def finish(self, usage: tenants.Usage, failed: bool) -> None:
        """The end of an inference request: counted, and out of the key's flight. Usually written
        with its slot's release (dispatch.py); else here, in the background (a request that
        never held a slot: refused, unknown model, queue full)."""
        name = usage.tenant.name
        self._count(name, usage.model, "error" if failed else "ok")
        if usage.recorded:
            return
        if len(self._pending) >= MAX_PENDING_FINISHES:
            logger.warning("usage of key %s dropped: %d updates already wait on Redis", name, len(self._pending))
            return
        task = asyncio.get_running_loop().create_task(self._record(usage, failed))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _record(self, usage: tenants.Usage, failed: bool) -> None:
        keys, args = usage.finish_keys_args(failed)
        try:
            await self._finish(keys=keys, args=args)
        except RedisError as exc:
            logger.warning("usage of key %s not recorded: %s", usage.tenant.name, exc)


class AuthMiddleware:
    """Every request but the public ones shows a key first; see the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Made with the app's other resources (lifespan, which runs once per router process);
        # looked up on the first request (Starlette's State costs a Python call per lookup).
        self.gate: Gate | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in PUBLIC:
            await self.app(scope, receive, send)
            return
        gate = self.gate
        if gate is None:
            gate = self.gate = scope["app"].state.gate
        path = scope["path"]
        inference = path in FORWARDED
        token = request_token()
        secret = secret_from(scope["headers"])
        # An inference request of a key seen before is admitted with its slot (one round trip
        # for both, router/state.py); any other request is admitted here.
        tenant = gate.known(secret) if inference else None
        admitted = tenant is None
        try:
            if tenant is None:
                tenant = await gate.admit(secret, token, inference=inference)
            if not inference and needs_admin(path) and not tenant.admin:
                gate.reject(tenant, "admin")
                raise ForbiddenError("this API key may not manage the cluster: an admin key is needed")
        except CorralError as exc:
            await answer_error(scope["method"], path, exc)(scope, receive, send)
            return
        scope[tenants.TENANT_SCOPE] = tenant
        if not inference:
            await self.app(scope, receive, send)
            return
        usage = scope[tenants.USAGE_SCOPE] = gate.usage(tenant, token, admitted=admitted)
        try:
            await self.app(scope, receive, send)
        finally:
            status = usage.status  # as the inference endpoint answered (router/forward.py); 0: it failed
            if usage.refused:  # by the admission made with its slot
                gate.reject(tenant, usage.refused)
                if usage.refused == "unknown":
                    gate.forget(tenant.id)  # revoked
            elif status == 403:  # its model is not on its list (require_model)
                gate.reject(tenant, "model")
            gate.finish(usage, failed=status == 0 or status >= 400)


# -- the admin API ---------------------------------------------------------------------------

admin = APIRouter()


def _gate(request: Request) -> Gate:
    gate = getattr(request.app.state, "gate", None)
    if gate is None:
        raise NotFoundError("API keys are off on this cluster (CORRAL_AUTH=keys turns them on)")
    return gate


def _limit(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None or value == 0:
        return None
    if value < 0 or value > tenants.MAX_LIMIT:
        raise BadRequestError(f"{field} must be between 1 and {tenants.MAX_LIMIT}, or null for no limit")
    return int(value)


@admin.post("/api/cluster/keys")
async def create_key(request: Request) -> Response:
    gate = _gate(request)
    body = await read_json(request, KEY_REQUEST)
    name = body.get("name") or ""
    if not tenants.NAME.fullmatch(name):
        raise BadRequestError(
            "invalid key name: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if name == tenants.ADMIN_NAME:
        raise BadRequestError(f"the key name '{tenants.ADMIN_NAME}' is CORRAL_ADMIN_KEY's")
    models = body.get("models")
    if models is not None:
        if len(models) > tenants.MAX_MODELS_PER_KEY:
            raise BadRequestError(f"too many models: at most {tenants.MAX_MODELS_PER_KEY} per key")
        bad = [m for m in models if tenants.model_key(m) is None]
        if bad:
            raise BadRequestError(f"invalid model name in models: '{bad[0]}'")
    secret = tenants.new_secret()
    kid = tenants.key_id(secret)
    record: dict[str, Any] = {
        "name": name,
        "admin": bool(body.get("admin")),
        "models": models,
        "rpm": _limit(body, "rpm"),
        "tpm": _limit(body, "tpm"),
        "created_at": datetime.now(UTC).astimezone().isoformat(),
        "id": kid,
    }
    created = await gate.redis.eval(
        tenants.CREATE,
        2,
        tenants.KEYS,
        tenants.id_key(kid),
        name,
        tenants.record_json(record),
        tenants.MAX_KEYS,
    )
    if created == 0:
        raise CorralError(f"key '{name}' already exists", status=409)
    if created == -1:
        raise BadRequestError(f"too many keys: at most {tenants.MAX_KEYS}")
    logger.info("API key %s created (admin: %s)", name, record["admin"])
    return json_response({"name": name, "key": secret})


@admin.get("/api/cluster/keys")
async def list_keys(request: Request) -> Response:
    gate = _gate(request)
    records = await gate.redis.hgetall(tenants.KEYS)
    keys = [Tenant.from_record(json.loads(reply_text(v))).public for v in records.values()]
    return json_response({"keys": sorted(keys, key=lambda k: k["name"])})


@admin.delete("/api/cluster/keys")
async def revoke_key(request: Request) -> Response:
    gate = _gate(request)
    body = await read_json(request, KEY_NAME)
    name = body.get("name") or ""
    if not name:
        raise BadRequestError("name is required")
    if not await gate.redis.eval(tenants.REVOKE, 1, tenants.KEYS, name):
        raise NotFoundError(f"key '{name}' not found")
    logger.info("API key %s revoked", name)
    return Response(status_code=200)


@admin.get("/api/cluster/usage")
async def usage(request: Request) -> Response:
    """Per key and model over the last ``window`` (a Go duration, default 24h; hourly buckets)."""
    gate = _gate(request)
    text = request.query_params.get("window", "24h")
    try:
        seconds = parse_go_duration(text)
    except DurationError:
        raise BadRequestError(f"invalid window: {text!r} (a duration such as 1h or 30m)") from None
    if not 0 < seconds <= MAX_USAGE_WINDOW_S:
        raise BadRequestError(f"window must be more than 0 and at most {MAX_USAGE_WINDOW_S // 86_400} days")
    only = request.query_params.get("key")
    now = tenants.now_ms()
    hours = range(tenants.hour_of(now - int(seconds * 1000)), tenants.hour_of(now) + 1)
    async with gate.redis.pipeline(transaction=False) as pipe:
        for hour in hours:
            pipe.hgetall(tenants.usage_key(hour))
        buckets = await pipe.execute()
    table: dict[str, dict[str, dict[str, int]]] = {}
    for bucket in buckets:
        for raw_field, raw_count in bucket.items():
            parts = reply_text(raw_field).split("\t")
            if len(parts) != 3 or parts[2] not in tenants.USAGE_FIELDS or (only and parts[0] != only):
                continue
            row = table.setdefault(parts[0], {}).setdefault(parts[1], dict.fromkeys(tenants.USAGE_FIELDS, 0))
            row[parts[2]] += int(raw_count)
    keys: list[dict[str, Any]] = []
    for name in sorted(table):
        models = [{"model": model, **counts} for model, counts in sorted(table[name].items())]
        keys.append({"name": name, "totals": _sum(models), "models": models})
    since = datetime.fromtimestamp(hours.start * 3600, tz=UTC).astimezone()
    return json_response(
        {
            "since": since.isoformat(),
            "until": datetime.fromtimestamp(now / 1000, tz=UTC).astimezone().isoformat(),
            "totals": _sum([k["totals"] for k in keys]),
            "keys": keys,
        }
    )


def _sum(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {f: sum(r[f] for r in rows) for f in tenants.USAGE_FIELDS}
