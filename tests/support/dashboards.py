"""The Grafana dashboards (helm/corral/dashboards/*.json) as data, and checking their queries
against a real Prometheus: every panel's every query must return data after a short load.

Also a real Prometheus for tests: ``Prometheus`` runs Debian's ``prometheus`` on loopback
scraping given targets, with bounded start and stop.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx

from corral.supervise import Child, Probe, free_port

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "helm" / "corral" / "dashboards"
DATASOURCE_UID = "prometheus"  # deploy/grafana/provisioning/datasources/prometheus.yml
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} [{self.ref}]: {self.expr}"

    def promql(self, rate_interval: str) -> str:
        """The expression as Grafana sends it, with its one macro filled in."""
        return self.expr.replace("$__rate_interval", rate_interval)


def load() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows carry their panels inside
    return [p for p in out if p.get("type") != "row"]


# Plots only a cluster with API keys on has data for (tests/integration/test_auth.py checks it).
KEYS_ONLY = frozenset({"tenants.json"})


def queries(names: Iterable[str] | None = None) -> list[Query]:
    """Every panel's queries, of the dashboards ``names`` (default: all)."""
    wanted = set(names) if names is not None else None
    return [
        Query(name, panel["title"], target["refId"], target["expr"])
        for name, dashboard in load().items()
        if wanted is None or name in wanted
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads: identifiers left once label lists (``by (...)``),
    matchers (``{...}``), ranges (``[...]``), strings, numbers and function calls are taken out."""
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", expr)
    words = re.findall(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr)
    return {w for w in words if w not in ("and", "or", "unless", "bool", "offset")}


# -- evaluating against Prometheus -----------------------------------------------------------


def evaluate(prometheus_url: str, query: Query, rate_interval: str) -> tuple[list, str]:
    """(result vector, problem); the problem is '' when the query returned at least one finite value."""
    r = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": query.promql(rate_interval)}, timeout=10)
    body = r.json()
    if r.status_code != 200 or body.get("status") != "success":
        return [], f"query failed: {r.status_code} {body.get('error', r.text)}"
    result = body["data"]["result"]
    if not result:
        return result, "no data"
    if not any(math.isfinite(float(sample["value"][1])) for sample in result):
        return result, f"only NaN/Inf: {result}"
    return result, ""


def check_all(
    prometheus_url: str, rate_interval: str, timeout: float, names: Iterable[str] | None = None
) -> dict[str, str]:
    """Polls until every query of the dashboards ``names`` (default: all) returns data (bounded);
    returns {query: problem} left."""
    deadline = time.monotonic() + timeout
    pending = {str(q): q for q in queries(names)}
    problems: dict[str, str] = {}
    while True:
        problems = {}
        for key, query in pending.items():
            _, problem = evaluate(prometheus_url, query, rate_interval)
            if problem:
                problems[key] = problem
        pending = {key: pending[key] for key in problems}
        if not pending or time.monotonic() >= deadline:
            return problems
        time.sleep(2)


def targets(prometheus_url: str) -> list[dict]:
    r = httpx.get(f"{prometheus_url}/api/v1/targets", params={"state": "active"}, timeout=10)
    r.raise_for_status()
    return r.json()["data"]["activeTargets"]


# -- a Prometheus on loopback ----------------------------------------------------------------


class Prometheus:
    """Debian's ``prometheus`` on 127.0.0.1, scraping ``jobs`` ({job: ["host:port", ...]})."""

    def __init__(self, tmp: Path, jobs: dict[str, list[str]], scrape_interval: str = "1s") -> None:
        binary = shutil.which("prometheus") or shutil.which("prometheus", path="/usr/bin:/usr/sbin")
        if binary is None:
            raise RuntimeError("prometheus not found (Debian: apt-get install prometheus)")
        tmp.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                       "evaluation_interval": scrape_interval},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": hosts}]} for job, hosts in jobs.items()],
        }
        (tmp / "prometheus.yml").write_text(json.dumps(config, indent=2))  # YAML is a superset of JSON
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "prometheus.log"
        self.process = Child("prometheus", [binary, f"--config.file={tmp / 'prometheus.yml'}",
                                            f"--storage.tsdb.path={tmp / 'data'}",
                                            f"--web.listen-address=127.0.0.1:{self.port}"],
                             log=self.log_path, ready=Probe("127.0.0.1", self.port, "/-/ready"), watched=True)
        self.process.start(append=False)
        try:
            self.process.wait_ready(START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        return self.process.tail()

    def stop(self) -> None:
        self.process.stop(15)

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
