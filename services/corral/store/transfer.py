"""Moving one blob: from a registry or a file, into a file or a registry upload, resumably.

One loop (``copy_blob``) serves every direction: a pull into the local store, a push out
of it, and a pull streamed straight through into the cluster registry. A *source* opens at
an offset; a *target* knows how many bytes it already holds safely and appends more. After a
failure the loop asks the target where it stands and reopens the source there, so an
interrupted transfer resumes instead of starting over (Ollama keeps ``-partial`` files for
the same reason). Bytes stream through one reused buffer; nothing holds a blob in memory.

Everything here blocks and runs in a thread. ``Transfers`` is the async side: concurrent
requests for one blob share one transfer and each watches its progress.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from corral.api.errors import CorralError, NotFoundError
from corral.store.registry import (
    CHUNK,
    BlobStream,
    RegistryClient,
    RegistryError,
    Repository,
    UploadSession,
    _Cancelled,
)

logger = logging.getLogger(__name__)

ATTEMPTS = 6  # Ollama retries a part 6 times
# Buffers a source reads into in turn, so a consumer may still hold the last few chunks.
ROTATION = 6
BACKOFF = (0.25, 0.5, 1.0, 2.0, 4.0)
LOCK_POLL = 0.1


class DigestMismatchError(CorralError):
    def __init__(self, expected: str, actual: str) -> None:
        # Ollama's wording.
        super().__init__(f"digest mismatch, file must be downloaded again: want {expected}, got {actual}")


Progress = Callable[[int], None]
Cancelled = Callable[[], bool]


class Source(Protocol):
    def open(self, offset: int) -> AbstractContextManager[tuple[int, Iterator[memoryview]]]:
        """Chunks from ``offset``, or from 0 when the source cannot seek; yields (start, chunks)."""


class Target(Protocol):
    def offset(self) -> int: ...
    def restart(self) -> None: ...
    def append(self, chunks: Iterator[memoryview], progress: Progress, cancelled: Cancelled) -> None: ...
    def finish(self) -> None: ...


# --- sources -------------------------------------------------------------------------------------


@dataclass
class RegistrySource:
    client: RegistryClient
    repo: Repository
    digest: str

    @contextmanager
    def open(self, offset: int) -> Iterator[tuple[int, Iterator[memoryview]]]:
        stream = self.client.open_blob(self.repo, self.digest, offset=offset)
        try:
            yield (offset if stream.ranged or offset == 0 else 0), _stream_chunks(stream)
        finally:
            stream.close()


@dataclass
class FileSource:
    path: Path

    @contextmanager
    def open(self, offset: int) -> Iterator[tuple[int, Iterator[memoryview]]]:
        with open(self.path, "rb") as f:
            f.seek(offset)
            yield offset, _file_chunks(f)


def _buffers() -> Iterator[memoryview]:
    """``ROTATION`` buffers in turn: a chunk stays valid while ROTATION - 1 more are read."""
    views = [memoryview(bytearray(CHUNK)) for _ in range(ROTATION)]
    while True:
        yield from views


def _stream_chunks(stream: BlobStream) -> Iterator[memoryview]:
    expected = stream.length
    received = 0
    for view in _buffers():
        n = stream.readinto(view)
        if not n:
            break
        received += n
        yield view[:n]
    if expected is not None and received < expected:
        raise RegistryError(f"connection closed after {received} of {expected} bytes")


def _file_chunks(f) -> Iterator[memoryview]:
    for view in _buffers():
        n = f.readinto(view)
        if not n:
            return
        yield view[:n]


# --- targets -------------------------------------------------------------------------------------


class PartialFile:
    """``blobs/sha256-<hex>-partial``, hashed as it grows, renamed into place once verified.

    Several processes may share one blob directory (workers on one cache volume): an
    exclusive ``flock`` on ``-partial.lock`` makes one of them download while the others
    wait and then find the finished blob.
    """

    def __init__(self, blobs_dir: Path, hex_digest: str, size: int) -> None:
        self.final = blobs_dir / f"sha256-{hex_digest}"
        self.partial = blobs_dir / f"sha256-{hex_digest}-partial"
        self.hex = hex_digest
        self.size = size
        self._hasher = hashlib.sha256()
        self._hashed = 0

    def complete(self) -> bool:
        """The blob is in place at its full size (a crash before writeback may leave it short)."""
        try:
            return self.final.stat().st_size == self.size
        except FileNotFoundError:
            return False

    def offset(self) -> int:
        try:
            size = self.partial.stat().st_size
        except FileNotFoundError:
            return 0
        if size > self.size:  # not ours to trust
            self.restart()
            return 0
        if size != self._hashed:
            self._rehash()
        return self._hashed

    def _rehash(self) -> None:
        self._hasher, self._hashed = hashlib.sha256(), 0
        with open(self.partial, "rb") as f:
            for chunk in _file_chunks(f):
                self._hasher.update(chunk)
                self._hashed += len(chunk)

    def restart(self) -> None:
        with suppress(FileNotFoundError):
            self.partial.unlink()
        self._hasher, self._hashed = hashlib.sha256(), 0

    def append(self, chunks: Iterator[memoryview], progress: Progress, cancelled: Cancelled) -> None:
        """Write chunks here while a second thread hashes them.

        Receiving+writing and hashing each cost about as much as the network on loopback;
        overlapping them on two cores is what keeps a pull near curl's speed. The queue is
        bounded below the sources' buffer rotation, so a chunk is hashed before its buffer
        is read into again.
        """
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        pending: queue.Queue[memoryview | None] = queue.Queue(maxsize=ROTATION - 2)
        hasher = threading.Thread(target=self._hash_from, args=(pending,), name="blob-hash", daemon=True)
        hasher.start()
        try:
            with open(self.partial, "ab") as f:
                for chunk in chunks:
                    if cancelled():
                        raise _Cancelled()
                    f.write(chunk)
                    pending.put(chunk)
                    progress(len(chunk))
        finally:
            pending.put(None)
            hasher.join()

    def _hash_from(self, pending: queue.Queue[memoryview | None]) -> None:
        while (chunk := pending.get()) is not None:
            self._hasher.update(chunk)
            self._hashed += len(chunk)

    def finish(self) -> None:
        actual = self._hasher.hexdigest()
        if self._hashed != self.size or actual != self.hex:
            self.restart()
            raise DigestMismatchError(f"sha256:{self.hex}", f"sha256:{actual}")
        # No fsync, as in Ollama: it cost 1.5 s per GB here (40% of a pull). The digest was
        # checked on the bytes written; a crash before writeback can at worst leave a short
        # file, which the next fetch of the model replaces (its size no longer matches).
        os.replace(self.partial, self.final)

    @contextmanager
    def locked(self, cancelled: Cancelled) -> Iterator[bool]:
        """Hold the blob's download lock; yields False when the blob appeared meanwhile."""
        self.final.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.final.parent / f".{self.final.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if cancelled():
                        raise _Cancelled() from None
                    time.sleep(LOCK_POLL)
            yield not self.complete()
        finally:
            os.close(fd)  # closing releases the lock


