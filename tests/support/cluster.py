"""A whole Corral cluster on loopback for tests: ``corral up`` as a subprocess, no mocks.

``Cluster`` runs ``python -m corral.cli up`` (Redis, the registry, workers, routers, nginx:
the real programs) on a free port under a watchdog shell (``corral.supervise``):
``stop()`` sends SIGTERM (corral up stops its children front to back) and the whole cluster
goes when the test process dies, even by SIGKILL. Tests find the processes in /proc (to
SIGKILL a worker, a router or Redis): corral up's children each lead a process group, and
corral up itself carries ``CORRAL_TEST_CLUSTER=<token>``, unique to the cluster.

Waits are bounded everywhere: start-up, stop, every poll.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from corral.supervise import Child, ProcInfo, all_processes, read_proc
from tests.support.answers import wait_for
from tests.support.model import MODEL_NAME
from tests.support.servers import free_port, import_model

T = TypeVar("T")
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
REPO = Path(__file__).resolve().parents[2]


class Cluster:
    """``corral up --workers N --routers R`` in ``tmp``; ``endpoint`` is nginx in front of the routers."""

    def __init__(self, tmp: Path, *, workers: int = 1, routers: int = 1, env: dict[str, str] | None = None,
                 redis_url: str = "") -> None:
        self.tmp = tmp
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.data_dir = tmp / "data"
        self.logs = self.data_dir / "logs"
        self.token = uuid.uuid4().hex
        self.port = free_port()
        self.up_log = tmp / "corral-up.log"
        self.env = {
            **os.environ,
            "OLLAMA_HOST": "127.0.0.1",
            "CORRAL_NUM_THREADS": "1",
            **(env or {}),
            "CORRAL_TEST_CLUSTER": self.token,
        }
        self._extra: list[Child] = []  # what the tests started (a restarted Redis)
        self._groups: set[tuple[int, int]] = set()  # (pgid, its leader's start time) of corral up's children
        command = [
            sys.executable, "-m", "corral.cli", "up", "--port", str(self.port), "--workers", str(workers),
            "--routers", str(routers), "--data-dir", str(self.data_dir),
        ] + (["--redis-url", redis_url] if redis_url else [])
        self.process = Child("corral-up-watchdog", command, env=self.env, log=self.up_log, watched=True, cwd=REPO)
        self.process.start(append=False)
        self._finalizer = weakref.finalize(self, _stop_cluster, self.process, self._extra, self._groups)
        try:
            self.endpoint = self._wait_ready()
            self.processes()
        except BaseException:
            self._finalizer()
            raise

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for line in self.up_log.read_text(errors="replace").splitlines():
                if line.startswith("{") and '"endpoint"' in line:
                    return json.loads(line)["endpoint"]
            if not self.process.alive():
                raise RuntimeError(f"corral up exited with {self.process.exit_code}:\n{self.process.tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"corral up not ready in {START_TIMEOUT_S}s:\n{self.process.tail()}")

    # -- stopping

    def stop(self) -> None:
        self._finalizer()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.endpoint, timeout=timeout)

    def get(self, path: str, timeout: float = 10.0) -> httpx.Response:
        return httpx.get(self.endpoint + path, timeout=timeout)

    def post(self, path: str, body: dict, timeout: float = 60.0) -> httpx.Response:
        return httpx.post(self.endpoint + path, json=body, timeout=timeout)

    def import_models(self, gguf_path: Path, digest: str, variants: list[str] = (), *,
                      headers: dict[str, str] | None = None) -> None:
        """The test model as ``smollm2:135m``, plus distinct models made from it (own system prompts)."""
        import_model(self.endpoint, gguf_path, digest, headers=headers)
        for i, name in enumerate(variants):
            r = httpx.post(self.endpoint + "/api/create", json={
                "model": name, "from": MODEL_NAME, "system": f"You are assistant number {i + 1}.", "stream": False,
            }, headers=headers, timeout=120)
            assert r.status_code == 200 and r.json() == {"status": "success"}, r.text

    def ps(self) -> dict[str, list[str]]:
        """``/api/ps`` as {name: workers holding it}."""
        r = self.get("/api/ps")
        assert r.status_code == 200, r.text
        return {m["name"]: m["workers"] for m in r.json()["models"]}

    def workers(self) -> list[dict]:
        r = self.get("/api/cluster/workers")
        assert r.status_code == 200, r.text
        return r.json()["workers"]

    def unload_all(self, timeout: float = 30.0) -> None:
        """Unload every model (``keep_alive: 0``, Ollama's way), until ``/api/ps`` is empty."""

        def empty() -> bool:
            loaded = self.ps()
            for name in loaded:
                # The name as /api/ps spells it, and without ":latest" (the router keys its
                # placements by the name as the loading request wrote it).
                for spelling in {name, name.removesuffix(":latest")}:
                    self.post("/api/generate", {"model": spelling, "keep_alive": 0})
            return not loaded

        wait_for("/api/ps to empty", empty, timeout, interval=0.2)

    # -- the processes

    def processes(self) -> list[ProcInfo]:
        """This cluster's processes: corral up and every process in the process groups of its
        children (each child leads its own group: a router's gunicorn workers, nginx's workers)."""
        procs = all_processes()
        up = [p for p in procs if p.ppid == self.process.pid and p.argv[:1] != ["sh"]
              and p.env.get("CORRAL_TEST_CLUSTER") == self.token]
        groups = {p.pid for p in procs if up and p.ppid == up[0].pid}
        out = [p for p in procs if p.pgid in groups]
        # Remembered for the final sweep (the links to corral up are gone once it has exited).
        self._groups.update((p.pgid, p.started) for p in out if p.pid == p.pgid)
        return out

    def worker_process(self, worker_id: str) -> ProcInfo:
        found = [p for p in self.processes() if p.env.get("CORRAL_WORKER_ID") == worker_id and "worker" in p.argv]
        assert len(found) == 1, f"{worker_id}: {found}"
        return found[0]

    def router_processes(self, n: int) -> list[ProcInfo]:
        """router-n's gunicorn master and its worker processes (one process group)."""
        spool = f"/routers/router-{n}/spool"
        found = [p for p in self.processes() if p.env.get("CORRAL_SPOOL_DIR", "").endswith(spool)]
        assert found, f"router-{n} not found"
        return found

    def redis_process(self) -> ProcInfo:
        """redis-server (it rewrites its argv to ``redis-server 127.0.0.1:<port>``)."""
        found = [p for p in self.processes() if p.argv and "redis-server" in p.argv[0].split(" ")[0]]
        assert len(found) == 1, found
        return found[0]

    def redis_url(self) -> str:
        urls = {p.env["REDIS_URL"] for p in self.processes() if "REDIS_URL" in p.env}
        assert len(urls) == 1, urls
        return urls.pop()

    def redis_command(self) -> list[str]:
        """A command line that starts this cluster's Redis again as it runs now (same port,
        address, directory, persistence), from its own CONFIG: its argv is rewritten."""
        import redis

        with redis.Redis.from_url(self.redis_url(), socket_timeout=5, decode_responses=True) as client:
            config = {k: client.config_get(k)[k] for k in ("port", "bind", "dir", "appendonly", "save")}
        binary = self.redis_process().argv[0].split(" ")[0]  # /proc/<pid>/exe is redis-check-rdb on Debian
        return [binary, "--port", config["port"], "--bind", config["bind"], "--dir", config["dir"],
                "--appendonly", config["appendonly"], "--save", config["save"]]

    def router_urls(self) -> list[str]:
        """The routers behind nginx, router-1 first (from the nginx.conf that corral up wrote)."""
        conf = (self.data_dir / "nginx" / "nginx.conf").read_text()
        return [f"http://127.0.0.1:{port}" for port in re.findall(r"server 127\.0\.0\.1:(\d+);", conf)]

    @staticmethod
    def kill(*procs: ProcInfo) -> None:
        """SIGKILL to their process groups (a router: its gunicorn master and workers, one
        group); returns once every one of them is dead."""
        for pgid in {p.pgid for p in procs}:
            os.killpg(pgid, signal.SIGKILL)
        wait_for(f"{[p.pid for p in procs]} to die", lambda: not any(p.alive for p in procs), 10, interval=0.02)

    def restart_redis(self, argv: list[str], env: dict[str, str]) -> None:
        """Start Redis again with ``argv`` (``redis_command()``, read before it was killed);
        corral up does not restart a child, so this one belongs to the test (stopped in ``stop``)."""
        process = Child("redis-watchdog", argv, env=env, log=self.logs / "redis.log", watched=True).start()
        self._extra.append(process)
        port = int(argv[argv.index("--port") + 1])
        import redis

        def answers() -> bool:
            try:
                with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as client:
                    return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for("the restarted redis-server to answer PING", answers, 20)

    # -- logs and metrics

    def log(self, name: str) -> str:
        try:
            return (self.logs / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def metrics(self, routers: list[str] | None = None) -> Metrics:
        """Every router's /metrics (each asked directly, not through nginx), summed."""
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for url in routers or self.router_urls():
            r = httpx.get(url + "/metrics", timeout=10)
            assert r.status_code == 200, r.text
            for family in text_string_to_metric_families(r.text):
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    samples[key] = samples.get(key, 0.0) + sample.value
        return Metrics(samples)


@dataclass
class Metrics:
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}

    def value(self, name: str, **labels: str) -> float:
        """The sum over every sample of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= set(ls))

    def has(self, name: str, **labels: str) -> bool:
        want = set(labels.items())
        return any(n == name and want <= set(ls) for n, ls in self.samples)


def _stop_cluster(process: Child, extra: list[Child], groups: set[tuple[int, int]]) -> None:
    """SIGTERM corral up (it stops its children); then any of its children's process groups
    still there (corral up itself SIGKILLed, or a stop that timed out) gets SIGKILL."""
    process.stop(STOP_TIMEOUT_S)
    for child in extra:
        child.stop(10)
    for pgid, started in groups:
        leader = read_proc(pgid)
        if leader is not None and leader.started == started and pgid != os.getpgid(0):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
