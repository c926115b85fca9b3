"""The contract between a model store's logic and what holds its manifests and blobs.

``ModelStore`` (model_store.py) is written against these methods only; ``LocalStore``
(Ollama's layout on disk) and ``RegistryStore`` (the cluster's OCI registry) implement them.
The worker's blob cache (cache.py) and the router (a model's GGUF header, for its memory
estimate) use them too. All are blocking: callers run them in a thread. A manifest
reference (``ref``) is whatever the storage locates a manifest by (a path, a repository and
tag); only the storage that returned it reads it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from corral.store.gguf import GGUFInfo
from corral.store.names import ModelName


class Storage(Protocol):
    def locate(self, name: ModelName) -> tuple[ModelName, Any] | None:
        """The stored name and a manifest reference for ``name``, matched case-insensitively."""
        raise NotImplementedError

    def scan(self) -> list[tuple[ModelName, Any]]:
        """Every stored model: its name and manifest reference."""
        raise NotImplementedError

    def read_manifest(self, ref: Any) -> tuple[bytes, dict, datetime]:
        """Exact bytes, parsed object, and when the model was last written."""
        raise NotImplementedError

    def put_manifest(self, name: ModelName, data: bytes) -> str:
        """Write a manifest's exact bytes under ``name``; returns its hex digest."""
        raise NotImplementedError

    def delete_manifest(self, name: ModelName, ref: Any) -> None:
        raise NotImplementedError

    def blob_size(self, hex_digest: str) -> int | None:
        raise NotImplementedError

    def read_blob(self, hex_digest: str) -> bytes:
        """A small blob's bytes (config, template, params...)."""
        raise NotImplementedError

    def put_small_blob(self, data: bytes) -> tuple[str, bool]:
        """Store small content; returns (hex, created)."""
        raise NotImplementedError

    def blob_gguf(self, hex_digest: str) -> GGUFInfo:
        """The GGUF header of a model blob (metadata only, never the weights)."""
        raise NotImplementedError

    def blob_location(self, hex_digest: str) -> Path | None:
        """A local path to the blob, where the store has one."""
        return None

    def prune_unreferenced(self, candidates: Iterable[str]) -> int:
        """Delete those candidate blobs no remaining manifest references; returns how many."""
        return 0

    # The two that are async: an upload streams in, and a check may be a network round trip.

    async def has_blob(self, digest: str) -> bool:
        raise NotImplementedError

    async def write_blob(self, digest: str, chunks: AsyncIterator[bytes]) -> bool:
        """Store an upload; True if created, False if it was already there (body unread)."""
        raise NotImplementedError