class RegistryUpload:
    """A blob upload into a registry: streamed, and resumable from what the registry holds.

    The bytes are hashed on their way through, so a mismatch is caught before the final
    PUT with Ollama's message; the registry checks the digest again itself.
    """

    def __init__(self, client: RegistryClient, repo: Repository, digest: str, size: int) -> None:
        self.client, self.repo, self.digest, self.size = client, repo, digest, size
        self._session: UploadSession | None = None
        self._hasher = hashlib.sha256()
        self._hashed = 0

    def _ensure(self) -> UploadSession:
        if self._session is None:
            self._session = self.client.start_upload(self.repo)
        return self._session

    def offset(self) -> int:
        try:
            offset = self.client.upload_offset(self.repo, self._ensure())
        except RegistryError as exc:
            if exc.http_status != 404:
                raise
            # Distribution drops an upload whose PATCH broke off: begin a new one.
            self.restart()
            offset = self.client.upload_offset(self.repo, self._ensure())
        if offset != self._hashed:  # the registry kept other bytes than we sent: start over
            self.restart()
            return 0
        return offset

    def restart(self) -> None:
        self._session = None
        self._hasher, self._hashed = hashlib.sha256(), 0

    def append(self, chunks: Iterator[memoryview], progress: Progress, cancelled: Cancelled) -> None:
        def hashed() -> Iterator[memoryview]:
            for chunk in chunks:
                self._hasher.update(chunk)
                self._hashed += len(chunk)
                yield chunk

        self.client.append_upload(self.repo, self._ensure(), hashed(), progress=progress, cancelled=cancelled)

    def finish(self) -> None:
        actual = f"sha256:{self._hasher.hexdigest()}"
        if self._hashed != self.size or actual != self.digest:
            self.restart()
            raise DigestMismatchError(self.digest, actual)
        self.client.finish_upload(self.repo, self._ensure(), self.digest)


