"""The router's placement policy, pure: state in, decision out, so it is tested without Redis
(docs/architecture.md, "Placement").

- **Where a new copy of a model loads** (``plan_load``). A worker fits a model when it holds
  fewer than ``max_loaded`` models and its free memory (``memory_total`` minus what its
  placements take) covers the model's estimate (``ModelSize``: weights plus a KV cache per
  slot). Among workers that fit, the one with the most free memory wins (spreading load). When
  none fits, the least-recently-used *idle* placements (nothing in flight) are evicted: each
  worker's smallest LRU-ordered eviction set that makes room is computed, and the worker whose
  set starts with the globally least recently used model is chosen (true LRU). When even that
  is impossible (everything busy), there is no plan and the request waits. ``could_hold`` and
  ``too_big`` say when no worker could ever hold it (Ollama's memory error).
- **When an idle placement expires** (``expires_at``): its keep-alive after the last request;
  ``reaper.py`` unloads it then.
- **Which conversation a request continues** (``affinity_key``).
- **Which worker serves a request for a placed model**: the fewest requests in flight, then the
  worker that last served the conversation, then the least recently used. That order is decided
  inside Redis, where the slot is taken in the same step (``state._ACQUIRE``), and
  ``tests/unit/test_slot_choice.py`` holds it case by case.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corral.api.errors import CorralError
from corral.cluster.workers import STATE_READY, WorkerInfo, now_ms
from corral.router.state import NEVER, Placement


@dataclass
class LoadPlan:
    worker: WorkerInfo
    evict: list[Placement] = field(default_factory=list)


def plan_load(
    model: str,
    size: int | Callable[[WorkerInfo], int],
    workers: list[WorkerInfo],
    placements: list[Placement],
    *,
    exclude: frozenset[str] | set[str] = frozenset(),
) -> LoadPlan | None:
    """``size`` may depend on the worker (its KV cache grows with its OLLAMA_NUM_PARALLEL)."""
    size_on = size if callable(size) else (lambda _worker: size)
    by_worker: dict[str, list[Placement]] = {}
    for placement in placements:
        by_worker.setdefault(placement.worker, []).append(placement)
    candidates = [
        w
        for w in workers
        if w.state == STATE_READY
        and w.id not in exclude
        and all(p.model != model for p in by_worker.get(w.id, []))
        and (not w.memory_total or size_on(w) <= w.memory_total)
    ]
    fitting = [w for w in candidates if _fits(w, by_worker.get(w.id, []), size_on(w))]
    if fitting:
        return LoadPlan(max(fitting, key=lambda w: (_free(w, by_worker.get(w.id, [])), -len(by_worker.get(w.id, [])))))
    best: tuple[int, LoadPlan] | None = None
    for worker in candidates:
        held = by_worker.get(worker.id, [])
        idle = sorted((p for p in held if p.in_flight == 0), key=lambda p: p.last_used)
        remaining = list(held)
        evict: list[Placement] = []
        for placement in idle:
            if _fits(worker, remaining, size_on(worker)):
                break
            evict.append(placement)
            remaining.remove(placement)
        if evict and _fits(worker, remaining, size_on(worker)):
            oldest = evict[0].last_used
            if best is None or oldest < best[0]:
                best = (oldest, LoadPlan(worker, evict))
    return best[1] if best else None


def _free(worker: WorkerInfo, held: list[Placement]) -> int:
    if not worker.memory_total:
        return 1 << 62  # unknown capacity: only the model count limits it
    return worker.memory_total - sum(p.size for p in held)


def _fits(worker: WorkerInfo, held: list[Placement], size: int) -> bool:
    return len(held) < max(1, worker.max_loaded) and _free(worker, held) >= size


@dataclass(frozen=True)
class ModelSize:
    weights: int
    kv_per_sequence: int

    def on(self, worker: WorkerInfo) -> int:
        return self.weights + self.kv_per_sequence * max(1, worker.num_parallel)


def could_hold(worker: WorkerInfo, size: ModelSize) -> bool:
    """Whether the worker could hold the model with everything else unloaded."""
    return not worker.memory_total or size.on(worker) <= worker.memory_total


def too_big(size: ModelSize, workers: list[WorkerInfo]) -> CorralError:
    # Ollama's wording when a model cannot fit the machine at all.
    need = min(size.on(w) for w in workers)
    have = max(w.memory_total for w in workers)
    return CorralError(
        f"model requires more system memory ({need / (1 << 30):.1f} GiB) than is available ({have / (1 << 30):.1f} GiB)"
    )


def expires_at(keep_alive: float | None) -> int:
    if keep_alive is None or math.isinf(keep_alive) or keep_alive < 0:
        return NEVER
    return now_ms() + int(keep_alive * 1000)


AFFINITY_PROMPT_CHARS = 512


def affinity_key(path: str, body: dict[str, Any]) -> str:
    """What identifies a conversation across its turns, hashed ('' when nothing does).

    A chat's next turn repeats its messages so far: everything up to the first user message
    stays the same. A completion's next turn sends the previous one's ``context``; failing
    that, a prompt is known by its beginning (a shared document or instructions)."""
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        upto = next((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"), 0)
        basis: Any = messages[: upto + 1]
    elif isinstance(body.get("context"), list) and body["context"]:
        basis = body["context"][:64]
    elif isinstance(body.get("prompt"), str) and body["prompt"]:
        basis = [body.get("system"), body["prompt"][:AFFINITY_PROMPT_CHARS]]
    else:
        return ""
    try:
        text = json.dumps(basis, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):  # RecursionError: a message nested 10,000 deep
        return ""
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
