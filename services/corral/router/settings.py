"""The router's one settings object. Only this module reads the router's environment."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from corral.cluster.redis_client import check_redis_url
from corral.settings import CommonSettings
from corral.store.registry import parse_registry_url


class RouterSettings(CommonSettings):
    REDIS_URL: str = Field("redis://127.0.0.1:6379/0", description="cluster state: workers, placements, queues")
    CORRAL_REGISTRY_URL: str = Field("http://127.0.0.1:5000", description="the cluster's model registry")
    OLLAMA_MAX_QUEUE: int = Field(512, ge=1, description="requests waiting per model, cluster-wide, before 503")
    OLLAMA_CONTEXT_LENGTH: int = Field(0, ge=0, description="default num_ctx for memory estimates; 0 means 4096")
    CORRAL_CONNECT_TIMEOUT: float = Field(5.0, gt=0, description="seconds to connect to a worker")
    CORRAL_RETRIES: int = Field(2, ge=0, le=10, description="extra workers tried when one fails before the first byte")
    CORRAL_ROUTER_PROCESSES: int = Field(1, ge=1, le=64, description="gunicorn worker processes per router")
    CORRAL_SPOOL_DIR: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "corral-router",
        description="uploads (/api/blobs) are checked here before they go to the registry",
    )
    CORRAL_REPLICATE_AFTER: float = Field(
        1.0, ge=0, description="seconds a request waits on a busy model before another replica is loaded"
    )
    CORRAL_DIRECT_STREAMING: bool = Field(
        False, description="behind Corral's nginx, nginx streams answers straight from workers (docs/architecture.md)"
    )

    CORRAL_AUTH: Literal["off", "keys"] = Field(
        "off", description="keys: every route but / and /api/version needs an API key (docs/sharing.md)"
    )
    CORRAL_KEY_QUEUE_SHARE: float = Field(
        0.5, gt=0, le=1, description="the share of OLLAMA_MAX_QUEUE one key may have in flight"
    )

    @field_validator("CORRAL_AUTH", mode="before")
    @classmethod
    def _auth_off(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) and value else "off"

    @model_validator(mode="after")
    def _keys_need_an_admin_key(self) -> RouterSettings:
        if self.CORRAL_AUTH == "keys" and not self.CORRAL_ADMIN_KEY:
            raise ValueError("CORRAL_AUTH=keys needs CORRAL_ADMIN_KEY (at least 16 characters)")
        return self

    @property
    def key_flight_limit(self) -> int:
        """How many inference requests one key may have in flight, cluster-wide."""
        return max(1, int(self.OLLAMA_MAX_QUEUE * self.CORRAL_KEY_QUEUE_SHARE))

    @field_validator("CORRAL_REGISTRY_URL")
    @classmethod
    def _check_registry(cls, value: str) -> str:
        parse_registry_url(value)
        return value

    @field_validator("REDIS_URL")
    @classmethod
    def _check_redis(cls, value: str) -> str:
        return check_redis_url(value)

    @property
    def default_num_ctx(self) -> int:
        return self.OLLAMA_CONTEXT_LENGTH or 4096