# --- the loop ------------------------------------------------------------------------------------


def copy_blob(source: Source, target: Target, size: int, progress: Progress, cancelled: Cancelled) -> None:
    """Move ``size`` bytes from source to target, resuming after failures, then finish."""
    last: BaseException | None = None
    for attempt in range(ATTEMPTS):
        if cancelled():
            raise _Cancelled()
        try:
            offset = target.offset()
            if offset < size:
                with source.open(offset) as (start, chunks):
                    if start != offset:  # the source could not seek: begin again
                        progress(-offset)
                        target.restart()
                        offset = target.offset()
                    target.append(chunks, progress, cancelled)
            target.finish()
            return
        except NotFoundError:
            raise
        except DigestMismatchError:
            raise
        except RegistryError as exc:
            if exc.http_status is not None and 400 <= exc.http_status < 500 and exc.http_status != 408:
                raise  # the registry said no; asking again will not change its mind
            last = exc
        except OSError as exc:
            last = exc
        logger.warning("transfer interrupted (attempt %d of %d): %s", attempt + 1, ATTEMPTS, last)
        if attempt < ATTEMPTS - 1:
            time.sleep(BACKOFF[min(attempt, len(BACKOFF) - 1)])
    assert last is not None
    raise last if isinstance(last, CorralError) else RegistryError(str(last))


# --- shared transfers ------------------------------------------------------------------------------


@dataclass
class Transfer:
    """One blob on its way; any number of requests watch it."""

    total: int
    completed: int = 0
    task: asyncio.Task | None = None
    watchers: int = 0
    _cancel: bool = field(default=False, repr=False)

    def add(self, n: int) -> None:  # called from the transfer's thread; int += is atomic enough
        self.completed += n

    def cancelled(self) -> bool:
        return self._cancel


class Transfers:
    """Deduplicates concurrent transfers of one blob to one destination (key)."""

    def __init__(self) -> None:
        self._active: dict[str, Transfer] = {}

    def join(self, key: str, total: int, work: Callable[[Transfer], None]) -> Transfer:
        transfer = self._active.get(key)
        if transfer is None:
            transfer = Transfer(total=total)
            self._active[key] = transfer
            transfer.task = asyncio.ensure_future(asyncio.to_thread(work, transfer))
            transfer.task.add_done_callback(functools.partial(self._forget, key, transfer))
        transfer.watchers += 1
        return transfer

    def _forget(self, key: str, transfer: Transfer, _task: object = None) -> None:
        if self._active.get(key) is transfer:
            del self._active[key]
        task = transfer.task
        if task is not None and not task.cancelled() and task.exception() is not None and not transfer.watchers:
            # Nobody is left to hear it (they all went away): log it instead of asyncio's warning.
            logger.info("transfer %s ended: %s", key, task.exception())

    def leave(self, transfer: Transfer) -> None:
        """A watcher went away; the last one to leave stops the transfer."""
        transfer.watchers -= 1
        if transfer.watchers <= 0 and transfer.task is not None and not transfer.task.done():
            transfer._cancel = True

    def active(self) -> int:
        return len(self._active)
