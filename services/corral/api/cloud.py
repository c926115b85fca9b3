"""Ollama's ollama.com routes: the account, the cloud switch, web search and fetch, and model
recommendations. Served by workers and routers alike.

Corral never talks to ollama.com, so these answer as an Ollama server answers them with its
cloud disabled (``OLLAMA_NO_CLOUD``) and no account signed in: clients that probe them (the
ollama CLI's ``launch``, the desktop app, agents that try web search) get Ollama's own refusals
instead of a 404 they do not expect. With ``CORRAL_AUTH=keys`` they need a key like any other
route (router/tenants.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from corral.api.errors import BadRequestError, ForbiddenError, UnauthorizedError
from corral.api.http import json_response

router = APIRouter()

# Ollama's internal/cloud: the prefix of every "the cloud is off" refusal, and where the switch
# came from ("env" is OLLAMA_NO_CLOUD; Corral's is built in, and reads as that).
CLOUD_DISABLED = "ollama cloud is disabled"
CLOUD_STATUS = {"cloud": {"disabled": True, "source": "env"}}


@router.get("/api/status")
async def status() -> Response:
    return json_response(CLOUD_STATUS)


@router.post("/api/me")
async def whoami() -> Response:
    # Ollama adds a `signin_url` built from its server's ollama.com key pair; Corral has none.
    raise UnauthorizedError("unauthorized")


@router.post("/api/signout")
async def signout() -> Response:
    raise UnauthorizedError("you are not currently signed in")


@router.delete("/api/user/keys/{encoded_key}")
async def remove_user_key(encoded_key: str) -> Response:
    raise UnauthorizedError("you are not currently signed in")


async def _refuse_cloud(request: Request, operation: str) -> Response:
    # Ollama reads the body first: an empty one is its 400, anything else the cloud refusal.
    if not (await request.body()).strip():
        raise BadRequestError("missing request body")
    raise ForbiddenError(f"{CLOUD_DISABLED}: {operation}")


@router.post("/api/experimental/web_search")
async def web_search(request: Request) -> Response:
    return await _refuse_cloud(request, "web search is unavailable")


@router.post("/api/experimental/web_fetch")
async def web_fetch(request: Request) -> Response:
    return await _refuse_cloud(request, "web fetch is unavailable")


@router.get("/api/experimental/model-recommendations")
async def model_recommendations() -> Response:
    # Ollama's list is ollama.com's catalogue (cloud models among it); a cluster has none to give.
    return json_response({"recommendations": []})
