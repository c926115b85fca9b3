"""``corral pull``: what compose's preload service and the Helm chart's Job run against the endpoint.

Against the session's server (a worker, and the cluster through nginx) and a real upstream
registry holding the test model.
"""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from tests.support.servers import free_port

pytestmark = pytest.mark.integration



def corral_pull(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "corral.cli", "pull", *args], capture_output=True, text=True,
                          timeout=timeout)


def names(url: str) -> list[str]:
    return [m["name"] for m in httpx.get(url + "/api/tags", timeout=30).json()["models"]]


def test_pull_through_the_endpoint(worker, upstream):
    reference = upstream[1].reference
    try:
        done = corral_pull("--host", worker.url, "--wait", "30", "--insecure", reference)
        assert done.returncode == 0, done.stderr
        steps = done.stderr.splitlines()  # the progress (stdout stays empty, as ollama's)
        assert steps[0] == f"{reference}: pulling manifest", steps
        assert steps[-1] == f"{reference}: success", steps
        assert len(steps) < 20, "one line per step, not one per progress tick"
        assert reference in names(worker.url)
        again = corral_pull("--host", worker.url, reference + "," + reference, "--insecure")
        assert again.returncode == 0, again.stderr  # already there: pulled again, quickly
    finally:
        httpx.request("DELETE", worker.url + "/api/delete", json={"model": reference}, timeout=30)


def test_a_model_that_is_not_there_fails_the_command(worker, upstream):
    server, seeded = upstream
    missing = seeded.reference.rsplit(":", 1)[0] + ":no-such-tag"
    done = corral_pull("--host", worker.url, "--insecure", missing)
    assert done.returncode == 1
    # Ollama's words for a missing manifest, as ollama pull prints them
    assert done.stderr.splitlines()[-1] == "Error: pull model manifest: file does not exist", done.stderr


def test_an_endpoint_that_never_answers_fails_within_the_wait():
    started = time.monotonic()
    done = corral_pull("--host", f"http://127.0.0.1:{free_port()}", "--wait", "2", "m", timeout=60)
    assert done.returncode == 1
    assert "did not answer within 2s" in done.stderr, done.stderr
    assert time.monotonic() - started < 30
