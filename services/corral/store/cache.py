"""A worker's blob cache: cluster models copied into the local Ollama layout on first use.

A worker in a cluster (``CORRAL_REGISTRY_URL`` set) resolves a model name in the cluster
registry, fetches the layers it lacks into ``OLLAMA_MODELS`` (digest-checked, resumable,
one download per blob even when several workers share the directory: see
``transfer.PartialFile``), writes the manifest there and loads from the local files. A
blob already on disk is never downloaded again.

The cache is bounded by ``CORRAL_CACHE_MAX_BYTES``. When it is over, blobs go in this
order: first those no local manifest references (left-overs), then the least recently
used; blobs of loaded models, or of the model being fetched, are never removed. A model
losing a blob loses its local manifest too, so the cache stays consistent and the next
request for it simply fetches again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from pathlib import Path

from corral.api.errors import NotFoundError, model_not_found
from corral.store.local import LocalStore
from corral.store.manifest import manifest_digests
from corral.store.model_store import ModelRecord
from corral.store.names import ModelName
from corral.store.oci import RegistryStore
from corral.store.pull import Registries, follow, manifest_layers
from corral.store.transfer import RegistrySource

logger = logging.getLogger(__name__)

# Touching a blob's mtime marks it used; at most this often, so a busy model costs no writes.
_TOUCH_EVERY = 60.0


class BlobCache:
    def __init__(
        self,
        cluster: RegistryStore,
        local: LocalStore,
        registries: Registries,
        *,
        max_bytes: int = 0,
        in_use: Callable[[], set[str]] = set,
    ) -> None:
        self.cluster = cluster
        self.local = local
        self.registries = registries
        self.max_bytes = max_bytes
        self._in_use = in_use
        self._touched: dict[str, float] = {}
        self._prune_lock = asyncio.Lock()

    async def get(self, name: str) -> ModelRecord:
        """The model as local files, fetched from the cluster registry when missing or changed."""
        parsed = ModelName.parse(name)
        located = await asyncio.to_thread(self.cluster.locate, parsed)
        if located is None:
            raise model_not_found(name)
        stored, ref = located
        data = (await asyncio.to_thread(self.cluster.read_manifest, ref))[0]
        fetched = set()
        for layer in manifest_layers(data):
            fetched.add(layer.hex)
            if await self.local.has_layer(stored, layer):
                self._touch(layer.hex)
                continue
            source = RegistrySource(self.cluster.client, self.cluster.blobs, layer.digest)
            key = self.local.transfer_key(stored, layer)
            transfer = self.registries.transfers.join(
                key, layer.size, functools.partial(self.local.receive, stored, layer, source)
            )
            async for _ in follow(self.registries.transfers, transfer, f"pulling {layer.short}", layer):
                pass
            logger.info("fetched %s for %s from the cluster registry", layer.digest, stored.display)
        await self._write_manifest(stored, data)
        await self.prune(keep=fetched)
        try:
            return await self.local.get(stored.display)
        except NotFoundError:  # pruned by another worker sharing the cache, between two lines
            raise model_not_found(name) from None

    async def _write_manifest(self, name: ModelName, data: bytes) -> None:
        path = self.local.manifests_dir / name.manifest_relpath()
        current = await asyncio.to_thread(_read_or_none, path)
        if current != data:
            await self.local.write_manifest(name, data)

    def _touch(self, hex_digest: str) -> None:
        now = time.monotonic()
        if now - self._touched.get(hex_digest, 0.0) < _TOUCH_EVERY:
            return
        self._touched[hex_digest] = now
        try:
            os.utime(self.local.blobs_dir / f"sha256-{hex_digest}")
        except OSError:
            pass

    async def prune(self, keep: AbstractSet[str] = frozenset()) -> int:
        """Bring the cache under ``max_bytes``; returns how many blobs went."""
        if not self.max_bytes:
            return 0
        async with self._prune_lock, self.local.writing:
            return await asyncio.to_thread(self._prune_sync, set(keep) | self._in_use())

    def _prune_sync(self, protected: set[str]) -> int:
        blobs = _blob_files(self.local.blobs_dir)
        total = sum(size for _, size, _ in blobs.values())
        if total <= self.max_bytes:
            return 0
        users: dict[str, list[Path]] = {}
        for _, path in self.local.scan():
            try:
                for hex_digest in manifest_digests(self.local.read_manifest(path)[1]):
                    users.setdefault(hex_digest, []).append(path)
            except (OSError, ValueError, TypeError, AttributeError):
                continue
        # Left-overs first, then least recently used.
        order = sorted(
            (hex_digest for hex_digest in blobs if hex_digest not in protected),
            key=lambda h: (h in users, blobs[h][2]),
        )
        removed = 0
        for hex_digest in order:
            if total <= self.max_bytes:
                break
            path, size, _ = blobs[hex_digest]
            for manifest in users.get(hex_digest, []):
                if manifest.exists():
                    manifest.unlink()
                    self.local.remove_empty_dirs(manifest.parent)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            total -= size
            removed += 1
            logger.info("cache: removed sha256:%s (%d bytes) to stay under %d bytes", hex_digest, size, self.max_bytes)
        if total > self.max_bytes:
            logger.warning("cache: %d bytes in use by loaded models, over the %d byte limit", total, self.max_bytes)
        return removed


def blob_usage(blobs_dir: Path) -> tuple[int, int]:
    """(finished blobs, their bytes) under ``blobs_dir``: what the cache holds, for metrics."""
    files = _blob_files(blobs_dir)
    return len(files), sum(size for _, size, _ in files.values())


def _blob_files(blobs_dir: Path) -> dict[str, tuple[Path, int, float]]:
    """Finished blobs (``sha256-<64 hex>``) with size and last use; partial downloads are skipped."""
    found: dict[str, tuple[Path, int, float]] = {}
    try:
        entries = list(os.scandir(blobs_dir))
    except FileNotFoundError:
        return found
    for entry in entries:
        name = entry.name
        if not name.startswith("sha256-") or len(name) != 71:
            continue
        try:
            stat = entry.stat()
        except FileNotFoundError:
            continue
        found[name[7:]] = (Path(entry.path), stat.st_size, stat.st_mtime)
    return found


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
