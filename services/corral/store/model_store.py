"""What a model store does, whatever holds its manifests and blobs (docs/api-coverage.md,
"Model management" and "Manifests and the local layout").

``ModelStore`` is the one implementation of tags, show, create, copy and delete. It reaches its
storage only through the ``Storage`` protocol (``storage.py``: blocking primitives, plus
``has_blob``/``write_blob``), which the two stores implement:

- ``LocalStore`` (local.py): Ollama's on-disk layout under ``OLLAMA_MODELS``;
- ``RegistryStore`` (oci.py): the cluster's OCI registry.

So the API routes serve either store, chosen by configuration. The public methods are
async; storage work runs in threads.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from corral.api.errors import (
    BadRequestError,
    CorralError,
    InvalidNameError,
    NotFoundError,
    model_not_found,
)
from corral.api.streams import format_time
from corral.gocompat import quote
from corral.store.create import ModelCreator
from corral.store.gguf import GGUFInfo
from corral.store.manifest import (
    MEDIA_ADAPTER,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_PROJECTOR,
    MEDIA_PROMPT,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    digest_hex,
    manifest_digests,
    manifest_size,
)
from corral.store.names import ModelName
from corral.store.show import show_response
from corral.store.storage import Storage

logger = logging.getLogger(__name__)

# What reading a damaged manifest or config can raise; such a model is reported, not fatal.
_DAMAGED = (OSError, ValueError, TypeError, AttributeError, BadRequestError)


# Uploads are hashed and written in slices this big, off the event loop.
_WRITE_SLICE = 4 << 20


@dataclass
class ModelRecord:
    name: ModelName
    manifest: dict
    digest: str
    modified_at: datetime
    size: int
    config: dict
    model_path: Path | None  # a local file the engine can open (None in a remote store)
    adapters: list[Path] = field(default_factory=list)
    projectors: list[Path] = field(default_factory=list)
    model_digest: str | None = None  # hex of the model layer
    projector_digests: list[str] = field(default_factory=list)
    template: str | None = None
    system: str | None = None
    params: dict = field(default_factory=dict)
    messages: list[dict] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    parent_model: str = ""

    def details(self) -> dict:
        return {
            "parent_model": "",
            "format": self.config.get("model_format", ""),
            "family": self.config.get("model_family", ""),
            "families": self.config.get("model_families"),
            "parameter_size": self.config.get("model_type", ""),
            "quantization_level": self.config.get("file_type", ""),
        }


class ModelStore(Storage):
    """The store's logic over abstract storage; see the module docstring for the primitives."""

    def __init__(
        self,
        *,
        capabilities: Callable[[ModelRecord, GGUFInfo | None], list[str]] | None = None,
        noprune: bool = False,
    ) -> None:
        self._capabilities = capabilities
        # OLLAMA_NOPRUNE: blobs a change leaves unreferenced stay (create, pull and delete ask).
        self.noprune = noprune
        # Held by every change to the manifests (create, pull, copy, delete), so a create can't
        # lose a blob to a concurrent delete's reference scan. Other processes sharing the
        # store are not covered.
        self.writing = asyncio.Lock()

    def capabilities(self, record: ModelRecord, info: GGUFInfo | None) -> list[str]:
        """What ``/api/show`` lists: the service's own answer where it gave one (a worker knows
        what its engine can do), else what the model file says."""
        if self._capabilities is not None:
            return list(self._capabilities(record, info))
        return ["embedding"] if info is not None and info.is_embedding else ["completion"]

    # --- records ----------------------------------------------------------------------------

    def existing_name(self, name: ModelName) -> ModelName:
        """Ollama's getExistingName: writes go to a model's stored case when it exists."""
        located = self.locate(name)
        return located[0] if located else name

    def _read_config(self, manifest: dict) -> dict:
        digest = (manifest.get("config") or {}).get("digest")
        if not digest:
            return {}
        config = json.loads(self.read_blob(digest_hex(digest)))
        if not isinstance(config, dict):
            raise TypeError("config is not a JSON object")
        return config

    def _summary(self, name: ModelName, ref: Any) -> ModelRecord:
        """The record from the manifest and config alone, without reading its layers."""
        data, manifest, modified = self.read_manifest(ref)
        return ModelRecord(
            name=name,
            manifest=manifest,
            digest=hashlib.sha256(data).hexdigest(),
            modified_at=modified,
            size=manifest_size(manifest),
            config=self._read_config(manifest),
            model_path=None,
        )

    def load(self, name: ModelName, ref: Any) -> ModelRecord:
        """The whole record of a located model (``locate``'s answer), its layers read."""
        try:
            record = self._summary(name, ref)
            for layer in record.manifest.get("layers") or []:
                self._apply_layer(record, layer)
        except _DAMAGED as exc:
            raise CorralError(f"model {name.display} is damaged: {exc}") from exc
        return record

    def _apply_layer(self, record: ModelRecord, layer: dict) -> None:
        media_type, hex_digest = layer.get("mediaType"), digest_hex(layer.get("digest", ""))
        if media_type == MEDIA_MODEL:
            if record.model_digest is None:
                record.model_digest = hex_digest
                record.model_path = self.blob_location(hex_digest)
                record.parent_model = layer.get("from", "")
        elif media_type == MEDIA_PROJECTOR:
            record.projector_digests.append(hex_digest)
            record.projectors.append(self.blob_location(hex_digest) or Path(f"sha256-{hex_digest}"))
        elif media_type == MEDIA_ADAPTER:
            record.adapters.append(self.blob_location(hex_digest) or Path(f"sha256-{hex_digest}"))
        elif media_type in (MEDIA_TEMPLATE, MEDIA_PROMPT):
            record.template = self.read_blob(hex_digest).decode("utf-8")
        elif media_type == MEDIA_SYSTEM:
            record.system = self.read_blob(hex_digest).decode("utf-8")
        elif media_type == MEDIA_PARAMS:
            params = json.loads(self.read_blob(hex_digest))
            record.params = params if isinstance(params, dict) else {}
        elif media_type == MEDIA_MESSAGES:
            messages = json.loads(self.read_blob(hex_digest))
            record.messages = messages if isinstance(messages, list) else []
        elif media_type == MEDIA_LICENSE:
            record.license.append(self.read_blob(hex_digest).decode("utf-8"))

    # --- reads -----------------------------------------------------------------------------

    async def get(self, name: str) -> ModelRecord:
        parsed = ModelName.parse(name)
        return await asyncio.to_thread(self._get_sync, parsed, name)

    def _get_sync(self, parsed: ModelName, requested: str) -> ModelRecord:
        located = self.locate(parsed)
        if located is None:
            raise model_not_found(requested)
        return self.load(*located)

    async def tags(self) -> list[dict]:
        return await asyncio.to_thread(self._tags_sync)

    def _tags_sync(self) -> list[dict]:
        entries: list[tuple[float, dict]] = []
        for name, ref in self.scan():
            try:
                record = self._summary(name, ref)
            except _DAMAGED as exc:
                # One damaged model must not hide the others (ollama#13885).
                logger.warning("skipping unreadable model %s: %s", name.display, exc)
                continue
            entry = {
                "name": name.display,
                "model": name.display,
                "modified_at": format_time(record.modified_at),
                "size": record.size,
                "digest": record.digest,
                "details": record.details(),
            }
            entries.append((record.modified_at.timestamp(), entry))
        entries.sort(key=lambda item: item[0], reverse=True)
        return [entry for _, entry in entries]

    async def show(
        self,
        name: str,
        *,
        verbose: bool = False,
        system: str | None = None,
        options: dict | None = None,
    ) -> dict:
        """The /api/show response; ``system``/``options`` are the request's overrides."""
        record = await self.get(name)
        return await asyncio.to_thread(show_response, self, record, verbose, system, options)

    # --- create ----------------------------------------------------------------------------

    def create(self, request: dict) -> AsyncIterator[dict]:
        """/api/create as progress dicts ``{"status": ...}`` (create.py).

        Every validation error (400, or 404 for an unknown ``from``) is raised before the
        first item, i.e. by the first ``await anext(gen)``, so a route that primes the
        generator can still answer with a plain error status.
        """
        return ModelCreator(self).run(request)

    # --- pull and push (store/pull.py drives these; the blob transfers are the store's own) ----

    async def commit_pull(self, name: ModelName, manifest: bytes) -> bool:
        """Write a pulled manifest; True when layers only the old one used were removed."""
        async with self.writing:
            return await asyncio.to_thread(self._commit_pull_sync, name, manifest)

    def _commit_pull_sync(self, name: ModelName, manifest: bytes) -> bool:
        name = self.existing_name(name)
        new_digests = manifest_digests(json.loads(manifest))
        for hex_digest in new_digests:
            if self.blob_size(hex_digest) is None:
                raise CorralError(f"layer sha256:{hex_digest} is missing from the store")
        old_digests: set[str] = set()
        located = self.locate(name)
        if located is not None:
            with suppress(OSError, ValueError, AttributeError, TypeError):
                old_digests = manifest_digests(self.read_manifest(located[1])[1])
        self.put_manifest(name, manifest)
        if self.noprune:
            return False
        return self.prune_unreferenced(old_digests - new_digests) > 0

    async def manifest_for_push(self, name: ModelName) -> bytes:
        def read() -> bytes:
            located = self.locate(name)
            if located is None:
                raise model_not_found(name.display)
            return self.read_manifest(located[1])[0]

        return await asyncio.to_thread(read)

    # --- copy / delete ---------------------------------------------------------------------

    async def copy(self, source: str, destination: str) -> None:
        """Duplicate a manifest under a new name; the blobs are shared."""
        src = _parse_or(source, f"source {quote(str(source))} is invalid")
        dst = _parse_or(destination, f"destination {quote(str(destination))} is invalid")
        async with self.writing:
            await asyncio.to_thread(self._copy_sync, src, dst, source)

    def _copy_sync(self, src: ModelName, dst: ModelName, requested: str) -> None:
        located = self.locate(src)
        if located is None:
            raise NotFoundError(f"model {quote(requested)} not found")
        data = self.read_manifest(located[1])[0]
        self.put_manifest(self.existing_name(dst), data)

    async def delete(self, name: str) -> None:
        """Remove a manifest, its empty directories, and the blobs only it used."""
        parsed = _parse_or(name, f"name {quote(str(name))} is invalid")
        async with self.writing:
            await asyncio.to_thread(self._delete_sync, parsed, name)

    def _delete_sync(self, parsed: ModelName, requested: str) -> None:
        located = self.locate(parsed)
        if located is None:
            raise model_not_found(requested)
        stored, ref = located
        try:
            digests = manifest_digests(self.read_manifest(ref)[1])
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            # Still remove it: a damaged manifest must not be undeletable.
            logger.warning("deleting damaged manifest %s: %s", stored.display, exc)
            digests = set()
        self.delete_manifest(stored, ref)
        self.prune_unreferenced(digests)


# --- helpers ---------------------------------------------------------------------------------


def _parse_or(text: Any, message: str) -> ModelName:
    if not isinstance(text, str):
        raise BadRequestError(message)
    try:
        return ModelName.parse(text)
    except InvalidNameError:
        raise BadRequestError(message) from None
