"""Configuration shared by every service: reading Ollama-style environment values.

Each service has exactly one settings object (``corral.worker.settings.WorkerSettings``,
later the router's); this module holds only the pieces they share. Unlike Ollama, a
value that does not parse stops start-up and names the variable instead of silently
falling back to a default.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from corral.api.durations import DurationError, parse_env_keep_alive
from corral.store.registry import parse_mirrors

DEFAULT_PORT = 11434
# The largest request body (blob uploads aside). Ollama has none; this leaves room for a request
# full of base64 images, and nginx in front refuses the same (deploy/nginx/).
DEFAULT_MAX_REQUEST_BODY = "64MiB"

# Size units (CORRAL_WORKER_MEMORY, CORRAL_MAX_REQUEST_BODY): SI (k, M, G, T; "B" optional) and
# binary (Ki, Mi, Gi, Ti; "B" optional).
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)")
_SIZE_UNITS = {"": 1, "b": 1} | {
    prefix + suffix: base**power
    for power, prefix in enumerate("kmgt", 1)
    for suffix, base in (("", 1000), ("b", 1000), ("i", 1024), ("ib", 1024))
}


def parse_size(text: str) -> int:
    """Bytes for ``8GiB``, ``512MB``, ``1.5G``, ``1073741824`` (k/M/G/T are powers of 1000,
    Ki/Mi/Gi/Ti of 1024; a trailing ``B`` and the case of the unit don't matter)."""
    match = _SIZE.fullmatch(text.strip())
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise ValueError(f"expected bytes or a size like 8GiB or 512MB, got {text!r}")
    size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size <= 0:
        raise ValueError(f"must be more than 0 bytes, got {text!r}")
    return size


@dataclass(frozen=True)
class HostPort:
    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_ollama_host(value: str) -> HostPort:
    """OLLAMA_HOST as Ollama reads it: ``[scheme://]host[:port]``, default 127.0.0.1:11434.

    A scheme without a port means 80 or 443; no scheme and no port means 11434.
    """
    value = value.strip().strip("\"'")
    if not value:
        return HostPort("http", "127.0.0.1", DEFAULT_PORT)
    has_scheme = "://" in value
    parts = urlsplit(value if has_scheme else f"http://{value}")
    scheme = parts.scheme or "http"
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid port in {value!r}") from exc
    if port is None:
        port = (443 if scheme == "https" else 80) if has_scheme else DEFAULT_PORT
    # An empty host (":11434") means every interface, as in Ollama.
    return HostPort(scheme, host or "0.0.0.0", port)


def check_duration(value: str) -> str:
    """A validator for duration variables: Go durations or seconds, Ollama's messages."""
    try:
        parse_env_keep_alive(value)
    except DurationError as exc:
        raise ValueError(exc.message) from exc
    return value


@functools.lru_cache(maxsize=8)
def derived_cluster_token(admin_key: str) -> str:
    """The cluster token routers and workers agree on when only CORRAL_ADMIN_KEY is given: not
    the key itself, so the header between them never carries it. Cached: routers ask for it with
    every request they forward."""
    if not admin_key:
        return ""
    return hmac.new(admin_key.encode(), b"corral cluster token", hashlib.sha256).hexdigest()


def check_secret(value: str, *, minimum: int = 16) -> str:
    """A shared secret (a key, a token): empty, or at least ``minimum`` characters of printable
    ASCII without spaces, so that it travels in an HTTP header unchanged."""
    if value and (len(value) < minimum or not all("!" <= c <= "~" for c in value)):
        raise ValueError(f"must be at least {minimum} characters of printable ASCII, without spaces")
    return value


def _clean(value: Any) -> Any:
    # Ollama trims spaces and quotes from every variable.
    if isinstance(value, str):
        return value.strip().strip("\"'")
    return value


class CommonSettings(BaseSettings):
    """Variables every Corral service reads, with Ollama's names and defaults."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=True, extra="ignore")

    OLLAMA_HOST: str = "127.0.0.1:11434"
    OLLAMA_ORIGINS: str = ""
    OLLAMA_KEEP_ALIVE: str = "5m"
    # A model load that takes longer fails (on a router: the first byte of a cold request).
    OLLAMA_LOAD_TIMEOUT: str = "5m"
    OLLAMA_DEBUG: str = ""
    CORRAL_LOG_FORMAT: str = "text"
    # Air-gapped sites: pulls from an upstream host go to its mirror ("host=url,host=url").
    CORRAL_REGISTRY_MIRRORS: str = ""
    # On SIGTERM a service stops taking requests and lets those in flight finish, this long at most.
    CORRAL_DRAIN_TIMEOUT: str = "30s"
    # The largest request body (blob uploads aside): more gets 413.
    CORRAL_MAX_REQUEST_BODY: str = DEFAULT_MAX_REQUEST_BODY
    # Routers send the cluster token to workers with every request; a worker that has one
    # refuses requests without it, so only routers reach workers (``cluster_token``).
    CORRAL_CLUSTER_TOKEN: str = ""
    # The bootstrap admin key (routers, CORRAL_AUTH=keys); without CORRAL_CLUSTER_TOKEN, the
    # cluster token is derived from it, so one secret secures a compose stack.
    CORRAL_ADMIN_KEY: str = ""

    @field_validator("*", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return _clean(value)

    @field_validator("OLLAMA_HOST")
    @classmethod
    def _check_host(cls, value: str) -> str:
        parse_ollama_host(value)
        return value

    @field_validator("OLLAMA_KEEP_ALIVE", "OLLAMA_LOAD_TIMEOUT")
    @classmethod
    def _check_durations(cls, value: str) -> str:
        return check_duration(value)

    @field_validator("CORRAL_CLUSTER_TOKEN", "CORRAL_ADMIN_KEY")
    @classmethod
    def _check_secrets(cls, value: str) -> str:
        return check_secret(value)

    @property
    def cluster_token(self) -> str:
        """CORRAL_CLUSTER_TOKEN, else one derived from CORRAL_ADMIN_KEY, else '' (workers open)."""
        return self.CORRAL_CLUSTER_TOKEN or derived_cluster_token(self.CORRAL_ADMIN_KEY)

    @field_validator("CORRAL_DRAIN_TIMEOUT")
    @classmethod
    def _check_drain_timeout(cls, value: str) -> str:
        if math.isinf(parse_env_keep_alive(check_duration(value))):
            raise ValueError("must not be negative: the drain is bounded")
        return value

    @field_validator("CORRAL_MAX_REQUEST_BODY")
    @classmethod
    def _check_max_request_body(cls, value: str) -> str:
        parse_size(value)
        return value

    @property
    def max_request_body(self) -> int:
        return parse_size(self.CORRAL_MAX_REQUEST_BODY)

    @property
    def drain_timeout_seconds(self) -> float:
        return parse_env_keep_alive(self.CORRAL_DRAIN_TIMEOUT)

    @property
    def load_timeout_seconds(self) -> float:
        seconds = parse_env_keep_alive(self.OLLAMA_LOAD_TIMEOUT)
        return math.inf if seconds <= 0 else seconds  # <= 0: no limit, as in Ollama

    @field_validator("CORRAL_LOG_FORMAT")
    @classmethod
    def _check_log_format(cls, value: str) -> str:
        if value not in ("text", "json"):
            raise ValueError("must be 'text' or 'json'")
        return value

    @field_validator("CORRAL_REGISTRY_MIRRORS")
    @classmethod
    def _check_mirrors(cls, value: str) -> str:
        parse_mirrors(value)
        return value

    @property
    def registry_mirrors(self) -> dict[str, str]:
        return parse_mirrors(self.CORRAL_REGISTRY_MIRRORS)

    @property
    def listen(self) -> HostPort:
        return parse_ollama_host(self.OLLAMA_HOST)

    @property
    def keep_alive_seconds(self) -> float:
        return parse_env_keep_alive(self.OLLAMA_KEEP_ALIVE)

    @property
    def log_level(self) -> int:
        # OLLAMA_DEBUG: 1 debug, 2 trace (we have no trace level; debug covers it).
        return logging.DEBUG if self.OLLAMA_DEBUG not in ("", "0", "false") else logging.INFO

    def redacted(self) -> dict[str, Any]:
        """The effective configuration for the start-up log line, secrets hidden."""
        shown = {}
        for key, value in self.model_dump().items():
            secret = any(word in key for word in ("PASSWORD", "TOKEN", "SECRET", "KEY"))
            if isinstance(value, str) and "://" in value and ("@" in value or "password=" in value):
                secret = True  # credentials in a URL (a sentinel's password is in its query)
            shown[key] = "***" if secret and value else value
        return shown


def default_models_dir() -> Path:
    return Path(os.path.expanduser("~/.ollama/models"))
