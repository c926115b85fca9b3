"""``/api/pull`` and ``/api/push``: whole models between a store and a registry, with Ollama's progress.

The store on our side is anything that implements ``Destination`` (pull) or ``Origin``
(push): the local Ollama-layout store, or the cluster's registry-backed store. This module
owns the sequence and the progress lines (docs/api-coverage.md, "/api/pull and /api/push");
``transfer.py`` moves the bytes.

Pull:  pulling manifest · pulling <12 hex> {digest,total,completed}… · verifying sha256 digest ·
       writing manifest · [removing unused layers] · success
Push:  retrieving manifest · pushing <12 hex> {digest,total,completed}… · pushing manifest · success
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from corral.api.errors import BadRequestError, CorralError, NotFoundError
from corral.store.names import ModelName
from corral.store.registry import (
    InsecureProtocolError,
    RegistryClient,
    RegistryError,
    Repository,
    _Cancelled,
    repository_for,
)
from corral.store.transfer import RegistrySource, RegistryUpload, Source, Transfer, Transfers, copy_blob

# Ollama re-emits a layer's progress every 60 ms while it moves.
PROGRESS_INTERVAL = 0.06

_HEX = "0123456789abcdef"


class PullError(CorralError):
    """A pull or push that failed after it began: Ollama answers 500 (or a last stream line)."""

    status = 500


@dataclass(frozen=True)
class Layer:
    digest: str  # sha256:<hex>
    size: int
    source: str = ""  # the layer's "from": the model it was inherited from, if any

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    @property
    def short(self) -> str:
        return self.hex[:12]


def manifest_layers(data: bytes) -> list[Layer]:
    """The layers and config of a manifest, validated enough to be used as file names."""
    try:
        manifest = json.loads(data)
        entries = [*(manifest.get("layers") or []), manifest.get("config") or {}]
    except (ValueError, AttributeError, TypeError) as exc:
        raise PullError(f"invalid manifest: {exc}") from exc
    layers: list[Layer] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise PullError("invalid manifest: a layer is not an object")
        digest, size = entry.get("digest"), entry.get("size")
        if not entry and entries[-1] is entry:
            continue  # no config: tolerated, as Ollama does
        if not (
            isinstance(digest, str)
            and digest.startswith("sha256:")
            and len(digest) == 71
            and all(c in _HEX for c in digest[7:])
        ):
            raise PullError(f"invalid manifest: bad layer digest {digest!r}")
        if not isinstance(size, int) or size < 0:
            raise PullError(f"invalid manifest: bad size for layer {digest}")
        if all(layer.digest != digest for layer in layers):
            source = entry.get("from")
            layers.append(Layer(digest, size, source if isinstance(source, str) else ""))
    return layers


class Destination(Protocol):
    """A store that pulled models land in."""

    def transfer_key(self, name: ModelName, layer: Layer) -> str: ...
    async def has_layer(self, name: ModelName, layer: Layer) -> bool: ...
    def receive(self, name: ModelName, layer: Layer, source: Source, transfer: Transfer) -> None: ...
    async def commit_pull(self, name: ModelName, manifest: bytes) -> bool: ...


class Origin(Protocol):
    """A store that models are pushed from."""

    async def manifest_for_push(self, name: ModelName) -> bytes: ...
    def layer_source(self, name: ModelName, layer: Layer) -> Source: ...


class Registries:
    """Upstream registries as the API sees them: the client, mirrors, shared transfers."""

    def __init__(self, client: RegistryClient, *, mirrors: dict[str, str] | None = None) -> None:
        self.client = client
        self.mirrors = mirrors or {}
        self.transfers = Transfers()

    def repository(self, name: ModelName, *, insecure: bool) -> Repository:
        return repository_for(name, insecure=insecure, mirrors=self.mirrors)


async def pull_model(
    registries: Registries, store: Destination, model: Any, *, insecure: bool = False
) -> AsyncIterator[dict]:
    name = _parse_name(model)
    repo = registries.repository(name, insecure=insecure)
    client = registries.client
    yield {"status": "pulling manifest"}
    try:
        data = await asyncio.to_thread(client.get_manifest, repo, name.tag)
    except (NotFoundError, RegistryError) as exc:
        raise PullError(f"pull model manifest: {exc.message}") from exc
    layers = manifest_layers(data)
    for layer in layers:
        status = f"pulling {layer.short}"
        if await store.has_layer(name, layer):
            yield _progress(status, layer, layer.size)
            continue
        source = RegistrySource(client, repo, layer.digest)
        key = store.transfer_key(name, layer)
        transfer = registries.transfers.join(key, layer.size, functools.partial(store.receive, name, layer, source))
        async for line in follow(registries.transfers, transfer, status, layer):
            yield line
    yield {"status": "verifying sha256 digest"}
    yield {"status": "writing manifest"}
    if await store.commit_pull(name, data):
        yield {"status": "removing unused layers"}
    yield {"status": "success"}


async def push_model(
    registries: Registries, store: Origin, model: Any, *, insecure: bool = False
) -> AsyncIterator[dict]:
    name = _parse_name(model)
    yield {"status": "retrieving manifest"}
    repo = registries.repository(name, insecure=insecure)
    try:
        data = await store.manifest_for_push(name)
    except NotFoundError:
        yield {"status": "couldn't retrieve manifest"}
        raise PullError(f"model '{name.display}' not found") from None
    client = registries.client
    for layer in manifest_layers(data):
        status = f"pushing {layer.short}"
        try:
            size = await asyncio.to_thread(client.blob_size, repo, layer.digest)
        except RegistryError as exc:
            raise PullError(exc.message) from exc
        if size is not None or await _mounted(client, repo, name, layer):
            yield _progress(status, layer, layer.size)
            continue
        source = store.layer_source(name, layer)
        key = f"push {repo.base}/{repo.path} {layer.digest}"

        def work(transfer: Transfer, layer: Layer = layer, source: Source = source) -> None:
            copy_blob(
                source,
                RegistryUpload(client, repo, layer.digest, layer.size),
                layer.size,
                transfer.add,
                transfer.cancelled,
            )

        transfer = registries.transfers.join(key, layer.size, work)
        async for line in follow(registries.transfers, transfer, status, layer):
            yield line
    yield {"status": "pushing manifest"}
    try:
        await asyncio.to_thread(client.put_manifest, repo, name.tag, data)
    except RegistryError as exc:
        raise PullError(exc.message) from exc
    yield {"status": "success"}


async def _mounted(client: RegistryClient, repo: Repository, name: ModelName, layer: Layer) -> bool:
    """Cross-repository mount from the model this layer came from, when it lives on the same
    registry: the registry links the blob it already has and no bytes move."""
    if not layer.source:
        return False
    try:
        origin = ModelName.parse(layer.source)
    except CorralError:
        return False
    if origin.host.lower() != name.host.lower():
        return False
    path = f"{origin.namespace}/{origin.model}"
    if path == repo.path:
        return False
    try:
        return await asyncio.to_thread(client.mount_blob, repo, layer.digest, path)
    except RegistryError:
        return False  # not allowed or not there: upload it instead


async def follow(transfers: Transfers, transfer: Transfer, status: str, layer: Layer) -> AsyncIterator[dict]:
    """Progress lines for one layer until its transfer ends; leaving early withdraws our interest.

    The transfer's errors are raised here, as ``PullError`` (Ollama's 500).
    """
    assert transfer.task is not None
    try:
        shown = -1
        while not transfer.task.done():
            if transfer.completed != shown:
                shown = transfer.completed
                yield _progress(status, layer, shown)
            await asyncio.wait({transfer.task}, timeout=PROGRESS_INTERVAL)
        try:
            transfer.task.result()
        except _Cancelled:
            raise PullError("pull canceled") from None
        except CorralError as exc:
            raise PullError(exc.message) from exc
        except OSError as exc:
            raise PullError(f"{layer.digest}: {exc}") from exc
        yield _progress(status, layer, layer.size)
    finally:
        transfers.leave(transfer)


def _progress(status: str, layer: Layer, completed: int) -> dict:
    return {"status": status, "digest": layer.digest, "total": layer.size, "completed": max(0, completed)}


def _parse_name(model: Any) -> ModelName:
    if not isinstance(model, str) or not model:
        raise BadRequestError("model is required")
    return ModelName.parse(model)


__all__ = [
    "Destination",
    "InsecureProtocolError",
    "Layer",
    "Origin",
    "PullError",
    "Registries",
    "manifest_layers",
    "pull_model",
    "push_model",
]
