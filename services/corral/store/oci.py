"""The cluster's model store: an OCI registry (``CORRAL_REGISTRY_URL``), Distribution 2.8 or later.

Ollama models already are registry manifests, so the registry stores them unchanged:

    <host>/<namespace>/<model>:<tag>   one repository per model name, e.g.
                                       registry.ollama.ai/library/smollm2:135m
    corral/blobs                       every blob the cluster holds, linked here too

Blobs are content-addressed across the registry but linked per repository. Every blob
enters through ``corral/blobs`` (uploads, create's small layers, pulls); writing a
manifest mounts the blobs it needs into the model's repository first (no bytes move).
That gives ``/api/blobs`` one place to look and lets a manifest be written under any name.

Differences from the local store, because of what a registry can express:
- Repository names are lower case, so names are stored and shown in lower case (lookups
  are case-insensitive either way); a host's ``:port`` is stored as ``__``.
- Distribution deletes manifests by digest, which drops every tag on it; a delete puts
  the other tags of the same repository back.
- Unreferenced blobs are not deleted online: run the registry's garbage collector.
- Distribution keeps no timestamps (no ``Last-Modified``): ``modified_at`` comes from
  ``times`` (the cluster's Redis: when the model was written, or first seen, agreed by every
  process), else the registry's if it sends one, else when this process first saw it.

``ModelStore`` holds the logic; this module is the storage. Reads are cached briefly
(``cache_seconds``) because a cluster lists and resolves models far more often than it
changes them; this process's own writes clear the cache at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol

from corral.api.errors import BadRequestError, CorralError, InvalidNameError
from corral.store.gguf import GGUFInfo, read_gguf_prefix
from corral.store.manifest import digest_hex, manifest_digests
from corral.store.model_store import ModelRecord, ModelStore
from corral.store.names import ModelName
from corral.store.pull import Layer
from corral.store.registry import RegistryClient, RegistryError, Repository, parse_registry_url
from corral.store.transfer import FileSource, RegistrySource, RegistryUpload, Source, Transfer, copy_blob

logger = logging.getLogger(__name__)

BLOBS_REPOSITORY = "corral/blobs"
# Small layers (config, template, params...) are read whole; anything bigger is not small.
SMALL_BLOB_LIMIT = 8 << 20
_GGUF_CACHE = 64
_SMALL_CACHE = 4096
# Distribution's grammar for one path component of a repository name.
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")


def repository_path(name: ModelName) -> str:
    """``host/namespace/model`` as a registry repository, or 400 when it cannot be one."""
    parts = [name.host.lower().replace(":", "__"), name.namespace.lower(), name.model.lower()]
    if not all(_COMPONENT.fullmatch(part) for part in parts):
        raise InvalidNameError(f"model name {name.display!r} cannot be stored in the cluster registry")
    return "/".join(parts)


def name_for(path: str, tag: str) -> ModelName | None:
    """The model name a repository and tag hold; None for repositories that are not models."""
    parts = path.split("/")
    if len(parts) != 3:
        return None
    host, namespace, model = parts
    try:
        return ModelName.parse(f"{host.replace('__', ':')}/{namespace}/{model}:{tag}")
    except InvalidNameError:
        return None


class _TTLCache:
    """A small thread-safe cache whose entries expire; ``clear`` after our own writes."""

    def __init__(self, seconds: float, maxsize: int = 4096) -> None:
        self.seconds = seconds
        self.maxsize = maxsize
        self._data: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, compute: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._data.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        value = compute()
        with self._lock:
            self._data[key] = (now + self.seconds, value)
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class ModelTimes(Protocol):
    """Model write times shared by every process serving one registry (which keeps none)."""

    def agreed(self, key: str) -> datetime | None:
        """The time recorded for ``key``, recording now if none was (None: not available)."""

    def touch(self, key: str) -> None:
        """``key`` was written now."""

    def forget(self, key: str) -> None: ...


class RegistryStore(ModelStore):
    def __init__(
        self,
        url: str,
        *,
        client: RegistryClient,
        spool_dir: Path,
        capabilities: Callable[[ModelRecord, GGUFInfo | None], list[str]] | None = None,
        cache_seconds: float = 2.0,
        times: ModelTimes | None = None,
    ) -> None:
        super().__init__(capabilities=capabilities, noprune=True)
        base, user, password = parse_registry_url(url)
        self.url = base
        self.client = client
        self.blobs = Repository(base, BLOBS_REPOSITORY, user, password)
        self.spool_dir = Path(spool_dir)  # uploads are verified here before they go up
        self._listing = _TTLCache(cache_seconds, maxsize=8)
        self._manifests = _TTLCache(cache_seconds)
        self._small: OrderedDict[str, bytes] = OrderedDict()  # content-addressed: never stale
        self._gguf: OrderedDict[str, GGUFInfo] = OrderedDict()
        self._blob_times: OrderedDict[str, datetime] = OrderedDict()
        self._lock_small = threading.Lock()
        self.times = times
        self._times = _TTLCache(cache_seconds)

    def repository(self, name: ModelName) -> Repository:
        return self.blobs.sibling(repository_path(name))

    def invalidate(self) -> None:
        self._listing.clear()
        self._manifests.clear()
        self._times.clear()

    # --- manifests ----------------------------------------------------------------------------

    def locate(self, name: ModelName) -> tuple[ModelName, Any] | None:
        repo = self.repository(name)
        tag = name.tag.lower()
        data = self._manifest_bytes(repo.path, tag)
        if data is None:
            return None
        stored = name_for(repo.path, tag)
        return (stored or name), (repo.path, tag)

    def _manifest_bytes(self, path: str, tag: str) -> bytes | None:
        def fetch() -> bytes | None:
            try:
                return self.client.get_manifest(self.blobs.sibling(path), tag)
            except CorralError as exc:
                if exc.status == 404:
                    return None
                raise

        return self._manifests.get((path, tag), fetch)

    def scan(self) -> list[tuple[ModelName, Any]]:
        def scan() -> list[tuple[ModelName, Any]]:
            found = []
            for path in self.client.catalog(self.blobs):
                if path.count("/") != 2:
                    continue
                for tag in self.client.list_tags(self.blobs.sibling(path)):
                    name = name_for(path, tag)
                    if name is not None:
                        found.append((name, (path, tag)))
            return found

        return self._listing.get("scan", scan)

    def read_manifest(self, ref: Any) -> tuple[bytes, dict, datetime]:
        path, tag = ref
        data = self._manifest_bytes(path, tag)
        if data is None:
            raise FileNotFoundError(f"manifest {path}:{tag} is gone")
        manifest = json.loads(data)
        if not isinstance(manifest, dict):
            raise TypeError("manifest is not a JSON object")
        config = (manifest.get("config") or {}).get("digest")
        modified = self._modified(path, tag, config)
        return data, manifest, modified.astimezone()

    def _modified(self, path: str, tag: str, config: str | None) -> datetime:
        """When the model was last written: as the cluster agreed (``times``) if it keeps
        them, else the registry's word or this process's first sight of the config."""
        times = self.times
        if times is not None:
            agreed = self._times.get((path, tag), lambda: times.agreed(f"{path}:{tag}"))
            if agreed is not None:
                return agreed
        return self._blob_time(digest_hex(config)) if config else datetime.now(UTC)

    def put_manifest(self, name: ModelName, data: bytes) -> str:
        repo = self.repository(name)
        for hex_digest in manifest_digests(json.loads(data)):
            self._link(repo, hex_digest)
        self.client.put_manifest(repo, name.tag.lower(), data)
        if self.times is not None:
            self.times.touch(f"{repository_path(name)}:{name.tag.lower()}")
        self.invalidate()
        return hashlib.sha256(data).hexdigest()

    def _link(self, repo: Repository, hex_digest: str) -> None:
        """Make a blob of ``corral/blobs`` part of ``repo`` (a mount: no bytes move)."""
        digest = f"sha256:{hex_digest}"
        if self.client.blob_size(repo, digest) is not None:
            return
        if not self.client.mount_blob(repo, digest, BLOBS_REPOSITORY):
            raise CorralError(f"layer {digest} is missing from the cluster registry")

    def delete_manifest(self, name: ModelName, ref: Any) -> None:
        path, tag = ref
        repo = self.blobs.sibling(path)
        digest = self.client.head_manifest(repo, tag)
        if digest is None:
            return
        data = self._manifest_bytes(path, tag)
        # Deleting by digest removes every tag on it: note the others to put them back.
        siblings = [
            other
            for other in self.client.list_tags(repo)
            if other != tag and self.client.head_manifest(repo, other) == digest
        ]
        self.client.delete_manifest(repo, digest)
        for other in siblings:
            if data is not None:
                self.client.put_manifest(repo, other, data)
        if self.times is not None:
            self.times.forget(f"{path}:{tag}")
        self.invalidate()

    # --- blobs ----------------------------------------------------------------------------------

    def blob_size(self, hex_digest: str) -> int | None:
        return self.client.blob_size(self.blobs, f"sha256:{hex_digest}")

    def _blob_time(self, hex_digest: str) -> datetime:
        with self._lock_small:
            hit = self._blob_times.get(hex_digest)
        if hit is not None:
            return hit
        reply = self.client.request("HEAD", self.blobs, self.blobs.url("blobs", f"sha256:{hex_digest}"))
        when = datetime.now(UTC)
        stamp = reply.header("Last-Modified") if reply.status == 200 else None
        if stamp:
            try:
                when = parsedate_to_datetime(stamp)
            except (TypeError, ValueError):
                pass
        with self._lock_small:
            self._blob_times[hex_digest] = when
            while len(self._blob_times) > _SMALL_CACHE:
                self._blob_times.popitem(last=False)
        return when

    def read_blob(self, hex_digest: str) -> bytes:
        with self._lock_small:
            hit = self._small.get(hex_digest)
        if hit is not None:
            return hit
        stream = self.client.open_blob(self.blobs, f"sha256:{hex_digest}", end=SMALL_BLOB_LIMIT)
        try:
            data = bytearray()
            buffer = memoryview(bytearray(1 << 16))
            while n := stream.readinto(buffer):
                data += buffer[:n]
                if len(data) > SMALL_BLOB_LIMIT:
                    raise CorralError(f"layer sha256:{hex_digest} is too large to read whole")
        finally:
            stream.close()
        if hashlib.sha256(data).hexdigest() != hex_digest:
            raise CorralError(f"layer sha256:{hex_digest} does not match its digest")
        with self._lock_small:
            self._small[hex_digest] = bytes(data)
            while len(self._small) > _SMALL_CACHE:
                self._small.popitem(last=False)
        return bytes(data)

    def put_small_blob(self, data: bytes) -> tuple[str, bool]:
        hex_digest = hashlib.sha256(data).hexdigest()
        digest = f"sha256:{hex_digest}"
        if self.client.blob_size(self.blobs, digest) is not None:
            return hex_digest, False
        upload = RegistryUpload(self.client, self.blobs, digest, len(data))
        upload.append(iter([memoryview(data)]), lambda n: None, lambda: False)
        upload.finish()
        return hex_digest, True

    def blob_gguf(self, hex_digest: str) -> GGUFInfo:
        with self._lock_small:
            hit = self._gguf.get(hex_digest)
        if hit is not None:
            return hit
        digest = f"sha256:{hex_digest}"
        size = self.client.blob_size(self.blobs, digest)
        if size is None:
            raise FileNotFoundError(f"blob {digest} is not in the cluster registry")

        def fetch(n: int) -> bytes:
            stream = self.client.open_blob(self.blobs, digest, end=n)
            try:
                data = bytearray()
                buffer = memoryview(bytearray(1 << 20))
                while len(data) < n and (k := stream.readinto(buffer)):
                    data += buffer[:k]
                return bytes(data[:n])
            finally:
                stream.close()

        info = read_gguf_prefix(fetch, size)
        with self._lock_small:
            self._gguf[hex_digest] = info
            while len(self._gguf) > _GGUF_CACHE:
                self._gguf.popitem(last=False)
        return info

    async def has_blob(self, digest: str) -> bool:
        hex_digest = digest_hex(digest)
        return await asyncio.to_thread(self.blob_size, hex_digest) is not None

    async def write_blob(self, digest: str, chunks: AsyncIterator[bytes]) -> bool:
        """Spool an upload to disk and check its digest, then send it to ``corral/blobs``."""
        expected = digest_hex(digest)
        if await self.has_blob(digest):
            return False
        await asyncio.to_thread(self.spool_dir.mkdir, parents=True, exist_ok=True)
        spool = self.spool_dir / f".upload-{expected}-{secrets.token_hex(4)}"
        hasher = hashlib.sha256()
        size = 0
        try:
            # Each chunk is written as it arrives; a local write of one costs less than a thread hop.
            with open(spool, "wb") as f:  # noqa: ASYNC230
                async for chunk in chunks:
                    hasher.update(chunk)
                    size += len(chunk)
                    await asyncio.to_thread(f.write, chunk)
            actual = hasher.hexdigest()
            if actual != expected:
                raise BadRequestError(f'digest mismatch, expected "{digest}", got "sha256:{actual}"')
            full = f"sha256:{expected}"
            target = RegistryUpload(self.client, self.blobs, full, size)
            await asyncio.to_thread(copy_blob, FileSource(spool), target, size, lambda n: None, lambda: False)
            return True
        finally:
            await asyncio.to_thread(_unlink, spool)

    # --- pull and push --------------------------------------------------------------------------

    def transfer_key(self, name: ModelName, layer: Layer) -> str:
        return f"{self.url} {layer.hex}"

    async def has_layer(self, name: ModelName, layer: Layer) -> bool:
        repository_path(name)  # a name the registry cannot hold fails before any download
        return await asyncio.to_thread(self.blob_size, layer.hex) is not None

    def receive(self, name: ModelName, layer: Layer, source: Source, transfer: Transfer) -> None:
        """Stream one layer from upstream straight into the cluster registry (resumable)."""
        target = RegistryUpload(self.client, self.blobs, layer.digest, layer.size)
        copy_blob(source, target, layer.size, transfer.add, transfer.cancelled)

    def layer_source(self, name: ModelName, layer: Layer) -> Source:
        return RegistrySource(self.client, self.blobs, layer.digest)

    async def tags(self) -> list[dict]:
        try:
            return await super().tags()
        except RegistryError as exc:
            raise CorralError(f"cluster registry: {exc.message}", status=exc.status) from exc


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
