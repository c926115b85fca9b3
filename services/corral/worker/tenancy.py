"""The worker's side of API keys: only routers may call it, and it reports each key's tokens.

With ``CORRAL_CLUSTER_TOKEN`` set, every request but ``GET``/``HEAD /``, ``/api/version`` and
``GET /metrics`` (probes and Prometheus) must carry it in ``x-corral-cluster-token``, or gets
401: a worker reached directly is no way around the routers' keys. A request that carries it
may also say whose it is (``x-corral-tenant``, set by the router after admitting the key);
the tokens it takes are then added to that key's window and usage in Redis
(``corral.cluster.tenants.TOKENS``) and to ``corral_worker_key_tokens_total``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from corral.api.errors import UnauthorizedError
from corral.api.http import answer_error
from corral.cluster import tenants
from corral.cluster.redis_client import async_client
from corral.worker.metrics import WorkerMetrics

logger = logging.getLogger(__name__)

_PUBLIC = {("GET", "/"), ("HEAD", "/"), ("GET", "/api/version"), ("HEAD", "/api/version"), ("GET", "/metrics")}
_TOKEN = tenants.CLUSTER_TOKEN_HEADER.encode()
_TENANT = tenants.TENANT_HEADER.encode()
MAX_PENDING_REPORTS = 1024  # reports waiting on Redis; past this they are dropped (and logged)

# Whose request this task serves: (key id, key name), or None.
current_tenant: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("tenant", default=None)


class ClusterTokenMiddleware:
    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in _PUBLIC:
            await self.app(scope, receive, send)
            return
        given, tenant = "", None
        for name, value in scope["headers"]:
            if name == _TOKEN:
                given = value.decode("latin-1")
            elif name == _TENANT:
                tenant = tenants.parse_tenant_header(value.decode("latin-1"))
        if not tenants.same_secret(given, self.token):
            error = UnauthorizedError("unauthorized: this worker serves the cluster's routers only")
            await answer_error(scope["method"], scope["path"], error)(scope, receive, send)
            return
        reset = current_tenant.set(tenant)
        try:
            await self.app(scope, receive, send)
        finally:
            current_tenant.reset(reset)


class UsageReporter:
    """Adds a request's tokens to its key's window and usage, off the request's path."""

    def __init__(self, redis_url: str, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self.redis: Any = async_client(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._script = self.redis.register_script(tenants.TOKENS)
        self._pending: set[asyncio.Task] = set()

    def __call__(self, model: str, prompt_tokens: int, generated_tokens: int) -> None:
        tenant = current_tenant.get()
        if tenant is None:
            return
        kid, name = tenant
        self.metrics.key_tokens.labels(name, model, "prompt").inc(prompt_tokens)
        self.metrics.key_tokens.labels(name, model, "generated").inc(generated_tokens)
        if len(self._pending) >= MAX_PENDING_REPORTS:
            logger.warning("usage of key %s dropped: %d reports already wait on Redis", name, len(self._pending))
            return
        task = asyncio.get_running_loop().create_task(self._report(kid, name, model, prompt_tokens, generated_tokens))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _report(self, kid: str, name: str, model: str, prompt: int, generated: int) -> None:
        now = tenants.now_ms()
        try:
            await self._script(
                keys=[tenants.tpm_key(kid), tenants.usage_key(tenants.hour_of(now))],
                args=[
                    now,
                    prompt,
                    generated,
                    tenants.usage_prefix(name, model),
                    tenants.WINDOW_MS,
                    tenants.USAGE_TTL_S,
                ],
            )
        except Exception as exc:  # usage is best effort: the answer was already given
            logger.warning("usage of key %s not recorded: %s", name, exc)

    async def close(self) -> None:
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=5)
        await self.redis.aclose()
