"""Model management routes, the same for every store (docs/api-coverage.md, "Model management"
and "/v1/models and /v1/models/:model").

The worker serves them on its local store (or, in a cluster, on the registry store) and the
router on the cluster's registry store: the store is chosen by configuration when the app
is built (``app.state.models``), never by a second copy of these handlers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from corral.api import openai, requests
from corral.api.errors import BadRequestError, NotFoundError
from corral.api.gojson import Struct
from corral.api.http import (
    json_response,
    ndjson_stream,
    prime,
    read_json,
    until_disconnect,
)
from corral.cluster import tenants
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


async def _visible_tags(request: Request, store: ModelStore) -> list[dict]:
    """The models the request's API key may use (every model without keys)."""
    return [entry for entry in await store.tags() if tenants.may_use(request.scope, entry["name"])]


@router.get("/v1/models")
async def openai_models(request: Request, state: ModelsDep) -> Response:
    return json_response(openai.model_list(await _visible_tags(request, state.store)))


@router.get("/v1/models/{model:path}")
async def openai_model(model: str, request: Request, state: ModelsDep) -> Response:
    tenants.require_model(request.scope, model)
    for entry in await state.store.tags():
        if model in (entry["name"], entry["model"]) or entry["name"] == f"{model}:latest":
            return json_response(openai.model_object(entry, id=model))
    raise NotFoundError(f"model '{model}' not found")


@router.api_route("/api/tags", methods=["GET", "HEAD"])
async def tags(request: Request, state: ModelsDep) -> Response:
    return json_response({"models": await _visible_tags(request, state.store)})


@router.post("/api/show")
async def show(request: Request, state: ModelsDep) -> Response:
    body = await read_json(request, requests.SHOW)
    name = body.get("model") or body.get("name")
    if not name:
        raise BadRequestError("model is required")
    tenants.require_model(request.scope, name)
    return json_response(await state.store.show(name, verbose=bool(body.get("verbose"))))


@router.post("/api/copy")
async def copy(request: Request, state: ModelsDep) -> Response:
    body = await read_json(request, requests.COPY)
    await state.store.copy(body.get("source") or "", body.get("destination") or "")
    return Response(status_code=200)


@router.delete("/api/delete")
async def delete(request: Request, state: ModelsDep) -> Response:
    body = await read_json(request, requests.DELETE)
    name = body.get("model") or body.get("name") or ""
    await state.store.delete(name)
    return Response(status_code=200)


@router.post("/api/create")
async def create(request: Request, state: ModelsDep) -> Response:
    body = await read_json(request, requests.CREATE)
    return await _progress_response(request, body, state.store.create(body))


@router.post("/api/pull")
async def pull(request: Request, state: ModelsDep) -> Response:
    return await _registry_transfer(request, state, requests.PULL, pull_model)


@router.post("/api/push")
async def push(request: Request, state: ModelsDep) -> Response:
    return await _registry_transfer(request, state, requests.PUSH, push_model)


async def _registry_transfer(request: Request, state: Models, shape: Struct, run: Callable[..., Any]) -> Response:
    body = await read_json(request, shape)
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
