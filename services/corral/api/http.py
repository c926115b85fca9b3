"""HTTP glue every Corral service shares: bodies, errors, streams, CORS, as Ollama does them.

Errors are mapped to responses here and nowhere else: ``install_error_handlers`` turns a
``CorralError`` into Ollama's ``{"error": ...}`` (or the OpenAI envelope under ``/v1``),
and Starlette's own 404/405 into Ollama's plain-text bodies; ``LastResortMiddleware`` turns
anything unexpected into a 500 of the same shape, keeping the connection. Bodies are read
within ``CORRAL_MAX_REQUEST_BODY`` (``BodyLimitMiddleware``) and decoded as Go decodes them
(``read_json``, ``corral.api.gojson``). Streams use ``ndjson_stream`` and ``sse_stream``:
once the first chunk is out, an error becomes the stream's last event instead of a status code.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import json
import logging
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.api.errors import CorralError, PayloadTooLargeError, RequestCanceledError, error_body
from corral.api.gojson import Struct
from corral.api.streams import ndjson_line

logger = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
JSON_UTF8 = "application/json; charset=utf-8"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # Compact and UTF-8, like Go's encoder; clients compare bodies byte for byte in tests.
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(data, status_code=status, media_type=JSON_UTF8, headers=headers)


def error_response(exc: CorralError, *, path: str) -> Response:
    """``exc`` in the format of the route at ``path`` (``corral.api.errors.error_body``)."""
    return json_response(error_body(exc, path=path), exc.status, exc.headers())


# -- request bodies ----------------------------------------------------------------------

# A body this large is decoded in a thread: a megabyte of JSON takes the loop ~10 ms.
_DECODE_IN_THREAD = 256 * 1024


async def read_json(request: Request, shape: Struct) -> dict[str, Any]:
    """The request's body decoded as Go decodes it into ``shape`` (``corral.api.requests``):
    Ollama's messages for empty, malformed and mistyped bodies."""
    return await decode_json(await request.body(), shape)


async def decode_json(body: bytes, shape: Struct) -> dict[str, Any]:
    if len(body) > _DECODE_IN_THREAD:
        return await asyncio.to_thread(shape.decode, body)
    return shape.decode(body)


# -- streaming ---------------------------------------------------------------------------


