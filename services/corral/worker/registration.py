"""This worker's membership of the cluster: it registers in Redis, heartbeats, drains, leaves.

Only with ``REDIS_URL``; without it nothing here runs and no Redis is touched. The keys and the
record are ``corral.cluster.workers``'s. The lifecycle, driven by ``WorkerServer`` (uvicorn's
server, run by ``corral worker``) and the app's lifespan:

    lifespan start   ``Registration`` opens: the Redis client and the heartbeat task, idle
    listening        ``serving()``: the first registration, then one every ``HEARTBEAT_S``
                     (each beat rewrites the whole record, so a Redis that lost it recovers)
    SIGTERM/SIGINT   ``drain()``: state ``draining`` is written at once, so routers place
                     nothing new here; uvicorn closes the listener (new connections are
                     refused: they fail fast and a router retries elsewhere), closes idle
                     keep-alive connections and lets responses in flight finish, for at most
                     ``CORRAL_DRAIN_TIMEOUT``; heartbeats go on meanwhile, so the lease holds
    lifespan end     ``close()``: heartbeats stop and the worker deregisters (both keys go)

Redis being down, at start or later, never stops the worker: local requests are served, one
warning is logged per outage, and every beat retries. Every Redis call is bounded
(``REDIS_TIMEOUT_S`` per socket operation, one immediate retry).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from contextlib import suppress
from importlib import metadata
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import uvicorn
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from corral.cluster import workers
from corral.cluster.redis_client import async_client
from corral.cluster.workers import STATE_DRAINING, WorkerInfo
from corral.worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 2.0
_NVIDIA_SMI = ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"]


# -- what the worker offers ------------------------------------------------------------------


def worker_info(settings: WorkerSettings) -> WorkerInfo:
    device, memory = device_and_memory(settings)
    try:
        version = metadata.version("corral")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        version = ""
    return WorkerInfo(
        id=settings.CORRAL_WORKER_ID,
        url=settings.CORRAL_WORKER_URL,
        device=device,
        memory_total=memory,
        num_parallel=settings.OLLAMA_NUM_PARALLEL,
        max_loaded=settings.max_loaded_models,
        labels=settings.worker_labels,
        started_at=workers.now_ms(),
        version=version,
    )


def device_and_memory(settings: WorkerSettings) -> tuple[str, int]:
    """("cuda", the visible GPUs' memory) when this llama.cpp can offload and a GPU is there,
    else ("cpu", RAM within the cgroup's limit); CORRAL_WORKER_MEMORY overrides the memory."""
    gpus = gpu_memory(settings.CUDA_VISIBLE_DEVICES) if _llama_offloads() else []
    detected = sum(gpus) if gpus else system_memory()
    return ("cuda" if gpus else "cpu"), settings.worker_memory or detected


def _llama_offloads() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def gpu_memory(visible: str | None) -> list[int]:
    """Bytes of each NVIDIA GPU this process may use (``CUDA_VISIBLE_DEVICES``, indices or
    UUIDs), from nvidia-smi; [] when there is none or no nvidia-smi."""
    if visible is not None and visible.strip() in ("", "-1"):
        return []  # CUDA hides every GPU
    command = _NVIDIA_SMI + (["-i", visible.strip()] if visible else [])
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_gpu_memory(result.stdout)


def parse_gpu_memory(text: str) -> list[int]:
    """nvidia-smi's ``memory.total`` in MiB, one GPU a line -> bytes; unreadable lines skipped."""
    return [int(line.strip()) << 20 for line in text.splitlines() if line.strip().isdigit()]


def system_memory(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int:
    """Physical memory (MemTotal), or less where the cgroup limits it."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limit = cgroup_memory_limit(proc_cgroup, root)
    return min(limit, total) if limit else total


def cgroup_memory_limit(proc_cgroup: Path, root: Path) -> int | None:
    """The tightest memory limit on this process's cgroup and its ancestors: cgroup v2's
    ``memory.max``, v1's ``memory.limit_in_bytes``. None when nothing limits it.

    In a container the cgroup namespace usually makes its own cgroup the root (``0::/``);
    without one, /proc/self/cgroup names the host's path, which is walked up to the root.
    """
    limits = [
        int(value)
        for value in _cgroup_files(proc_cgroup, root, "memory.max", "memory", ["memory.limit_in_bytes"])
        if value.isdigit()
    ]  # v2 says "max" for no limit
    return min(limits, default=None)


def cgroup_cpu_limit(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The tightest CPU quota on this process's cgroup and its ancestors, in whole CPUs
    (rounded up): v2's ``cpu.max`` ("quota period"), v1's CFS quota and period. None: no quota."""
    limits = []
    for value in _cgroup_files(proc_cgroup, root, "cpu.max", "cpu", ["cpu.cfs_quota_us", "cpu.cfs_period_us"]):
        quota, _, period = value.partition(" ")
        if quota.lstrip("-").isdigit() and period.isdigit() and int(quota) > 0 and int(period) > 0:
            limits.append(max(1, -(-int(quota) // int(period))))
    return min(limits, default=None)


def _cgroup_files(proc_cgroup: Path, root: Path, v2_name: str, v1_controller: str, v1_names: list[str]) -> list[str]:
    """A cgroup setting as read from this process's cgroup and each ancestor ("quota period"
    when v1 keeps it in two files).

    In a container the cgroup namespace usually makes its own cgroup the root (``0::/``);
    without one, /proc/self/cgroup names the host's path, which is walked up to the root.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        _, _, rest = line.partition(":")
        controllers, sep, path = rest.partition(":")
        if not sep:
            continue
        if controllers == "":
            base, names = root, [v2_name]
        elif v1_controller in controllers.split(","):
            base, names = root / controllers, v1_names
        else:
            continue
        cgroup = PurePosixPath("/", path)
        for directory in (cgroup, *cgroup.parents):
            try:
                found.append(" ".join((base / directory.relative_to("/") / n).read_text().strip() for n in names))
            except OSError:
                continue
    return found


# -- joining and leaving -------------------------------------------------------------------------


def _without_password(url: str) -> str:
    # The master's password in the userinfo; a sentinel's in the query.
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2], query="").geturl()


class Registration:
    """The worker's record in Redis and its heartbeat; an async context manager for the lifespan.

    One task writes to Redis (the heartbeat), so a state change and a beat never race: ``drain``
    changes the record here and wakes the task to write it now.
    """

    def __init__(self, settings: WorkerSettings, info: WorkerInfo | None = None) -> None:
        self.redis_url = settings.REDIS_URL
        self.info = info or worker_info(settings)
        self._redis: Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._serving = asyncio.Event()
        self._wake = asyncio.Event()
        self._closing = False
        self._registered = False  # at least once: the first one is logged
        self._down = False  # in an outage: logged once, at its start

    async def __aenter__(self) -> Registration:
        self._redis = async_client(
            self.redis_url,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            # One immediate retry: a pooled connection that a Redis restart broke reconnects
            # at once; redis-py's default (10 retries with backoff) would outlast the lease.
            retry=Retry(NoBackoff(), 1),
        )
        self._task = asyncio.create_task(self._run(), name="corral-heartbeat")
        return self

    def serving(self) -> None:
        """The listener is up: register now, and heartbeat from then on."""
        self._serving.set()

    def drain(self) -> None:
        """Stopping: routers must place nothing new here. Written at once (next beats keep it)."""
        if self.info.state != STATE_DRAINING:
            self.info.state = STATE_DRAINING
            logger.info("draining: set %s to %s in the cluster", self.info.id, STATE_DRAINING)
            self._wake.set()

    async def __aexit__(self, *exc: object) -> None:
        # Let the current beat finish rather than cancel it: a write cut off mid-way could
        # land after the deregistration below and bring the record back.
        self._closing = True
        self._serving.set()
        self._wake.set()
        assert self._task is not None and self._redis is not None
        try:
            await self._task
            if self._registered:
                await workers.deregister(self._redis, self.info.id)
                logger.info("deregistered %s from the cluster", self.info.id)
        except (RedisError, OSError) as error:
            logger.warning(
                "could not deregister %s (%s): its lease lapses within %d s",
                self.info.id,
                error,
                workers.LEASE_MS // 1000,
            )
        finally:
            await self._redis.aclose()

    async def _run(self) -> None:
        await self._serving.wait()
        while not self._closing:
            self._wake.clear()
            await self._beat()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), workers.HEARTBEAT_S)

    async def _beat(self) -> None:
        assert self._redis is not None
        try:
            await workers.heartbeat(self._redis, self.info)
        except (RedisError, OSError) as error:
            if not self._down:
                logger.warning(
                    "Redis at %s unreachable (%s): serving local requests, retrying every %g s",
                    _without_password(self.redis_url),
                    error,
                    workers.HEARTBEAT_S,
                )
            self._down = True
            return
        info = self.info
        if not self._registered:
            logger.info(
                "registered in the cluster as %s at %s (%s, %.1f GiB for models, %d parallel, %d models, labels %s)",
                info.id,
                info.url,
                info.device,
                info.memory_total / 2**30,
                info.num_parallel,
                info.max_loaded,
                info.labels or "none",
            )
        elif self._down:
            logger.info("Redis reachable again: %s registered", info.id)
        self._registered, self._down = True, False


class WorkerServer(uvicorn.Server):
    """uvicorn's server, telling the registration when the worker listens and when it stops.

    On SIGTERM/SIGINT uvicorn's main loop ends (within 0.1 s) and ``shutdown`` closes the
    listener, waits up to ``timeout_graceful_shutdown`` for responses in flight, then runs the
    lifespan's shutdown (where the worker deregisters). Draining is marked on entering
    ``shutdown``, before that wait: in the event loop, not in the signal handler.
    """

    def __init__(self, config: uvicorn.Config, registration: Registration | None) -> None:
        super().__init__(config)
        self.registration = registration

    async def startup(self, sockets: list | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.registration and self.started and not self.should_exit:
            self.registration.serving()

    async def shutdown(self, sockets: list | None = None) -> None:
        if self.registration:
            self.registration.drain()
        await super().shutdown(sockets=sockets)
