"""The CUDA worker image's toolchain, built for real on this CPU-only machine: the ``check``
stage of deploy/docker/worker-cuda.Dockerfile, through deploy/docker/build-worker-cuda.sh as a
person would run it. CUDA 13 is laid out from NVIDIA's PyPI wheels on the same debootstrap
Debian base as the other images; nvcc then compiles and links a probe against cudart, cuBLAS and
the driver stub for sm_90, and llama.cpp's CUDA backend (from the sdist the full image compiles)
configures against the toolkit and compiles two of its sources.

The full image (every architecture: hours on 2 cores) is the script's job, with its report in
loadtest/reports/cuda-image.md; this is the part of it that fits CI. Where no Docker engine can
be had the module skips, saying why.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import engine

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "docker" / "build-worker-cuda.sh"
TAG = "corral-e2e/corral-worker-cuda:test"
BUILD_TIMEOUT_S = 1200  # the wheels' first download (0.5 GB) and the toolchain check: 2-4 minutes here


def test_the_cuda_toolchain_builds_on_the_debian_base():
    client = engine.engine()
    if isinstance(client, str):
        pytest.skip(f"no Docker engine: {client}")
    base = engine.base_image(client)
    env = {
        **{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_HOST", "LANG", "CORRAL_CACHE")},
        "BASE_IMAGE": base,
        "OFFLINE": "1",  # containers here reach no index: every wheel is downloaded by this machine's pip
        "PYTHON": sys.executable,
        "TAG": TAG,
    }
    done = subprocess.run([str(SCRIPT), "--target", "check"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT_S)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    assert f"built {TAG}-check" in log, log[-2000:]
    # The stage's checks ran while it was built (or an identical build was cached): run them
    # again in the image, so that this test sees them pass whatever the cache held.
    check = subprocess.run(
        ["docker", "run", "--rm", f"{TAG}-check", "sh", "-c",
         "nvcc --version && sh /usr/local/bin/cuda-check.sh /tmp/sdist/llama_cpp_python-*.tar.gz 90-real"],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
    )
    out = check.stdout + check.stderr
    assert check.returncode == 0, out[-4000:]
    assert "release 13.0" in out and "ggml-cuda objects built for 90-real" in out, out[-2000:]