async def prime(chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Run a stream up to its first chunk now, so errors before it become plain HTTP errors."""
    try:
        first = await chunks.__anext__()
    except StopAsyncIteration:
        return _empty()

    async def rest() -> AsyncIterator[Any]:
        yield first
        async for chunk in chunks:
            yield chunk

    return _closing(rest(), chunks)


async def _empty() -> AsyncIterator[Any]:
    return
    yield  # pragma: no cover


async def _closing(outer: AsyncIterator[Any], inner: AsyncIterator[Any]) -> AsyncIterator[Any]:
    # Closing the outer stream (client gone) must close the inner one too, so its
    # cleanup (cancelling generation, releasing the slot) runs at once.
    try:
        async for item in outer:
            yield item
    finally:
        aclose = getattr(inner, "aclose", None)
        if aclose is not None:
            await aclose()


def ndjson_stream(chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """NDJSON response; an error after the first line is the last line."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield ndjson_line(chunk)
        except CorralError as exc:
            yield ndjson_line({"error": exc.message})
        except Exception as exc:  # the stream has started: a status code is no longer possible
            logger.exception("stream failed")
            yield ndjson_line({"error": str(exc) or type(exc).__name__})

    return StreamingResponse(body(), media_type=NDJSON)


def sse_stream(events: AsyncIterator[bytes], on_error: Callable[[str], bytes]) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield event
        except CorralError as exc:
            yield on_error(exc.message)
        except Exception as exc:
            logger.exception("stream failed")
            yield on_error(str(exc) or type(exc).__name__)

    return StreamingResponse(
        body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


# -- errors ------------------------------------------------------------------------------


def answer_error(method: str, path: str, exc: CorralError) -> Response:
    """The response for a CorralError raised while serving ``method path``."""
    if exc.status >= 500:
        logger.warning("%s %s: %s", method, path, exc.message)
    return error_response(exc, path=path)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CorralError)
    async def corral_error(request: Request, exc: CorralError) -> Response:
        return answer_error(request.method, request.url.path, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return PlainTextResponse("404 page not found", status_code=404)
        if exc.status_code == 405:
            return PlainTextResponse("405 method not allowed", status_code=405)
        return PlainTextResponse(str(exc.detail), status_code=exc.status_code)


_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")


def request_id(scope: Scope) -> str:
    """The request's id for the logs: the proxy's ``X-Request-Id`` when it is a sane one, else new."""
    for name, value in scope["headers"]:
        if name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
            return value.decode()
    return secrets.token_hex(8)


class StatusWatch:
    """An ASGI ``send`` that notes the status its response starts with (0 until it starts)."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)


class LastResortMiddleware:
    """Anything a handler did not expect becomes a 500 in the route's own format (Ollama's
    ``{"error"}``, OpenAI's envelope under ``/v1``, Anthropic's on ``/v1/messages``), logged
    once with a request id.

    Starlette's own last resort answers in plain text and raises again, and uvicorn then closes
    the connection: a proxy reusing it (nginx's upstream keep-alive) meets a reset on its next
    request and marks this server down. Here the exception ends with the response, so the
    connection stays usable. Once a response has started nothing can be said in its place: the
    exception goes on, and uvicorn cuts the connection, which is all a client can be told then
    (streams say it themselves first: ``ndjson_stream``, ``sse_stream``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            ident = request_id(scope)
            logger.error(
                "unhandled error in %s %s (request id %s)", scope["method"], scope["path"], ident, exc_info=exc
            )
            if started:
                raise
            error = CorralError(f"internal error (request id {ident})")
            response = error_response(error, path=scope["path"])
            response.headers["X-Request-Id"] = ident
            await response(scope, receive, send)


class BodyLimitMiddleware:
    """Bodies over ``limit`` bytes get 413 in the route's format: at once when Content-Length
    says so, else when the stream passes the limit (``PayloadTooLargeError`` out of
    ``receive``, answered by the handlers' error mapping). Blob uploads are exempt: they are
    streamed to disk, digest-checked, and may be many gigabytes."""

    EXEMPT = ("/api/blobs/",)

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.EXEMPT):
            await self.app(scope, receive, send)
            return
        limit = self.limit
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await answer_error(scope["method"], scope["path"], PayloadTooLargeError())(scope, receive, send)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLargeError()
            return message

        await self.app(scope, counted, send)


# -- CORS and the Host check (Ollama's DNS-rebinding guard) ---------------------------------

_DEFAULT_ORIGINS = [
    f"{scheme}://{host}{port}"
    for scheme in ("http", "https")
    for host in ("localhost", "127.0.0.1", "0.0.0.0")
    for port in ("", ":*")
] + ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]
_ALLOW_HEADERS = (
    "Authorization, Content-Type, User-Agent, Accept, X-Requested-With, OpenAI-Beta, "
    "x-stainless-arch, x-stainless-async, x-stainless-custom-poll-interval, x-stainless-helper-method, "
    "x-stainless-lang, x-stainless-os, x-stainless-package-version, x-stainless-poll-helper, "
    "x-stainless-retry-count, x-stainless-runtime, x-stainless-runtime-version, x-stainless-timeout"
)
_ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"


class OllamaAccessMiddleware:
    """Ollama's origin allow-list (403 otherwise) and, when bound to loopback, its Host check."""

    def __init__(self, app: ASGIApp, *, origins: str, loopback_only: bool) -> None:
        self.app = app
        extra = [o.strip() for o in origins.split(",") if o.strip()]
        self.allow_all = "*" in extra
        self.patterns = extra + _DEFAULT_ORIGINS
        self.loopback_only = loopback_only
        self.hostname = socket.gethostname().lower()
        self._hosts: dict[str, bool] = {}

    def _origin_allowed(self, origin: str) -> bool:
        return self.allow_all or any(fnmatch.fnmatchcase(origin, p) for p in self.patterns)

    def _host_allowed_cached(self, host: str) -> bool:
        allowed = self._hosts.get(host)
        if allowed is None:
            if len(self._hosts) >= 1024:  # bounded: Host is the client's to choose
                self._hosts.clear()
            allowed = self._hosts[host] = self._host_allowed(host)
        return allowed

    def _host_allowed(self, host: str) -> bool:
        if not host:
            return True
        name = host
        if name.startswith("["):
            name = name[1 : name.find("]")] if "]" in name else name
        elif name.count(":") == 1:
            name = name.rsplit(":", 1)[0]
        name = name.lower()
        if name in ("localhost", self.hostname) or name.endswith((".localhost", ".local", ".internal")):
            return True
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            return False
        return ip.is_loopback or ip.is_private or ip.is_unspecified or ip.is_link_local

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Every request passes here: pick out the three headers that matter (ASGI names are lowercase).
        host, origin, preflight = "", None, False
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"access-control-request-method":
                preflight = True
        if self.loopback_only and not self._host_allowed_cached(host):
            await Response(status_code=403)(scope, receive, send)
            return
        same_origin = origin in (f"http://{host}", f"https://{host}")
        if origin is None or same_origin:
            await self.app(scope, receive, send)
            return
        if not self._origin_allowed(origin):
            await Response(status_code=403)(scope, receive, send)
            return
        allow_origin = "*" if self.allow_all else origin
        if scope["method"] == "OPTIONS" and preflight:
            await Response(
                status_code=204,
                headers={
                    "Access-Control-Allow-Origin": allow_origin,
                    "Access-Control-Allow-Methods": _ALLOW_METHODS,
                    "Access-Control-Allow-Headers": _ALLOW_HEADERS,
                    "Access-Control-Max-Age": "43200",
                    "Vary": "Origin",
                },
            )(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"access-control-allow-origin", allow_origin.encode()), (b"vary", b"Origin")]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, receive, send_with_cors)


T = TypeVar("T")


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``, cancelling it if the client goes away first (queued or generating)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise RequestCanceledError()
    finally:
        if not task.done():
            task.cancel()


class RequestMetricsMiddleware:
    """Counts every request by route template and status (not raw path: bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: Any) -> None:
        # metrics: anything with a ``requests`` counter (route, status) and a
        # ``request_seconds`` histogram (route): the worker's and the router's.
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        watch = StatusWatch(send)
        try:
            await self.app(scope, receive, watch)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            status = watch.status or 500
            self.metrics.requests.labels(label, str(status)).inc()
            self.metrics.request_seconds.labels(label).observe(time.perf_counter() - started)


def serve_ollama_api(app: FastAPI, settings: Any, metrics: Any) -> None:
    """What every service serving the Ollama API adds around its routes: the one error
    mapping, the body limit, Ollama's CORS and Host checks (``settings``: a CommonSettings),
    request metrics, and the last resort for anything unexpected (outermost but for the
    metrics, which count its 500s)."""
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_request_body)
    app.add_middleware(
        OllamaAccessMiddleware,
        origins=settings.OLLAMA_ORIGINS,
        loopback_only=settings.listen.host in ("127.0.0.1", "localhost", "::1"),
    )
    app.add_middleware(LastResortMiddleware)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
