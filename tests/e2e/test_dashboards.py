"""The Grafana dashboards against real metrics, without Docker: a ``corral up`` cluster (two
routers, two workers) scraped by a real Prometheus on loopback, a short load through nginx with
the real clients, then every query of every panel must return data (finite values).

Grafana's ``$__rate_interval`` is filled with a window that covers the whole load, as a person
opening the dashboard right after it would see it. The compose test repeats this check against
the stack's own Prometheus (service discovery included)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import dashboards
from tests.support.answers import wait_for
from tests.support.cluster import Cluster
from tests.support.load import short_load
from tests.support.model import MODEL_NAME

pytestmark = pytest.mark.integration

RATE_WINDOW = "5m"
DATA_TIMEOUT_S = 30.0


def test_every_dashboard_query_returns_data_after_a_short_load(tmp_path: Path, gguf_path: Path, gguf_digest: str):
    with Cluster(tmp_path / "cluster", workers=2, routers=2) as cluster:
        cluster.import_models(gguf_path, gguf_digest)
        jobs = {
            "router": [url.removeprefix("http://") for url in cluster.router_urls()],
            "worker": [w["url"].removeprefix("http://") for w in cluster.workers()],
        }
        assert len(jobs["router"]) == 2 and len(jobs["worker"]) == 2, jobs
        with dashboards.Prometheus(tmp_path / "prometheus", jobs) as prometheus:
            # Every target scraped once before the load. Prometheus needs a few seconds on 2 busy
            # cores before its first scrape, and the load can be over by then: a counter first
            # seen at its final value shows no increase to rate().
            targets = len(jobs["router"]) + len(jobs["worker"])
            wait_for("Prometheus to scrape every target", lambda: [
                t["health"] for t in dashboards.targets(prometheus.url)].count("up") == targets,
                timeout=60, interval=0.5)
            short_load(cluster.endpoint, MODEL_NAME)
            names = set(dashboards.load()) - dashboards.KEYS_ONLY  # keys are off here
            problems = dashboards.check_all(prometheus.url, RATE_WINDOW, DATA_TIMEOUT_S, names)
            down = [t["scrapeUrl"] for t in dashboards.targets(prometheus.url) if t["health"] != "up"]
    assert not down, f"targets not scraped: {down}"
    assert not problems, "dashboard queries without data after the load:\n" + "\n".join(
        f"  {query}\n      -> {problem}" for query, problem in problems.items())
