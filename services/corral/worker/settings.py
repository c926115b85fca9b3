"""The worker's one settings object. Only this module reads the worker's environment."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator

from corral.api.durations import parse_env_keep_alive
from corral.settings import CommonSettings, check_duration, default_models_dir
from corral.store.registry import parse_registry_url


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


class WorkerSettings(CommonSettings):
    OLLAMA_MODELS: Path = Field(default_factory=default_models_dir, description="model store (Ollama layout)")
    OLLAMA_NUM_PARALLEL: int = Field(1, ge=1, le=64, description="concurrent requests per loaded model")
    OLLAMA_MAX_LOADED_MODELS: int = Field(0, ge=0, le=64, description="0 means 3 (Ollama's CPU default)")
    OLLAMA_MAX_QUEUE: int = Field(512, ge=1, description="requests waiting per model before 503")
    OLLAMA_CONTEXT_LENGTH: int = Field(0, ge=0, description="default num_ctx; 0 means 4096")
    OLLAMA_LOAD_TIMEOUT: str = Field("5m", description="a load that takes longer fails")
    OLLAMA_NOPRUNE: bool = Field(False, description="keep unreferenced blobs")
    OLLAMA_FLASH_ATTENTION: bool = False
    OLLAMA_KV_CACHE_TYPE: str = Field("f16", pattern=r"^(f16|q8_0|q4_0)$")
    CORRAL_NUM_THREADS: int = Field(0, ge=0, description="llama.cpp threads; 0 means every usable core")
    CORRAL_REGISTRY_URL: str = Field(
        "", description="the cluster's model registry; set, OLLAMA_MODELS becomes a cache of it"
    )
    CORRAL_CACHE_MAX_BYTES: int = Field(0, ge=0, description="bound on the blob cache; 0 means unbounded")

    @field_validator("OLLAMA_MODELS", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("CORRAL_REGISTRY_URL")
    @classmethod
    def _check_registry_url(cls, value: str) -> str:
        if value:
            parse_registry_url(value)
        return value

    @field_validator("OLLAMA_LOAD_TIMEOUT")
    @classmethod
    def _check_load_timeout(cls, value: str) -> str:
        return check_duration(value)

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
    def load_timeout_seconds(self) -> float:
        seconds = parse_env_keep_alive(self.OLLAMA_LOAD_TIMEOUT)
        # <= 0 means no limit in Ollama.
        return float("inf") if seconds <= 0 else seconds
