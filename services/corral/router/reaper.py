"""Keep-alive expiry and the cluster's housekeeping: what every router does once a second.

Each pass (``Reaper.reap``):
1. gives back slots whose router stopped renewing them (it died mid-request), and renews this
   router's own (``ClusterState.reap_slots``, ``renew``);
2. after a Redis outage, hands Redis what happened meanwhile (``OfflineLeases.reconcile``);
3. drops workers whose lease lapsed, with their placements (not right after an outage: their
   heartbeats failed too, so they get ``REJOIN_GRACE_S`` to beat again);
4. records the cluster as Redis says it, for the next outage (``OfflineLeases.record``);
5. unloads each placement whose keep-alive expired and that runs nothing. Every router runs the
   pass; ``claim_unload`` lets exactly one of them claim each expiry.

Keep-alive is decided here and in ``Dispatcher.finish`` (``keep_alive: 0`` unloads at once);
the expiry time itself comes from ``placement.expires_at``.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from corral.cluster.workers import WORKERS, lapsed_workers, live_workers, now_ms
from corral.router.dispatch import Dispatcher
from corral.router.state import NEVER

logger = logging.getLogger(__name__)

REAP_EVERY_S = 1.0


class Reaper:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.d = dispatcher

    async def run(self) -> None:
        """Pass after pass until cancelled; a Redis outage or a bad pass never stops it."""
        outage = False
        while True:
            try:
                await self.reap()
                if outage:
                    logger.info("redis is back")
                outage = False
            except RedisError as exc:
                self.d.offline.redis_failed(exc)
                if not outage:
                    logger.warning("reaper: redis unavailable: %s", exc)
                outage = True
            except Exception:  # the reaper must outlive any one bad pass
                logger.exception("reaper pass failed")
            await asyncio.sleep(REAP_EVERY_S)

    async def reap(self) -> None:
        """One pass (the module docstring's steps)."""
        d = self.d
        state, offline, metrics = d.state, d.offline, d.metrics
        redis = state.redis
        # First a command that always reaches Redis: while it fails, Redis is still away.
        given_back = await state.reap_slots()
        await state.renew()
        if offline.active or offline.pending or state.unreleased:
            await offline.reconcile(state)
            d.forget_workers()
        if given_back:
            logger.warning("gave back %d slots whose router stopped renewing them", given_back)
        # Right after an outage, workers whose heartbeats failed meanwhile get time to beat again.
        for worker_id in [] if offline.rejoining() else await lapsed_workers(redis):
            logger.warning("worker %s missed its heartbeats: dropping it and its models", worker_id)
            metrics.evictions.labels("worker_lost").inc(len(await state.placements([worker_id])))
            await state.drop_worker(worker_id)
            await redis.zrem(WORKERS, worker_id)
        everyone = await live_workers(redis, lapsed_for_at_most_ms=offline.lease_grace_ms())
        d.seen_workers(everyone)
        by_id = {w.id: w for w in everyone}
        placements = await state.placements(list(by_id))
        offline.record(everyone, placements)
        now = now_ms()
        for placement in placements:
            if placement.expires_at == NEVER or placement.expires_at > now or placement.in_flight:
                continue
            if await state.claim_unload(placement.worker, placement.model, expired_only=True):
                logger.info("keep-alive expired: unloading %s on %s", placement.model, placement.worker)
                metrics.evictions.labels("keep_alive").inc()
                await d.unload(by_id[placement.worker], placement.model)
