"""The router's Prometheus metrics, correct under gunicorn with several worker processes.

Two kinds, rendered together on ``/metrics``:

- Events (requests, first-byte latency, rejections, loads, evictions, placements, retries)
  are counted where they happen. Under gunicorn every process counts its own, so they go
  through prometheus_client's multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set
  (``corral router`` sets it up): a scrape of any process sums them all.
- Cluster state (queue depth per model, workers by state, models placed) is read from Redis
  at scrape time, so it is the same whichever router or process answers.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

_TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class RouterMetrics:
    def __init__(self) -> None:
        # In multiprocess mode the values live in files; this registry only names them.
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "corral_router_requests_total", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "corral_router_request_seconds", "HTTP request duration", ["route"], buckets=_REQUEST_BUCKETS, registry=r
        )
        self.ttfb = Histogram(
            "corral_router_time_to_first_token_seconds",
            "From request arrival to the first byte of the worker's answer (the first token of a stream)",
            ["route"],
            buckets=_TTFB_BUCKETS,
            registry=r,
        )
        self.rejections = Counter(
            "corral_router_rejections_total", "Requests refused (queue_full, no_workers, redis)", ["reason"], registry=r
        )
        self.loads = Counter(
            "corral_router_loads_total", "Models placed on a worker to load (first, replica)", ["kind"], registry=r
        )
        self.evictions = Counter(
            "corral_router_evictions_total",
            "Models unloaded (lru, keep_alive, request, worker_lost)",
            ["reason"],
            registry=r,
        )
        self.placements = Counter(
            "corral_router_placements_total",
            "Requests given a slot (resident, loaded; offline: from the last known placements while Redis was away)",
            ["kind"],
            registry=r,
        )
        # With API keys on: by key *name* (never the secret). outcome: ok, error (an answer
        # of 4xx/5xx), rejected (401/403/429 before any work).
        self.key_requests = Counter(
            "corral_router_key_requests_total",
            "Inference requests made with an API key, by key name, model and outcome (ok, error)",
            ["key", "model", "outcome"],
            registry=r,
        )
        self.key_rejections = Counter(
            "corral_router_key_rejections_total",
            "Requests refused for a key (rpm, tpm, flight: 429; model, admin: 403; unknown: 401)",
            ["key", "reason"],
            registry=r,
        )
        self.retries = Counter(
            "corral_router_retries_total",
            "Requests placed again after a worker failed before the first byte",
            registry=r,
        )

        self.direct = Counter(
            "corral_router_direct_total",
            "Inference requests nginx streamed from the worker: redirected (handed to nginx), ended (the worker "
            "reported the end), retried (nginx sent it back: worker unreachable or 502-504), lost (no report)",
            ["event"],
            registry=r,
        )

    def start_at_zero(self, routes: list[str]) -> None:
        """Create the series every dashboard plots, at 0: a series whose first scrape already
        holds counts shows no rate until the next one, so a fresh router would look idle."""
        for route in routes:
            self.requests.labels(route, "200")
            self.request_seconds.labels(route)
            self.ttfb.labels(route)
        for reason in ("queue_full", "no_workers", "redis"):
            self.rejections.labels(reason)
        for kind in ("first", "replica"):
            self.loads.labels(kind)
        for reason in ("lru", "keep_alive", "request", "worker_lost"):
            self.evictions.labels(reason)
        for kind in ("resident", "loaded", "offline"):
            self.placements.labels(kind)
        for event in ("redirected", "ended", "retried", "lost"):
            self.direct.labels(event)

    def render(self, cluster: dict[str, Any]) -> bytes:
        """Event metrics (all processes) plus cluster gauges from ``cluster`` (read from Redis now)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            events = CollectorRegistry()
            MultiProcessCollector(events)
        else:
            events = self.registry
        gauges = CollectorRegistry()
        gauges.register(_ClusterGauges(cluster))
        return generate_latest(events) + generate_latest(gauges)


class _ClusterGauges:
    """Gauges computed for one scrape (plain metric families: nothing touches the
    multiprocess files, which are for counters that every process adds to)."""

    def __init__(self, cluster: dict[str, Any]) -> None:
        self.cluster = cluster

    def collect(self):
        queue = GaugeMetricFamily(
            "corral_router_queue_depth", "Requests waiting for a model, cluster-wide", labels=["model"]
        )
        queues = self.cluster.get("queues", {})
        for model, depth in queues.items():
            queue.add_metric([model], depth)
        for model in self.cluster.get("placed", {}):
            if model not in queues:  # placed, nobody waiting: 0, not a missing series
                queue.add_metric([model], 0)
        yield queue
        workers = GaugeMetricFamily("corral_router_workers", "Live workers by state", labels=["state"])
        for state in ("ready", "draining"):
            workers.add_metric([state], self.cluster.get("workers", {}).get(state, 0))
        yield workers
        placed = GaugeMetricFamily("corral_router_models_placed", "Placements per model (replicas)", labels=["model"])
        for model, count in self.cluster.get("placed", {}).items():
            placed.add_metric([model], count)
        yield placed
        yield GaugeMetricFamily(
            "corral_router_redis_up",
            "1 when Redis answered this scrape",
            value=1 if self.cluster.get("redis_up", True) else 0,
        )
