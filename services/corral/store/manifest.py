"""The manifest format Ollama stores models in (an OCI image manifest, Docker's v2 schema):
its media types, digests, and the exact bytes Corral writes."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from corral.api.errors import BadRequestError

MEDIA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_PROJECTOR = "application/vnd.ollama.image.projector"
MEDIA_ADAPTER = "application/vnd.ollama.image.adapter"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_PROMPT = "application/vnd.ollama.image.prompt"  # legacy name of a template layer
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_MESSAGES = "application/vnd.ollama.image.messages"
MEDIA_LICENSE = "application/vnd.ollama.image.license"

_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


def digest_hex(digest: str) -> str:
    """The lower-case hex of a ``sha256:<hex>``/``sha256-<hex>`` digest, else 400."""
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if match is None:
        raise BadRequestError("invalid digest format")
    return match.group(1).lower()


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file, as a client names the blob it uploads (``/api/blobs``)."""
    with path.open("rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def manifest_digests(manifest: dict) -> set[str]:
    digests = set()
    for layer in [manifest.get("config") or {}, *(manifest.get("layers") or [])]:
        match = _DIGEST.fullmatch(str(layer.get("digest", "")))
        if match:
            digests.add(match.group(1).lower())
    return digests


def compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def manifest_size(manifest: dict) -> int:
    layers = manifest.get("layers") or []
    return sum(int(layer.get("size", 0)) for layer in layers) + int((manifest.get("config") or {}).get("size", 0))
