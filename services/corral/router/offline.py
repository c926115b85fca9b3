"""Serving while Redis is away: the router's last known cluster, and the slots it gives out alone.

Redis is a dependency, not a single point of failure for serving (docs/architecture.md, "Redis
outage"). Every reaper pass (once a second) records what Redis said: the live workers and where
each model is placed. When Redis stops answering, requests for models placed somewhere go on
from that record:

- a slot is taken here, on the replica with the fewest of this router's own requests (other
  routers cannot be asked; a worker queues what exceeds its slots, bounded by its
  ``OLLAMA_MAX_QUEUE``);
- a model placed nowhere cannot be loaded (the load lock and the placements live in Redis):
  503 ``cluster state unavailable``, as before;
- the record's workers are used as they were, leases or not: a worker that died meanwhile
  fails its requests, which are retried on another replica as always.

When Redis answers again (``reconcile``), the slots still running are taken in Redis (so other
routers count them and the reaper unloads nothing under them), and each placement used
meanwhile gets its last use and keep-alive expiry, as a normal release would have set them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from corral.cluster.workers import STATE_READY, WorkerInfo
from corral.router.state import NEVER, ClusterState, Placement

logger = logging.getLogger(__name__)

# After an outage, workers whose lease lapsed meanwhile are given this long to heartbeat again
# before the reaper drops them and their placements (their beats failed while Redis was away).
REJOIN_GRACE_S = 15.0


@dataclass
class LastKnown:
    """What Redis last said: the live workers and the placements on them."""

    workers: list[WorkerInfo] = field(default_factory=list)
    placements: list[Placement] = field(default_factory=list)
    at: float = 0.0  # time.monotonic() of the reading; 0: never


class OfflineLeases:
    def __init__(self) -> None:
        self.known = LastKnown()
        self.since: float | None = None  # monotonic start of the current outage; None: Redis answers
        self.back_at = 0.0  # monotonic end of the last outage
        self._running: dict[tuple[str, str], int] = {}  # (worker, model) -> slots taken here, not in Redis
        self._used: dict[tuple[str, str], int] = {}  # (worker, model) -> the latest keep-alive expiry set here

    @property
    def active(self) -> bool:
        return self.since is not None

    @property
    def pending(self) -> bool:
        """Something taken here is not in Redis yet (a slot still running, a use to record)."""
        return bool(self._running or self._used)

    def record(self, workers: list[WorkerInfo], placements: list[Placement]) -> None:
        self.known = LastKnown(list(workers), list(placements), time.monotonic())

    def redis_failed(self, error: Exception) -> None:
        if self.since is None:
            self.since = time.monotonic()
            logger.warning(
                "redis unavailable (%s): serving placed models from the last known placements (%.1f s old)",
                error,
                self.since - self.known.at if self.known.at else float("inf"),
            )

    def rejoining(self) -> bool:
        """Within the grace after an outage, when lapsed workers are not dropped yet."""
        return self.active or time.monotonic() - self.back_at < REJOIN_GRACE_S

    def lease_grace_ms(self) -> int:
        """How long ago a worker's lease may have run out for it to count as live now: the grace
        while rejoining, else none."""
        return int(REJOIN_GRACE_S * 1000) if self.rejoining() else 0

    # -- while Redis is away

    def workers(self) -> list[WorkerInfo]:
        return list(self.known.workers)

    def lease(self, model: str, exclude: set[str]) -> WorkerInfo | None:
        """A slot on a replica of ``model`` the record knows, or None (placed nowhere known)."""
        holders = {p.worker for p in self.known.placements if p.model == model}
        candidates = [
            w for w in self.known.workers if w.id in holders and w.id not in exclude and w.state == STATE_READY
        ]
        if not candidates:
            return None
        chosen = min(candidates, key=lambda w: self._running.get((w.id, model), 0))
        key = (chosen.id, model)
        self._running[key] = self._running.get(key, 0) + 1
        return chosen

    def release(self, worker: str, model: str, expires_at: int) -> bool:
        """Give back a slot taken here; False when there is none (it is in Redis)."""
        key = (worker, model)
        if not self._running.get(key):
            return False
        self._forget(key)
        seen = self._used.get(key)
        self._used[key] = NEVER if NEVER in (seen, expires_at) else max(seen or 0, expires_at)
        return True

    # -- when Redis is back

    async def reconcile(self, state: ClusterState) -> None:
        """Hand what happened meanwhile to Redis: running slots, then last uses and expiries."""
        if self.since is not None:
            logger.info(
                "redis is back after %.1f s: reconciling %d running and %d used placements",
                time.monotonic() - self.since,
                sum(self._running.values()),
                len(self._used),
            )
            self.since = None
            self.back_at = time.monotonic()
        # Slots whose release failed are given back; slots this router held in Redis before the
        # outage may have lapsed meanwhile (and been given back by a reaper): their requests still run.
        await state.release_pending()
        await state.restore_held()
        for key in list(self._running):
            for _ in range(self._running.get(key, 0)):
                slot = await state.adopt(*key)
                if slot is None:
                    break  # no such placement any more: its requests give their slots back here
                if self._running.get(key, 0) > 0:  # the request still runs: its slot is Redis's now
                    self._forget(key)
                    state.hold(key[0], key[1], slot)
                else:
                    await state.drop_slot(slot)
        used, self._used = self._used, {}
        for (worker, model), expires_at in used.items():
            await state.touch(worker, model, expires_at)

    def _forget(self, key: tuple[str, str]) -> None:
        running = self._running.get(key, 0)
        if running <= 1:
            self._running.pop(key, None)
        else:
            self._running[key] = running - 1
