"""The inference routes as plain ASGI: read the body, place it, relay the worker's answer.

These routes carry nearly all of a router's traffic, so they skip what the rest of the API
goes through: ``ForwardShortcut`` finds them with one dict lookup instead of FastAPI's routing
and exception layers, and ``ForwardEndpoint`` relays the worker's bytes straight to uvicorn's
``send`` (a streamed answer piece by piece, coalescing what arrived together; any other whole,
with its length). The same endpoints are also registered as FastAPI routes, so other methods
on these paths get the router's 405 like every other route.

Under uvicorn's httptools protocol (what ``corral router`` runs), a stream's pieces after the
first skip ASGI too: the worker connection's read callback writes each one as an HTTP chunk
to the client's transport (``_ClientPipe``, ``Reply.pipe``). A token line then costs a read and
a write, not a task wake-up and a chain of ``send`` wrappers, which is what let 64 streams'
lines queue up behind each other. The response's head and end still go through ``send``, so
middleware sees the status and uvicorn ends the chunked body; anywhere else the relay stays
plain ASGI.

A client that leaves is noticed by a small task waiting on ``receive``: it stops the request
wherever it is (queued, loading, generating), closing the worker connection so the worker
stops too; the slot is given back in every case.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.api import anthropic, openai, requests, transcriptions
from corral.api.errors import ANTHROPIC, BadRequestError, CorralError, error_format
from corral.api.gojson import Struct
from corral.api.http import answer_error, decode_json
from corral.api.streams import ndjson_line
from corral.cluster import direct, tenants
from corral.router.direct import worker_address
from corral.router.dispatch import HOP_HEADERS, Dispatcher, Downstream, Forwarded, Placed, Relayed
from corral.router.upstream import WorkerConnectionError

logger = logging.getLogger(__name__)

# The same hop headers as every relay drops (dispatch.py), as ASGI's byte strings.
_HOP = {name.encode() for name in HOP_HEADERS}
# Where the router app (app.py) puts the server's own ``send``, before any middleware wraps it.
RAW_SEND = "corral.raw_send"
_DIRECT = direct.DIRECT_HEADER.encode()
_RETRY = direct.RETRY_HEADER.encode()

# Each forwarded path and the Go type its body decodes into: a body Ollama would refuse is
# answered here, as a worker would answer it, without taking a slot. None: a multipart form
# (transcriptions), forwarded to the worker as JSON.
FORWARDED: dict[str, Struct | None] = {
    "/api/generate": requests.GENERATE,
    "/api/chat": requests.CHAT,
    "/api/embed": requests.EMBED,
    "/api/embeddings": requests.EMBEDDING,
    "/v1/chat/completions": requests.CHAT_COMPLETION,
    "/v1/completions": requests.COMPLETION,
    "/v1/embeddings": requests.OPENAI_EMBED,
    "/v1/responses": requests.RESPONSES,
    "/v1/messages": requests.MESSAGES_REQUEST,
    transcriptions.PATH: None,
}


class ForwardEndpoint:
    """One forwarded route (``POST path``) as an ASGI app."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.shape = FORWARDED[path]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        dispatcher: Dispatcher = scope["app"].state.dispatcher
        client = Downstream()
        watcher = None
        usage: tenants.Usage | None = scope.get(tenants.USAGE_SCOPE)
        try:
            raw = await _read_body(receive)
            if self.shape is not None:
                body = await decode_json(raw, self.shape)
            elif len(raw) > transcriptions.IN_THREAD_BYTES:
                body = await asyncio.to_thread(_transcription, scope, raw)
            else:
                body = _transcription(scope, raw)
            if usage is not None:
                model = body.get("model")
                tenants.require_model(scope, model)
                usage.model = tenants.display_name(model)
            watcher = asyncio.ensure_future(_watch(receive, client))
            exclude = await _failed_worker(scope, dispatcher)
            if self.shape is not None and _direct(scope, dispatcher):
                arrived = time.perf_counter()
                placed = await dispatcher.place(client, self.path, body, usage, exclude)
                address = worker_address(placed.worker) if isinstance(placed, Placed) else None
                if isinstance(placed, Placed) and address is not None:
                    if usage is not None:
                        usage.status = 200
                    await _redirect(placed, address, dispatcher, usage, send, self.path, time.perf_counter() - arrived)
                    return
                if isinstance(placed, Placed):  # nginx reaches workers by IP address only: relayed
                    await dispatcher.finish(placed.worker, placed.model, placed.keep_alive)
                    answer: Forwarded | Relayed = await dispatcher.forward(client, self.path, body, usage, exclude)
                else:
                    answer = placed
            else:
                answer = await dispatcher.forward(client, self.path, body, usage, exclude)
            if isinstance(answer, Relayed):
                if usage is not None:
                    usage.status = answer.status
                await relayed_response(answer)(scope, receive, send)
            else:
                await _relay(answer, dispatcher, client, send, scope.get(RAW_SEND), usage, self.path)
        except CorralError as exc:
            error = exc
            if usage is not None and not usage.admitted:
                try:  # a key not admitted yet: its own refusal (401, 429) comes first, and it counts
                    await usage.ensure_admitted()
                except CorralError as refused:
                    error = refused
            if usage is not None:
                usage.status = error.status
            await answer_error(scope["method"], self.path, error)(scope, receive, send)
        finally:
            if watcher is not None:
                watcher.cancel()


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _direct(scope: Scope, dispatcher: Dispatcher) -> bool:
    """nginx offers to stream this answer from the worker (corral-direct.conf), and it can."""
    inbox = dispatcher.inbox
    return (
        inbox is not None
        and not inbox.full
        and not dispatcher.offline.active  # reports travel through Redis
        and _header(scope, _DIRECT) is not None
    )


