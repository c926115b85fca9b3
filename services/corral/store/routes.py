"""Model management routes, the same for every store (contract §2.6-2.12, §6.4).

The worker serves them on its local store (or, in a cluster, on the registry store) and the
router on the cluster's registry store: the store is chosen by configuration when the app
is built (``app.state.models``), never by a second copy of these handlers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from corral.api import openai
from corral.api.errors import BadRequestError, NotFoundError
from corral.api.http import (
    GO_BOOL,
    GO_OPTIONS,
    GO_STRING,
    check_fields,
    json_response,
    ndjson_stream,
    prime,
    read_json,
    until_disconnect,
)
from corral.store.model_store import ModelStore
from corral.store.pull import Registries, pull_model, push_model


class Models(Protocol):
    """What these routes need from an app: ``app.state.models``."""

    store: ModelStore
    registries: Registries


def get_models(request: Request) -> Models:
    return request.app.state.models


ModelsDep = Annotated[Models, Depends(get_models)]
router = APIRouter()

_STR, _BOOL, _OPTIONS = GO_STRING, GO_BOOL, GO_OPTIONS
_SHOW_FIELDS = {"model": _STR, "name": _STR, "verbose": _BOOL}
_COPY_FIELDS = {"source": _STR, "destination": _STR}
_DELETE_FIELDS = {"model": _STR, "name": _STR}
_CREATE_FIELDS = {
    "model": _STR, "name": _STR, "from": _STR, "files": (dict, "map[string]string"),
    "adapters": (dict, "map[string]string"), "template": _STR, "system": _STR, "parameters": _OPTIONS,
    "messages": (list, "[]api.Message"), "modelfile": _STR, "path": _STR, "quantize": _STR, "stream": _BOOL,
}
# `username`/`password` are deprecated and ignored, as in Ollama; still type-checked.
_PULL_FIELDS = {"model": _STR, "name": _STR, "insecure": _BOOL, "stream": _BOOL, "username": _STR, "password": _STR}


@router.get("/v1/models")
async def openai_models(state: ModelsDep) -> Response:
    return json_response(openai.model_list(await state.store.tags()))


@router.get("/v1/models/{model:path}")
async def openai_model(model: str, state: ModelsDep) -> Response:
    for entry in await state.store.tags():
        if model in (entry["name"], entry["model"]) or entry["name"] == f"{model}:latest":
            return json_response(openai.model_object(entry, id=model))
    raise NotFoundError(f"model '{model}' not found")


@router.api_route("/api/tags", methods=["GET", "HEAD"])
async def tags(state: ModelsDep) -> Response:
    return json_response({"models": await state.store.tags()})


@router.post("/api/show")
async def show(request: Request, state: ModelsDep) -> Response:
    body = await read_json(request, struct="ShowRequest")
    check_fields(body, _SHOW_FIELDS, struct="ShowRequest")
    name = body.get("model") or body.get("name")
    if not name:
        raise BadRequestError("model is required")
    return json_response(await state.store.show(name, verbose=bool(body.get("verbose"))))


@router.post("/api/copy")
async def copy(request: Request, state: ModelsDep) -> Response:
    body = await read_json(request, struct="CopyRequest")
    check_fields(body, _COPY_FIELDS, struct="CopyRequest")
    await state.store.copy(body.get("source") or "", body.get("destination") or "")
    return Response(status_code=200)


@router.delete("/api/delete")
async def delete(request: Request, state: ModelsDep) -> Response:
    body = await read_json(request, struct="DeleteRequest")
    check_fields(body, _DELETE_FIELDS, struct="DeleteRequest")
    name = body.get("model") or body.get("name") or ""
    await state.store.delete(name)
    return Response(status_code=200)


@router.post("/api/create")
async def create(request: Request, state: ModelsDep) -> Response:
    body = await read_json(request, struct="CreateRequest")
    check_fields(body, _CREATE_FIELDS, struct="CreateRequest")
    return await _progress_response(request, body, state.store.create(body))


@router.post("/api/pull")
async def pull(request: Request, state: ModelsDep) -> Response:
    return await _registry_transfer(request, state, "PullRequest", pull_model)


@router.post("/api/push")
async def push(request: Request, state: ModelsDep) -> Response:
    return await _registry_transfer(request, state, "PushRequest", push_model)


async def _registry_transfer(request: Request, state: Models, struct: str, run: Callable[..., Any]) -> Response:
    body = await read_json(request, struct=struct)
    check_fields(body, _PULL_FIELDS, struct=struct)
    model = body.get("model") or body.get("name")
    progress = run(state.registries, state.store, model, insecure=bool(body.get("insecure")))
    return await _progress_response(request, body, progress)


async def _progress_response(request: Request, body: dict[str, Any], progress: AsyncIterator[dict]) -> Response:
    """create/pull/push: NDJSON progress, or only the last line when ``stream`` is false."""
    if body.get("stream", True) is False:

        async def last_line() -> dict[str, Any]:
            last: dict[str, Any] = {}
            async for line in progress:
                last = line
            return last

        return json_response(await until_disconnect(request, last_line()))
    return ndjson_stream(await until_disconnect(request, prime(progress)))


@router.head("/api/blobs/{digest}")
async def blob_exists(digest: str, state: ModelsDep) -> Response:
    if await state.store.has_blob(digest):
        return Response(status_code=200)
    raise NotFoundError(f'blob "{digest}" not found')


@router.post("/api/blobs/{digest}")
async def blob_upload(digest: str, request: Request, state: ModelsDep) -> Response:
    if await state.store.has_blob(digest):
        return Response(status_code=200)
    created = await state.store.write_blob(digest, request.stream())
    return Response(status_code=201 if created else 200)
