"""Real Corral servers on loopback for tests: one ``corral worker``, or a cluster (``corral up``)
behind the same small interface (``Server``), and a model imported as a user imports one."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import httpx

from corral.supervise import Child, Probe, free_port, stop_group
from tests.support.model import MODEL_NAME

if TYPE_CHECKING:
    from tests.support.cluster import Cluster

CLUSTER_WORKERS, CLUSTER_ROUTERS = 3, 2


@dataclass
class WorkerProcess:
    url: str
    models_dir: Path
    log_path: Path
    process: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_group(self.process)


@dataclass
class ClusterServer:
    """A ``tests.support.cluster.Cluster`` (``corral up``) as the API tests see a server."""

    cluster: Cluster

    @property
    def url(self) -> str:
        return self.cluster.endpoint

    @property
    def models_dir(self) -> Path:
        """The workers' shared blob cache, in Ollama's layout."""
        return self.cluster.data_dir / "cache"

    def log(self) -> str:
        """What ``corral up`` printed, then the log of each of its services."""
        parts = [self.cluster.up_log.read_text(errors="replace")]
        parts += [f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(self.cluster.logs.glob("*.log"))]
        return "\n".join(parts)

    def stop(self) -> None:
        self.cluster.stop()


class Server(Protocol):
    url: str
    models_dir: Path

    def log(self) -> str: ...

    def stop(self) -> None: ...


def start_worker(tmp: Path, env: dict[str, str] | None = None, *, models_dir: Path | None = None) -> WorkerProcess:
    """A real ``corral worker`` process on a free loopback port; returns once it answers."""
    port = free_port()
    models = models_dir or tmp / "models"
    log_path = tmp / f"worker-{port}.log"
    full_env = {
        **os.environ,
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "OLLAMA_MODELS": str(models),
        "CORRAL_NUM_THREADS": "2",
        **(env or {}),
    }
    # Not watched: tests signal the worker itself (SIGTERM to drain, SIGKILL to crash it).
    child = Child("worker", [sys.executable, "-m", "corral.cli", "worker"], env=full_env, log=log_path,
                  ready=Probe("127.0.0.1", port)).start(append=False)
    try:
        child.wait_ready(60)
    except BaseException:
        child.stop()
        raise
    assert child.process is not None
    return WorkerProcess(f"http://127.0.0.1:{port}", models, log_path, child.process)


def start_cluster(tmp: Path, env: dict[str, str] | None = None) -> ClusterServer:
    """``corral up`` with 3 workers and 2 routers, everything it writes under ``tmp``."""
    from tests.support.cluster import Cluster  # it imports this module

    return ClusterServer(Cluster(tmp, workers=CLUSTER_WORKERS, routers=CLUSTER_ROUTERS, env=env))


def start_server(serving: str, tmp: Path, env: dict[str, str] | None = None, *, models_dir: Path | None = None) -> Server:
    """A worker or a cluster (``serving``); ``models_dir`` is where it keeps its models
    (for a cluster: everything it writes)."""
    if serving == "cluster":
        return start_cluster(models_dir or tmp / "cluster", env)
    return start_worker(tmp, env, models_dir=models_dir)


def import_model(
    url: str, gguf_path: Path, digest: str, name: str = MODEL_NAME, *, headers: dict[str, str] | None = None, **extra: object
) -> None:
    """Import a GGUF the way a user does: upload the blob, then /api/create from it."""
    with httpx.Client(base_url=url, timeout=120, headers=headers) as client:
        if client.head(f"/api/blobs/{digest}").status_code != 200:
            with gguf_path.open("rb") as f:
                r = client.post(f"/api/blobs/{digest}", content=f)
            assert r.status_code in (200, 201), r.text
        r = client.post("/api/create", json={"model": name, "files": {"model.gguf": digest}, "stream": False, **extra})
        assert r.status_code == 200 and r.json() == {"status": "success"}, r.text
