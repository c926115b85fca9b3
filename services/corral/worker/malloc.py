"""The worker's process memory under glibc's allocator: fewer arenas, and free pages given back.

A worker loads and unloads models for as long as it runs, and each model's llama.cpp context
allocates and frees large buffers. glibc gives each thread that allocates an arena of its own
(up to 8 per core: an engine thread per loaded model, llama.cpp's and numpy's pools, the event
loop's helpers), and what an unloaded model freed stays spread over those arenas. With two
arenas, and the heap trimmed after each unload, that memory goes back to the system: in a
load/unload churn test (two models alternating on one worker) the plateau went from ~800 to
~740 MiB. The soak (``loadtest/reports/soak.md``) holds every worker within 2% from its fifth
minute to its thirtieth. Elsewhere than glibc, both do nothing.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

_M_ARENA_MAX = -8  # mallopt's parameter
ARENAS = 2

_mallopt: Any = None
_malloc_trim: Any = None
try:
    _libc = ctypes.CDLL(None)
    _mallopt, _malloc_trim = _libc.mallopt, _libc.malloc_trim
except (OSError, AttributeError):  # pragma: no cover - not glibc
    pass


def limit_arenas() -> None:
    """Two malloc arenas for the process (unless MALLOC_ARENA_MAX says otherwise); call it before
    the heavy imports start their threads."""
    if _mallopt is not None and "MALLOC_ARENA_MAX" not in os.environ:
        _mallopt(_M_ARENA_MAX, ARENAS)


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (after a model is unloaded)."""
    if _malloc_trim is not None:
        _malloc_trim(0)
