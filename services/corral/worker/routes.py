"""The worker's HTTP routes: parse, call, map. The work happens in inference and the store.

Model management (tags, show, create, pull...) is ``corral.store.routes``, shared with the router.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from corral.api import OLLAMA_VERSION, anthropic, openai, requests, transcriptions
from corral.api import responses as openai_responses
from corral.api.gojson import Struct
from corral.api.http import (
    json_response,
    ndjson_stream,
    prime,
    read_json,
    sse_stream,
    until_disconnect,
)
from corral.api.streams import format_time
from corral.worker.state import WorkerState


def get_state(request: Request) -> WorkerState:
    return request.app.state.worker


StateDep = Annotated[WorkerState, Depends(get_state)]
router = APIRouter()


async def _collect(chunks: AsyncIterator[dict[str, Any]], kind: str) -> dict[str, Any]:
    """A whole native stream folded into the one object ``stream: false`` returns."""
    text: list[str] = []
    thinking: list[str] = []
    tool_calls: list[dict] = []
    logprobs: list[dict] = []
    final: dict[str, Any] = {}
    async for chunk in chunks:
        logprobs.extend(chunk.get("logprobs") or [])
        part = chunk.get("response", "") if kind == "generate" else chunk.get("message", {}).get("content", "")
        text.append(part)
        msg = chunk.get("message", {}) if kind == "chat" else chunk
        if msg.get("thinking"):
            thinking.append(msg["thinking"])
        tool_calls.extend(msg.get("tool_calls") or [])
        final = chunk
    if kind == "generate":
        final["response"] = "".join(text)
        if thinking:
            final["thinking"] = "".join(thinking)
    else:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
        if thinking:
            message["thinking"] = "".join(thinking)
        if tool_calls:
            message["tool_calls"] = tool_calls
        final["message"] = message
    if logprobs:
        final["logprobs"] = logprobs
    return final


async def _native(request: Request, state: WorkerState, body: dict[str, Any], kind: str) -> Response:
    run = state.inference.generate if kind == "generate" else state.inference.chat
    # A debug render is one JSON object, as in Ollama, whatever ``stream`` says.
    if body.get("stream", True) is False or body.get("_debug_render_only"):
        result = await until_disconnect(request, _collect(run(body), kind))
        return json_response(result)
    return ndjson_stream(await until_disconnect(request, prime(run(body))))


# -- liveness and version ---------------------------------------------------------------


@router.api_route("/", methods=["GET", "HEAD"])
async def root() -> Response:
    return PlainTextResponse("Ollama is running")


@router.api_route("/api/version", methods=["GET", "HEAD"])
async def version() -> Response:
    return json_response({"version": OLLAMA_VERSION})


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    state.refresh_gauges()
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# -- inference ----------------------------------------------------------------------------


@router.post("/api/generate")
async def generate(request: Request, state: StateDep) -> Response:
    body = await read_json(request, requests.GENERATE)
    return await _native(request, state, body, "generate")


@router.post("/api/chat")
async def chat(request: Request, state: StateDep) -> Response:
    body = await read_json(request, requests.CHAT)
    return await _native(request, state, body, "chat")


@router.post("/api/embed")
async def embed(request: Request, state: StateDep) -> Response:
    body = await read_json(request, requests.EMBED)
    return json_response(await until_disconnect(request, state.inference.embed(body)))


@router.post("/api/embeddings")
async def embeddings(request: Request, state: StateDep) -> Response:
    body = await read_json(request, requests.EMBEDDING)
    return json_response(await until_disconnect(request, state.inference.embeddings(body)))


# -- OpenAI compatible ---------------------------------------------------------------------


@dataclass(frozen=True)
class _OpenAIFlavour:
    """How one /v1 completion endpoint maps onto a native one."""

    shape: Struct
    to_native: Callable[[Any], dict[str, Any]]
    new_id: Callable[[], str]
    kind: str  # the native endpoint: "chat" or "generate"
    response: Callable[..., dict[str, Any]]
    stream: type


_CHAT_COMPLETIONS = _OpenAIFlavour(
    requests.CHAT_COMPLETION, openai.chat_request, openai.new_chat_id, "chat", openai.chat_response, openai.ChatStream
)
_COMPLETIONS = _OpenAIFlavour(
    requests.COMPLETION,
    openai.completion_request,
    openai.new_completion_id,
    "generate",
    openai.completion_response,
    openai.CompletionStream,
)


async def _openai_completion(request: Request, state: WorkerState, flavour: _OpenAIFlavour) -> Response:
    body = await read_json(request, flavour.shape)
    native = flavour.to_native(body)
    run = state.inference.chat if flavour.kind == "chat" else state.inference.generate
    model = body.get("model") or ""
    ident, created = flavour.new_id(), int(time.time())
    if not native.get("stream"):
        result = await until_disconnect(request, _collect(run(native), flavour.kind))
        return json_response(flavour.response(result, model=model, id=ident, created=created))
    stream = flavour.stream(model=model, id=ident, created=created, include_usage=openai.include_usage(body))
    chunks = await until_disconnect(request, prime(run(native)))
    return sse_stream(_translate(chunks, stream.feed), stream.error)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, state: StateDep) -> Response:
    return await _openai_completion(request, state, _CHAT_COMPLETIONS)


@router.post("/v1/completions")
async def completions(request: Request, state: StateDep) -> Response:
    return await _openai_completion(request, state, _COMPLETIONS)


@router.post("/v1/responses")
async def responses(request: Request, state: StateDep) -> Response:
    body = await read_json(request, requests.RESPONSES)
    native = openai_responses.responses_request(body)
    model = body.get("model") or ""
    ident, created = openai_responses.new_response_id(), int(time.time())
    if not native.get("stream"):
        result = await until_disconnect(request, _collect(state.inference.chat(native), "chat"))
        return json_response(
            openai_responses.response_object(result, model=model, id=ident, created_at=created, body=body)
        )
    stream = openai_responses.ResponsesStream(model=model, id=ident, created_at=created, body=body)
    chunks = await until_disconnect(request, prime(state.inference.chat(native)))
    return sse_stream(_translate(chunks, stream.feed), stream.error)


@router.post("/v1/messages")
async def messages(request: Request, state: StateDep) -> Response:
    body = await read_json(request, requests.MESSAGES_REQUEST)
    native = anthropic.messages_request(body)
    model, ident = body.get("model") or "", anthropic.new_message_id()
    # As Ollama: thinking asked of a model that cannot think is dropped, not refused.
    chunks = state.inference.chat(native, relax_thinking=True)
    if not native["stream"]:
        result = await until_disconnect(request, _collect(chunks, "chat"))
        return json_response(anthropic.message_object(result, model=model, id=ident))
    stream = anthropic.MessagesStream(model=model, id=ident, input_tokens=anthropic.estimate_input_tokens(native))
    return sse_stream(_translate(await until_disconnect(request, prime(chunks)), stream.feed), stream.error)


@router.post(transcriptions.PATH)
async def audio_transcriptions(request: Request, state: StateDep) -> Response:
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    if len(body) > transcriptions.IN_THREAD_BYTES:  # splitting and re-encoding megabytes: off the loop
        form = await asyncio.to_thread(transcriptions.fields, content_type, body)
    else:
        form = transcriptions.fields(content_type, body)
    native = transcriptions.chat_request(form)
    result = await until_disconnect(request, _collect(state.inference.chat(native), "chat"))
    content, media_type = transcriptions.response(result, form.get("response_format") or "")
    return Response(content, media_type=media_type)


async def _translate(chunks: AsyncIterator[dict[str, Any]], feed: Any) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        for event in feed(chunk):
            yield event


@router.post("/v1/embeddings")
async def openai_embeddings(request: Request, state: StateDep) -> Response:
    body = await read_json(request, requests.OPENAI_EMBED)
    native, encoding = openai.embedding_request(body)
    result = await until_disconnect(request, state.inference.embed(native))
    return json_response(openai.embedding_response(result, model=body.get("model") or "", encoding_format=encoding))


@router.get("/api/ps")
async def ps(state: StateDep) -> Response:
    models = []
    for runner in state.scheduler.runners():
        record = runner.record
        if runner.expires_at is None:
            expires = time.time() + (runner.keep_alive if not math.isinf(runner.keep_alive) else 0)
        else:
            expires = runner.expires_at
        if math.isinf(runner.keep_alive) or (expires is not None and math.isinf(expires)):
            # Ollama shows a pinned model as expiring ~292 years from now (Go's MaxInt64 ns).
            expires_text = format_time(datetime(2318, 1, 1, tzinfo=UTC))
        else:
            expires_text = format_time(datetime.fromtimestamp(expires).astimezone())
        models.append(
            {
                "name": runner.name,
                "model": runner.name,
                "size": runner.loaded.size,
                "digest": record.digest,
                "details": record.details(),
                "expires_at": expires_text,
                "size_vram": runner.loaded.extra.get("size_vram", 0),
                "context_length": runner.loaded.context_length,
            }
        )
    models.sort(key=lambda m: m["expires_at"], reverse=True)
    return json_response({"models": models})
