"""The package as pip installs it: a wheel built from this tree runs ``corral up`` with nothing
from the source checkout (its nginx configuration is package data)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from corral.api import OLLAMA_VERSION
from tests.support.cluster import Cluster
from tests.support.model import MODEL_NAME
from tests.support.servers import import_model

REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 300  # pip fetches the build backend (setuptools, wheel) into an isolated env

pytestmark = pytest.mark.integration


def _build_wheel(tmp: Path) -> Path:
    # Built from a copy, so the build's own files (build/, *.egg-info) stay out of the checkout.
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "services", source / "services", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        check=True,
        timeout=BUILD_TIMEOUT_S,
    )
    [wheel] = out.glob("corral-*.whl")
    return wheel


def test_corral_up_runs_from_an_installed_wheel(tmp_path: Path, gguf_path: Path, gguf_digest: str) -> None:
    wheel = _build_wheel(tmp_path)
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {"corral/nginx/corral-up.conf", "corral/nginx/corral-proxy.conf", "corral/nginx/corral-direct.conf"} <= names
        archive.extractall(site)
    # The unpacked wheel comes first on the path, ahead of the checkout's editable install.
    env = {"PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import corral.up; print(corral.up.NGINX_DIR)"],
        env={**os.environ, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(site), where

    with Cluster(tmp_path / "up", workers=1, routers=1, env=env) as cluster, cluster.client() as client:
        assert client.get("/api/version").json() == {"version": OLLAMA_VERSION}
        import_model(cluster.endpoint, gguf_path, gguf_digest)
        r = client.post(
            "/api/generate",
            json={"model": MODEL_NAME, "prompt": "Hi", "stream": False, "options": {"num_predict": 2, "seed": 1}},
        )
        assert r.status_code == 200, r.text
        assert r.json()["done"] is True
