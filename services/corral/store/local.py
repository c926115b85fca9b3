"""The local model store: Ollama's on-disk layout under ``OLLAMA_MODELS`` (docs/api-coverage.md,
"Manifests and the local layout").

    <root>/manifests/<host>/<namespace>/<model>/<tag>   exact manifest bytes
    <root>/blobs/sha256-<hex>                            content-addressed layers

What must stay true:
- Nothing is read or written outside ``root``: names are validated (names.py), digests
  must match ``sha256[:-]<64 hex>``, ``files`` keys must be relative without ``..``.
- Every write is a temp file in the target's directory plus ``os.replace``, so readers
  (and other processes sharing the store) never see half a blob or half a manifest, and
  concurrent writers of one blob are harmless.
- Blobs are deleted only when the manifest that used them goes away (delete, create or
  pull replacing a model) and no other manifest references them; uploads waiting for
  their ``create`` are never touched.

The logic (tags, show, create, copy, delete) is ``ModelStore``'s; this module is the storage.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

from corral.api.errors import BadRequestError, InvalidNameError
from corral.store.gguf import GGUFCache, GGUFInfo
from corral.store.manifest import compact_json, digest_hex, manifest_digests
from corral.store.model_store import ModelRecord, ModelStore
from corral.store.names import ModelName
from corral.store.pull import Layer
from corral.store.transfer import FileSource, PartialFile, Source, Transfer, copy_blob

logger = logging.getLogger(__name__)

# Uploads are hashed and written in slices this big, off the event loop.
_WRITE_SLICE = 4 << 20


class LocalStore(ModelStore):
    def __init__(
        self,
        root: Path | str,
        *,
        gguf_cache: GGUFCache | None = None,
        capabilities: Callable[[ModelRecord, GGUFInfo | None], list[str]] | None = None,
        noprune: bool = False,
    ) -> None:
        super().__init__(capabilities=capabilities, noprune=noprune)
        self.root = Path(root)
        self.manifests_dir = self.root / "manifests"
        self.blobs_dir = self.root / "blobs"
        self.gguf_cache = gguf_cache if gguf_cache is not None else GGUFCache()

    # --- blobs ---------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / f"sha256-{digest_hex(digest)}"

    async def has_blob(self, digest: str) -> bool:
        path = self.blob_path(digest)
        return await asyncio.to_thread(path.is_file)

    async def write_blob(self, digest: str, chunks: AsyncIterator[bytes]) -> bool:
        """Store an upload; True if created, False if it was already there (body unread)."""
        expected = digest_hex(digest)
        final = self.blobs_dir / f"sha256-{expected}"
        if await asyncio.to_thread(final.is_file):
            return False
        fd, temp = await asyncio.to_thread(self._open_temp, self.blobs_dir, f"sha256-{expected}")
        hasher = hashlib.sha256()
        done = False
        try:
            with os.fdopen(fd, "wb") as f:
                pending: list[bytes] = []
                pending_size = 0
                async for chunk in chunks:
                    pending.append(chunk)
                    pending_size += len(chunk)
                    if pending_size >= _WRITE_SLICE:
                        await asyncio.to_thread(_write_hashed, f, hasher, b"".join(pending))
                        pending, pending_size = [], 0
                await asyncio.to_thread(_write_hashed, f, hasher, b"".join(pending), sync=True)
            actual = hasher.hexdigest()
            if actual != expected:
                raise BadRequestError(f'digest mismatch, expected "{digest}", got "sha256:{actual}"')
            await asyncio.to_thread(os.replace, temp, final)
            done = True
            return True
        finally:
            if not done:
                with suppress(OSError):
                    os.unlink(temp)

    def blob_size(self, hex_digest: str) -> int | None:
        try:
            return (self.blobs_dir / f"sha256-{hex_digest}").stat().st_size
        except FileNotFoundError:
            return None

    def read_blob(self, hex_digest: str) -> bytes:
        return (self.blobs_dir / f"sha256-{hex_digest}").read_bytes()

    def blob_gguf(self, hex_digest: str) -> GGUFInfo:
        return self.gguf_cache.read(self.blobs_dir / f"sha256-{hex_digest}")

    def blob_location(self, hex_digest: str) -> Path | None:
        return self.blobs_dir / f"sha256-{hex_digest}"

    def put_small_blob(self, data: bytes) -> tuple[str, bool]:
        """Store small content (a template, params); returns (hex, created)."""
        hex_digest = hashlib.sha256(data).hexdigest()
        final = self.blobs_dir / f"sha256-{hex_digest}"
        if final.is_file():
            return hex_digest, False
        _atomic_write(final, data)
        return hex_digest, True

    @staticmethod
    def _open_temp(directory: Path, stem: str) -> tuple[int, str]:
        directory.mkdir(parents=True, exist_ok=True)
        # A dot name is never a valid blob or model name, so scans skip it.
        path = directory / f".{stem}.{secrets.token_hex(8)}.tmp"
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), str(path)

    # --- manifests -----------------------------------------------------------------------

    async def write_manifest(self, name: ModelName, manifest: dict | bytes) -> str:
        """Write a manifest's exact bytes atomically; returns their sha256 hex."""
        data = manifest if isinstance(manifest, bytes) else compact_json(manifest)
        return await asyncio.to_thread(self.put_manifest, name, data)

    def put_manifest(self, name: ModelName, data: bytes) -> str:
        _atomic_write(self.manifests_dir / name.manifest_relpath(), data)
        return hashlib.sha256(data).hexdigest()

    def locate(self, name: ModelName) -> tuple[ModelName, Path] | None:
        """The stored name and manifest path for ``name``, matched case-insensitively."""
        exact = self.manifests_dir / name.manifest_relpath()
        if exact.is_file():
            return name, exact
        current, found = self.manifests_dir, []
        for part in name.manifest_relpath().parts:
            try:
                entries = sorted(os.listdir(current))
            except OSError:
                return None
            match = next((entry for entry in entries if entry.lower() == part.lower()), None)
            if match is None:
                return None
            found.append(match)
            current = current / match
        if not current.is_file():
            return None
        host, namespace, model, tag = found
        return ModelName(host, namespace, model, tag, name.scheme), current

    def scan(self) -> list[tuple[ModelName, Path]]:
        """Every manifest on disk (``manifests/*/*/*/*``) whose path is a valid name."""
        found: list[tuple[ModelName, Path]] = []
        for path in _walk_files(self.manifests_dir, depth=4):
            host, namespace, model, tag = path.relative_to(self.manifests_dir).parts
            try:
                name = ModelName.parse(f"{host}/{namespace}/{model}:{tag}")
            except InvalidNameError:
                logger.warning("skipping manifest with an invalid name: %s", path)
                continue
            found.append((name, path))
        return found

    def read_manifest(self, path: Path) -> tuple[bytes, dict, datetime]:
        data = path.read_bytes()
        stat = path.stat()
        manifest = json.loads(data)
        if not isinstance(manifest, dict):
            raise TypeError("manifest is not a JSON object")
        return data, manifest, datetime.fromtimestamp(stat.st_mtime).astimezone()

    def delete_manifest(self, name: ModelName, path: Path) -> None:
        path.unlink()
        self.remove_empty_dirs(path.parent)

    # --- pull and push (store/pull.py drives these) --------------------------------------

    def transfer_key(self, name: ModelName, layer: Layer) -> str:
        return f"{self.blobs_dir} {layer.hex}"

    async def has_layer(self, name: ModelName, layer: Layer) -> bool:
        return await asyncio.to_thread(PartialFile(self.blobs_dir, layer.hex, layer.size).complete)

    def receive(self, name: ModelName, layer: Layer, source: Source, transfer: Transfer) -> None:
        """Download one layer into ``blobs/`` (blocking): resumable, verified, renamed into place."""
        target = PartialFile(self.blobs_dir, layer.hex, layer.size)
        with target.locked(transfer.cancelled) as needed:
            if not needed:  # another process sharing this store fetched it meanwhile
                transfer.completed = layer.size
                return
            transfer.completed = target.offset()
            copy_blob(source, target, layer.size, transfer.add, transfer.cancelled)

    def layer_source(self, name: ModelName, layer: Layer) -> Source:
        return FileSource(self.blobs_dir / f"sha256-{layer.hex}")

    # --- removal ----------------------------------------------------------------------------

    def remove_empty_dirs(self, directory: Path) -> None:
        while directory != self.manifests_dir and self.manifests_dir in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def prune_unreferenced(self, candidates: Iterable[str]) -> int:
        """Delete those candidate blobs no remaining manifest references; returns how many."""
        referenced: set[str] = set()
        for _, path in self.scan():
            try:
                referenced |= manifest_digests(self.read_manifest(path)[1])
            except (OSError, ValueError, AttributeError, TypeError) as exc:
                logger.warning("ignoring unreadable manifest %s while pruning: %s", path, exc)
        removed = 0
        for hex_digest in set(candidates) - referenced:
            blob = self.blobs_dir / f"sha256-{hex_digest}"
            try:
                blob.unlink()
                removed += 1
                logger.info("removed unused blob sha256:%s", hex_digest)
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("could not remove blob %s: %s", blob, exc)
        return removed


# --- helpers ---------------------------------------------------------------------------------


def _walk_files(root: Path, depth: int) -> list[Path]:
    """Regular files exactly ``depth`` levels below root, skipping dot names."""
    level = [root]
    for _ in range(depth - 1):
        next_level = []
        for directory in level:
            with suppress(OSError):
                next_level += [Path(e.path) for e in os.scandir(directory) if e.is_dir() and not e.name.startswith(".")]
        level = next_level
    files = []
    for directory in level:
        with suppress(OSError):
            files += [Path(e.path) for e in os.scandir(directory) if e.is_file() and not e.name.startswith(".")]
    return files


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = LocalStore._open_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise


def _write_hashed(f: Any, hasher: Any, data: bytes, *, sync: bool = False) -> None:
    hasher.update(data)
    f.write(data)
    if sync:
        f.flush()
        os.fsync(f.fileno())
