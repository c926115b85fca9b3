"""The test model with a projector: its name, two images it answers differently, and its making."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import httpx

from tests.support.images import png
from tests.support.projector import write_projector

MODEL = "smolvision:latest"
PROMPT = "What color is this?"  # one the tiny model answers differently for the two images
RED = png(48, 48, lambda x, y: (255, 4 * x % 256, 0))
CHECKS = png(48, 48, lambda x, y: (0, 0, 255) if (x // 8 + y // 8) % 2 else (255, 255, 255))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def create_vision_model(url: str, gguf_digest: str, directory: Path) -> Path:
    """Creates MODEL as a user would: the projector uploaded beside the test model's GGUF, then
    /api/create from the two files (the projector is recognised by its header). Returns the
    projector's file."""
    projector = write_projector(directory / "mmproj.gguf")
    digest = "sha256:" + hashlib.sha256(projector.read_bytes()).hexdigest()
    with httpx.Client(base_url=url, timeout=120) as client:
        r = client.post(f"/api/blobs/{digest}", content=projector.read_bytes())
        assert r.status_code in (200, 201), r.text
        files = {"model.gguf": gguf_digest, "mmproj.gguf": digest}
        r = client.post("/api/create", json={"model": MODEL, "files": files, "stream": False})
        assert r.status_code == 200, r.text
    return projector
