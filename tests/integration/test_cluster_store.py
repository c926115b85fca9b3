"""The cluster's model store on a real OCI registry, and workers' blob caches filled from it.

Workers here run with ``CORRAL_REGISTRY_URL``: the API's model management acts on the
registry (the same routes as the local store), and inference loads from the worker's local
cache of it. Everything is real: Debian's docker-registry as upstream, as the cluster store
and as a push target; worker processes; a counting TCP proxy where a test must prove how
many times bytes crossed.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.registries import MANIFEST_V2, RegistryServer, TCPProxy, TokenServer
from tests.support.servers import WorkerProcess, start_worker

pytestmark = pytest.mark.integration


WORKER_ENV = {"CORRAL_NUM_THREADS": "1"}
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "stream": False, "options": {"num_predict": 4}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path_factory.mktemp("cluster")) as server:
        yield server


def cluster_worker(tmp: Path, registry_url: str, **env: str) -> WorkerProcess:
    return start_worker(tmp, {**WORKER_ENV, "CORRAL_REGISTRY_URL": registry_url, **env})


@pytest.fixture(scope="module")
def worker_a(tmp_path_factory, cluster, upstream) -> Iterator[WorkerProcess]:
    """A cluster worker that has pulled the upstream model into the cluster registry."""
    proc = cluster_worker(tmp_path_factory.mktemp("worker-a"), cluster.url)
    try:
        r = httpx.post(proc.url + "/api/pull", json={"model": upstream[1].reference, "insecure": True,
                                                     "stream": False}, timeout=120)
        assert r.status_code == 200 and r.json() == {"status": "success"}, r.text
        yield proc
    finally:
        proc.stop()


def names(url: str) -> list[str]:
    return sorted(m["name"] for m in httpx.get(url + "/api/tags", timeout=30).json()["models"])


def chat(url: str, model: str) -> httpx.Response:
    return httpx.post(url + "/api/chat", json={"model": model, **CHAT}, timeout=120)


def catalog(registry: RegistryServer) -> list[str]:
    return httpx.get(f"{registry.url}/v2/_catalog").json()["repositories"]


def cached_blobs(models_dir: Path) -> set[str]:
    blobs = models_dir / "blobs"
    return {p.name for p in blobs.iterdir() if p.name.startswith("sha256-") and len(p.name) == 71} if blobs.exists() else set()


def test_a_pull_lands_in_the_cluster_registry_and_any_worker_runs_it(upstream, cluster, worker_a, tmp_path):
    _, seeded = upstream
    name = seeded.reference
    repo = name.split("/", 1)[0].replace(":", "__") + "/library/smollm2"
    assert {repo, "corral/blobs"} <= set(catalog(cluster))
    # The manifest is stored unchanged.
    r = httpx.get(f"{cluster.url}/v2/{repo}/manifests/135m", headers={"Accept": MANIFEST_V2})
    assert r.content == seeded.manifest
    assert name in names(worker_a.url)
    # Pulling streamed the blobs straight through to the registry: the worker's disk has none yet.
    assert cached_blobs(worker_a.models_dir) == set()

    assert chat(worker_a.url, name).status_code == 200
    assert cached_blobs(worker_a.models_dir) == {f"sha256-{d[7:]}" for d in
                                                  [l.digest for l in seeded.layers] + [seeded.config.digest]}

    # A second worker knows nothing locally, sees the model at once, fetches it once, then never again.
    with TCPProxy(cluster.url) as proxy:
        b = cluster_worker(tmp_path, proxy.url)
        try:
            assert name in names(b.url)
            for _ in range(3):
                r = chat(b.url, name)
                assert r.status_code == 200 and r.json()["message"]["content"], r.text
            assert proxy.count("GET", seeded.model_layer.digest) == 1
        finally:
            b.stop()


def test_model_management_acts_on_the_registry(worker_a, cluster, gguf_path, gguf_digest, tmp_path):
    url = worker_a.url
    # Blobs go into the registry: HEAD 404, POST 201, HEAD 200, POST again 200.
    data = os.urandom(4096)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    assert httpx.head(f"{url}/api/blobs/{digest}").status_code == 404
    assert httpx.post(f"{url}/api/blobs/{digest}", content=data).status_code == 201
    assert httpx.head(f"{url}/api/blobs/{digest}").status_code == 200
    assert httpx.get(f"{cluster.url}/v2/corral/blobs/blobs/{digest}").content == data
    assert httpx.post(f"{url}/api/blobs/{digest}", content=b"ignored").status_code == 200
    # The model's GGUF is there already (the pull put it in): the upload is skipped, as in Ollama.
    with gguf_path.open("rb") as f:
        assert httpx.post(f"{url}/api/blobs/{gguf_digest}", content=f, timeout=120).status_code == 200
    bad = "sha256:" + "0" * 64
    r = httpx.post(f"{url}/api/blobs/{bad}", content=b"hello")
    assert r.status_code == 400 and r.json()["error"].startswith(f'digest mismatch, expected "{bad}"')

    # create from the uploaded file, then from a model, with Ollama's progress lines
    r = httpx.post(f"{url}/api/create", json={"model": "imported", "files": {"m.gguf": gguf_digest}}, timeout=120)
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines[0] == {"status": "parsing GGUF"} and lines[-1] == {"status": "success"}, lines
    r = httpx.post(f"{url}/api/create", json={"model": "pirate", "from": "imported", "system": "You are a pirate.",
                                              "parameters": {"temperature": 0.2}, "stream": False}, timeout=120)
    assert r.json() == {"status": "success"}, r.text
    show = httpx.post(f"{url}/api/show", json={"model": "pirate"}).json()
    assert show["system"] == "You are a pirate."
    assert show["details"]["family"] == "llama" and show["details"]["parent_model"] == "imported:latest"
    assert show["model_info"]["general.architecture"] == "llama"  # read from the blob's header in the registry
    assert show["parameters"].split() == ["temperature", "0.2"]
    assert chat(url, "pirate").status_code == 200

    # copy within a repository, then delete one tag: the other survives (Distribution deletes by digest)
    assert httpx.post(f"{url}/api/copy", json={"source": "pirate", "destination": "pirate:v2"}).status_code == 200
    assert {"pirate:latest", "pirate:v2", "imported:latest"} <= set(names(url))
    assert httpx.request("DELETE", f"{url}/api/delete", json={"model": "pirate"}).status_code == 200
    assert "pirate:latest" not in names(url) and "pirate:v2" in names(url)
    assert chat(url, "pirate:v2").status_code == 200
    r = httpx.request("DELETE", f"{url}/api/delete", json={"model": "pirate"})
    assert r.status_code == 404 and r.json() == {"error": "model 'pirate' not found"}
    r = httpx.post(f"{url}/api/show", json={"model": "nope"})
    assert r.status_code == 404 and r.json() == {"error": "model 'nope' not found"}
    for model in ("pirate:v2", "imported"):
        assert httpx.request("DELETE", f"{url}/api/delete", json={"model": model}).status_code == 200
    assert "imported:latest" not in names(url)


def test_names_are_case_insensitive_and_stored_in_lower_case(worker_a, upstream):
    name = upstream[1].reference
    assert httpx.post(f"{worker_a.url}/api/copy", json={"source": name, "destination": "Team/Mixed:Case"}
                      ).status_code == 200
    try:
        assert "team/mixed:case" in names(worker_a.url)
        assert chat(worker_a.url, "TEAM/mixed:CASE").status_code == 200
    finally:
        httpx.request("DELETE", f"{worker_a.url}/api/delete", json={"model": "team/mixed:case"})


def test_push_from_the_cluster_registry_to_another(worker_a, upstream, tmp_path):
    _, seeded = upstream
    with RegistryServer(tmp_path / "down") as down:
        target = f"{down.host}/team/smol:v1"
        assert httpx.post(f"{worker_a.url}/api/copy", json={"source": seeded.reference, "destination": target}
                          ).status_code == 200
        try:
            r = httpx.post(f"{worker_a.url}/api/push", json={"model": target, "insecure": True, "stream": False},
                           timeout=120)
            assert r.status_code == 200 and r.json() == {"status": "success"}, r.text
            r = httpx.get(f"{down.url}/v2/team/smol/manifests/v1", headers={"Accept": MANIFEST_V2})
            assert r.content == seeded.manifest
            got = httpx.get(f"{down.url}/v2/team/smol/blobs/{seeded.model_layer.digest}").content
            assert hashlib.sha256(got).hexdigest() == seeded.model_layer.digest[7:]
        finally:
            httpx.request("DELETE", f"{worker_a.url}/api/delete", json={"model": target})


def test_workers_sharing_one_cache_volume_download_a_blob_once(worker_a, cluster, upstream, tmp_path):
    name = upstream[1].reference
    shared = tmp_path / "shared-cache"
    with TCPProxy(cluster.url) as proxy:
        workers = [start_worker(tmp_path, {**WORKER_ENV, "CORRAL_REGISTRY_URL": proxy.url}, models_dir=shared)
                   for _ in range(2)]
        try:
            results: list[int] = []
            threads = [threading.Thread(target=lambda w=w: results.append(chat(w.url, name).status_code))
                       for w in workers]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            assert results == [200, 200]
            assert proxy.count("GET", upstream[1].model_layer.digest) == 1
        finally:
            for w in workers:
                w.stop()
    assert not [p for p in (shared / "blobs").iterdir() if p.name.endswith("-partial")]


def test_a_cache_full_of_old_blobs_is_pruned(worker_a, cluster, upstream, tmp_path):
    seeded = upstream[1]
    models = tmp_path / "models"
    blobs = models / "blobs"
    blobs.mkdir(parents=True)
    old = []
    for i in range(3):  # 40 MB each, a day old, referenced by nothing
        data = os.urandom(1 << 20) * 40
        path = blobs / f"sha256-{hashlib.sha256(data).hexdigest()}"
        path.write_bytes(data)
        day_ago = time.time() - 86400 + i
        os.utime(path, (day_ago, day_ago))
        old.append(path)
    limit = 120 << 20  # the model (98 MB) fits; the old blobs must make room
    proc = cluster_worker(tmp_path, cluster.url, CORRAL_CACHE_MAX_BYTES=str(limit))
    try:
        assert chat(proc.url, seeded.reference).status_code == 200
        assert not any(p.exists() for p in old)
        left = sum(p.stat().st_size for p in blobs.iterdir() if p.name.startswith("sha256-"))
        assert left <= limit
        assert (blobs / f"sha256-{seeded.model_layer.digest[7:]}").exists()
        assert chat(proc.url, seeded.reference).status_code == 200
    finally:
        proc.stop()


def test_without_the_cluster_registry_requests_fail_clearly(tmp_path, upstream):
    proc = cluster_worker(tmp_path, "http://127.0.0.1:1")
    try:
        r = httpx.get(proc.url + "/api/tags")
        assert r.status_code == 502
        assert "connection refused" in r.json()["error"]
        r = chat(proc.url, upstream[1].reference)
        assert r.status_code == 502 and "connection refused" in r.json()["error"]
    finally:
        proc.stop()


def test_a_cluster_registry_behind_token_auth(tmp_path, upstream):
    """Credentials in CORRAL_REGISTRY_URL go to the token server; mounts ask for two scopes."""
    with TokenServer(tmp_path / "auth", username="corral", password="s3cret") as tokens, \
            RegistryServer(tmp_path / "reg", token_server=tokens) as registry:
        url = f"http://corral:s3cret@{registry.host}"
        proc = cluster_worker(tmp_path, url)
        try:
            r = httpx.post(proc.url + "/api/pull", json={"model": upstream[1].reference, "insecure": True,
                                                         "stream": False}, timeout=120)
            assert r.status_code == 200 and r.json() == {"status": "success"}, r.text
            assert httpx.post(proc.url + "/api/copy", json={"source": upstream[1].reference,
                                                            "destination": "guarded"}).status_code == 200
            assert "guarded:latest" in names(proc.url)
            assert chat(proc.url, "guarded").status_code == 200
            assert tokens.requests and all(request.user == "corral" for request in tokens.requests)
            assert "s3cret" not in proc.log()
        finally:
            proc.stop()
        # Wrong credentials: a clear error, not a hang.
        proc = cluster_worker(tmp_path, f"http://corral:wrong@{registry.host}")
        try:
            r = httpx.get(proc.url + "/api/tags")
            assert r.status_code == 502 and "401" in r.json()["error"], r.text
        finally:
            proc.stop()