async def _failed_worker(scope: Scope, dispatcher: Dispatcher) -> set[str]:
    """nginx sends a direct request back when its worker failed it: not that worker again, and
    its slot goes back."""
    value = _header(scope, _RETRY) if dispatcher.inbox is not None else None  # only with direct streaming on
    lease = direct.Lease.parse(value.decode("latin-1")) if value is not None else None
    if lease is None or dispatcher.inbox is None:
        return set()
    await dispatcher.inbox.abandon(lease)
    dispatcher.metrics.retries.inc()
    return {lease.worker}


async def _redirect(
    placed: Placed,
    address: str,
    dispatcher: Dispatcher,
    usage: tenants.Usage | None,
    send: Send,
    route: str,
    placing_s: float,
) -> None:
    """Hand the request to nginx: the worker's address, the lease and the worker's headers."""
    inbox = dispatcher.inbox
    assert inbox is not None  # _direct checked
    lease = inbox.expect(placed.worker, placed.model, placed.keep_alive, usage, route, placing_s)
    headers = [
        (b"x-accel-redirect", direct.DIRECT_LOCATION.encode()),
        (direct.WORKER_HEADER.encode(), address.encode()),
        (direct.LEASE_HEADER.encode(), lease.header().encode()),
        *((k.encode(), v.encode()) for k, v in placed.headers if k != "content-type"),
        (b"content-length", b"0"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _transcription(scope: Scope, raw: bytes) -> dict[str, Any]:
    """A transcription's form as the JSON the worker takes; its 400s here, before a worker is
    picked (an empty file must not load the model)."""
    content_type = (_header(scope, b"content-type") or b"").decode("latin-1")
    form = transcriptions.parse_form(content_type, raw)
    transcriptions.chat_request(form)
    return transcriptions.forwarded(form)


def relayed_response(answer: Relayed) -> Response:
    """A worker's whole answer as the client's response."""
    return Response(answer.body, status_code=answer.status, headers=answer.headers)


async def _read_body(receive: Receive) -> bytes:
    # Bounded by the app's BodyLimitMiddleware (corral.api.http), which counts what receive gives.
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequestError("unexpected EOF")
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _watch(receive: Receive, client: Downstream) -> None:
    # Once the body is read, the next message is the disconnect (or the end of the response,
    # when the watcher has already been cancelled).
    message = await receive()
    if message["type"] == "http.disconnect":
        client.gone()


async def _relay(
    answer: Forwarded,
    dispatcher: Dispatcher,
    client: Downstream,
    send: Send,
    raw_send: Send | None,
    usage: tenants.Usage | None,
    path: str,
) -> None:
    reply = answer.reply
    headers = [(k, v) for k, v in reply.headers if k not in _HOP]
    released = False
    if usage is not None:
        usage.status = reply.status

    async def give_back() -> None:
        # Before the response ends, so a client's next request finds the slot free. (Nothing
        # cancels this task but a router shutting down; a slot it leaves lapses: state.py.)
        nonlocal released
        if not released:
            released = True
            await dispatcher.finish(answer.worker, answer.model, answer.keep_alive, usage, answer.reply.status >= 400)

    try:
        if reply.complete:  # not streamed: the whole body is here already
            await give_back()
            headers.append((b"content-length", str(len(answer.first)).encode()))
            await send({"type": "http.response.start", "status": reply.status, "headers": headers})
            await send({"type": "http.response.body", "body": answer.first})
            return
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        # A worker that stops sending for as long as a load may take is stuck: the stream ends.
        gap = dispatcher.settings.load_timeout_seconds
        try:
            await send({"type": "http.response.body", "body": answer.first, "more_body": True})
            pipe = _ClientPipe.of(raw_send)
            if pipe is not None:
                await reply.pipe(pipe, pipe.drained, gap)
            else:
                while chunk := await reply.read_within(gap):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except WorkerConnectionError as exc:
            if not client.disconnected:
                await send(_cut_message(answer, exc, path))
        await give_back()
        await send({"type": "http.response.body", "body": b""})
    finally:
        client.reply = None
        reply.release()
        await give_back()


class _ClientPipe:
    """Writes body pieces as HTTP/1.1 chunks straight to the client's transport, when ``send`` is
    uvicorn's httptools protocol and the response is chunked (else ``of`` gives None). It frames
    them exactly as uvicorn's own ``send`` does, and uvicorn writes the closing chunk."""

    __slots__ = ("transport",)
    HIGH_WATER = 1 << 20  # bytes waiting for a slow client before the worker connection pauses
    LOW_WATER = 1 << 16

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    @classmethod
    def of(cls, raw_send: Send | None) -> _ClientPipe | None:
        cycle: Any = getattr(raw_send, "__self__", None)  # uvicorn's RequestResponseCycle
        if type(cycle).__module__ != "uvicorn.protocols.http.httptools_impl":
            return None
        if not getattr(cycle, "chunked_encoding", False) or getattr(cycle, "disconnected", True):
            return None
        return cls(cycle.transport)

    def __call__(self, data: bytes) -> bool:
        transport = self.transport
        if transport.is_closing():
            return False  # the client left: pause, and let the watcher end the request
        transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        return transport.get_write_buffer_size() <= self.HIGH_WATER

    async def drained(self) -> None:
        # A slow client is rare and a stream's pace is tokens: polling costs less than hooking
        # uvicorn's flow control.
        while not self.transport.is_closing() and self.transport.get_write_buffer_size() > self.LOW_WATER:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self.transport.is_closing():
            raise WorkerConnectionError("the client went away")


def _cut_message(answer: Forwarded, exc: Exception, path: str) -> Message:
    """The stream's last piece when the worker failed mid-stream: Ollama's error line, or the
    error event of the route's server-sent events (Anthropic's on /v1/messages, else OpenAI's)."""
    message = f"worker {answer.worker.id} failed mid-stream: {exc}"
    logger.warning("%s", message)
    if error_format(path) == ANTHROPIC:
        body = anthropic.error_event(message)
    elif b"text/event-stream" in (answer.reply.header(b"content-type") or b""):
        body = openai.error_event(message)
    else:
        body = ndjson_line({"error": message})
    return {"type": "http.response.body", "body": body, "more_body": True}


class ForwardShortcut:
    """Sends ``POST`` on a forwarded path straight to its endpoint, past FastAPI's routing."""

    def __init__(self, app: ASGIApp, routes: dict[str, Any]) -> None:
        self.app = app
        self.routes = routes  # path -> the FastAPI route whose endpoint is a ForwardEndpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # what the request metrics label it by
        await route.app(scope, receive, send)
