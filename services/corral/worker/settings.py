"""The worker's one settings object. Only this module reads the worker's environment."""

from __future__ import annotations

import os
import re
import secrets
import socket
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from corral.cluster.redis_client import check_redis_url, is_sentinel, parse_sentinel_url
from corral.settings import CommonSettings, HostPort, default_models_dir, parse_size
from corral.store.registry import parse_registry_url

_WORKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


def parse_labels(text: str) -> dict[str, str]:
    """``CORRAL_WORKER_LABELS``: ``key=value[,key=value...]``; a value may be empty."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not _LABEL_KEY.fullmatch(key):
            raise ValueError(f"expected key=value, got {item!r}")
        if key in labels:
            raise ValueError(f"label {key!r} given twice")
        labels[key] = value.strip()
    return labels


def primary_host() -> str:
    """This host's address on its default route (found without sending a packet), else its name."""
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                return s.getsockname()[0]
        except OSError:
            continue
    return socket.gethostname()


def advertised_url(listen: HostPort) -> str:
    """Where routers reach a worker listening on ``listen``: the same address, except that
    "every interface" (0.0.0.0, ::) becomes this host's primary address."""
    host = primary_host() if listen.host in ("0.0.0.0", "::", "") else listen.host
    return HostPort(listen.scheme, host, listen.port).url


def _parse_redis_url(url: str) -> Any:
    if is_sentinel(url):
        return parse_sentinel_url(url)
    from redis.connection import parse_url

    return parse_url(check_redis_url(url))


# Variables read through a parser: parsed once at start-up too, so a bad value stops it.
_PARSED = {
    "CORRAL_REGISTRY_URL": parse_registry_url,
    "REDIS_URL": _parse_redis_url,
    "CORRAL_WORKER_MEMORY": parse_size,
    "CORRAL_WORKER_LABELS": parse_labels,
}


def _cpu_count() -> int:
    """CPUs this process may use: its affinity, and no more than its cgroup's CPU quota (a
    container limited to 2 CPUs on a 64-core node must not start 64 threads)."""
    from corral.worker.registration import cgroup_cpu_limit

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        usable = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return min(usable, quota) if quota else usable


class WorkerSettings(CommonSettings):
    OLLAMA_MODELS: Path = Field(default_factory=default_models_dir, description="model store (Ollama layout)")
    OLLAMA_NUM_PARALLEL: int = Field(1, ge=1, le=64, description="concurrent requests per loaded model")
    OLLAMA_MAX_LOADED_MODELS: int = Field(0, ge=0, le=64, description="0 means 3 (Ollama's CPU default)")
    OLLAMA_MAX_QUEUE: int = Field(512, ge=1, description="requests waiting per model before 503")
    OLLAMA_CONTEXT_LENGTH: int = Field(0, ge=0, description="default num_ctx; 0 means 4096")
    OLLAMA_NOPRUNE: bool = Field(False, description="keep unreferenced blobs")
    OLLAMA_FLASH_ATTENTION: bool | None = Field(
        None, description="llama.cpp flash attention; unset: llama.cpp's auto (on where the backend supports it)"
    )
    OLLAMA_KV_CACHE_TYPE: str = Field("f16", pattern=r"^(f16|q8_0|q4_0)$")
    CORRAL_NUM_THREADS: int = Field(
        0, ge=0, description="llama.cpp threads; 0 means every usable core (within the cgroup's CPU quota)"
    )
    CORRAL_REGISTRY_URL: str = Field(
        "", description="the cluster's model registry; set, OLLAMA_MODELS becomes a cache of it"
    )
    CORRAL_CACHE_MAX_BYTES: int = Field(0, ge=0, description="bound on the blob cache; 0 means unbounded")
    # Bounds on one request's work, beside the body size (Ollama has none): a chat's history is
    # rendered and tokenized a few times over to fit num_ctx, every embedding input is run.
    CORRAL_MAX_MESSAGES: int = Field(10_000, ge=1, description="messages in one chat request (400 beyond)")
    CORRAL_MAX_INPUTS: int = Field(2048, ge=1, description="inputs in one embedding request (400 beyond)")
    # Cluster membership: with REDIS_URL the worker registers there (corral.worker.registration).
    REDIS_URL: str = Field("", description="the cluster's Redis; set, the worker registers itself there")
    CORRAL_WORKER_ID: str = Field("", description="this worker's id in the cluster; default host-port-random")
    CORRAL_WORKER_URL: str = Field("", description="where routers reach this worker; default from OLLAMA_HOST")
    CORRAL_WORKER_MEMORY: str = Field("", description="bytes for models (8GiB, 512MB); default detected")
    CORRAL_WORKER_LABELS: str = Field("", description="key=value[,key=value...] for placement")
    # CUDA's own variable, read here only to count the memory of the GPUs llama.cpp will see.
    CUDA_VISIBLE_DEVICES: str | None = None

    @field_validator("OLLAMA_FLASH_ATTENTION", mode="before")
    @classmethod
    def _auto_when_empty(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip().strip("\"'") else value

    @field_validator("OLLAMA_MODELS", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator(*_PARSED)
    @classmethod
    def _check_parses(cls, value: str, info: ValidationInfo) -> str:
        if value:
            _PARSED[str(info.field_name)](value)
        return value

    @field_validator("CORRAL_WORKER_ID")
    @classmethod
    def _check_worker_id(cls, value: str) -> str:
        if value and not _WORKER_ID.fullmatch(value):
            raise ValueError("up to 200 letters, digits and . _ : -, starting with a letter or digit")
        return value

    @field_validator("CORRAL_WORKER_URL")
    @classmethod
    def _check_worker_url(cls, value: str) -> str:
        return parse_registry_url(value)[0] if value else value

    @model_validator(mode="after")
    def _cluster_identity(self) -> WorkerSettings:
        # Fixed once per process, so the start-up log shows what the worker registers as.
        port = self.listen.port
        self.CORRAL_WORKER_ID = self.CORRAL_WORKER_ID or f"{socket.gethostname()}-{port}-{secrets.token_hex(3)}"
        self.CORRAL_WORKER_URL = self.CORRAL_WORKER_URL or advertised_url(self.listen)
        return self

    @property
    def max_loaded_models(self) -> int:
        return self.OLLAMA_MAX_LOADED_MODELS or 3

    @property
    def default_num_ctx(self) -> int:
        return self.OLLAMA_CONTEXT_LENGTH or 4096

    @property
    def num_threads(self) -> int:
        return self.CORRAL_NUM_THREADS or _cpu_count()

    @property
    def worker_memory(self) -> int | None:
        """CORRAL_WORKER_MEMORY in bytes; None: detect it."""
        return parse_size(self.CORRAL_WORKER_MEMORY) if self.CORRAL_WORKER_MEMORY else None

    @property
    def worker_labels(self) -> dict[str, str]:
        return parse_labels(self.CORRAL_WORKER_LABELS)
