"""Where a model that is resident nowhere (or needs another replica) gets loaded
(docs/architecture.md, "Placement": load, memory fit, LRU eviction). Pure: state in, decision
out, so it is tested without Redis.

A worker fits a model when it holds fewer than ``max_loaded`` models and its free memory
(``memory_total`` minus what its placements take) covers the model's estimate. Among workers
that fit, the one with the most free memory wins (spreading load). When none fits, the
least-recently-used *idle* placements (nothing in flight: the in-flight guard) are evicted:
each worker's smallest LRU-ordered eviction set that makes room is computed, and the worker
whose set starts with the globally least recently used model is chosen (true LRU). When
even that is impossible (everything busy), there is no plan and the request waits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from corral.cluster.workers import STATE_READY, WorkerInfo
from corral.router.state import Placement


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
        w for w in workers
        if w.state == STATE_READY and w.id not in exclude
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
