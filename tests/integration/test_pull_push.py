"""/api/pull and /api/push on one worker's local store, against real registries on loopback.

Upstream is Debian's docker-registry (CNCF Distribution 2.8) seeded with SmolLM2 in Ollama's
manifest format by plain httpx (tests/support/registries.py), so nothing here checks Corral with
Corral's own client. Faults are real too: a TCP proxy that cuts a blob mid-body, a registry
that demands bearer tokens, a blob corrupted on the registry's disk, a port nobody listens on.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from corral.supervise import ChildError
from tests.support.registries import MANIFEST_V2, Redirector, RegistryServer, TCPProxy, TokenServer, seed_model
from tests.support.servers import WorkerProcess, free_port, import_model, start_worker
from tests.support.vision import MODEL as VISION_MODEL
from tests.support.vision import PROMPT, RED, b64, create_vision_model

pytestmark = pytest.mark.integration


# Single-threaded workers: several run at once in these tests on a 2-core machine.
WORKER_ENV = {"CORRAL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def puller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    proc = start_worker(tmp_path_factory.mktemp("puller"), WORKER_ENV)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def fresh_worker(tmp_path: Path) -> Iterator[WorkerProcess]:
    proc = start_worker(tmp_path, WORKER_ENV)
    try:
        yield proc
    finally:
        proc.stop()


def stream_lines(url: str, route: str, body: dict) -> list[dict]:
    with httpx.stream("POST", url + route, json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in r.iter_lines() if line]


def tag_names(url: str) -> list[str]:
    return [m["name"] for m in httpx.get(url + "/api/tags").json()["models"]]


def layer_lines(lines: list[dict], verb: str) -> dict[str, list[dict]]:
    by_layer: dict[str, list[dict]] = {}
    for line in lines:
        if line.get("status", "").startswith(f"{verb} ") and "digest" in line:
            by_layer.setdefault(line["digest"], []).append(line)
    return by_layer


def delete(url: str, name: str) -> None:
    httpx.request("DELETE", url + "/api/delete", json={"model": name})


# --- pull ----------------------------------------------------------------------------------------


def test_pull_streams_ollamas_progress_then_the_model_chats(upstream, puller):
    server, seeded = upstream
    name = seeded.reference
    lines = stream_lines(puller.url, "/api/pull", {"model": name, "insecure": True})
    try:
        statuses = [line["status"] for line in lines]
        assert statuses[0] == "pulling manifest"
        assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
        layers = layer_lines(lines, "pulling")
        expected = [layer.digest for layer in seeded.layers] + [seeded.config.digest]
        assert list(layers) == expected  # layers in manifest order, then the config
        for layer in [*seeded.layers, seeded.config]:
            progress = layers[layer.digest]
            assert {p["status"] for p in progress} == {f"pulling {layer.digest[7:19]}"}
            assert all(p["total"] == layer.size for p in progress)
            completed = [p["completed"] for p in progress]
            assert completed == sorted(completed) and completed[-1] == layer.size
        # Every line is one of Ollama's shapes, nothing more.
        for line in lines:
            assert set(line) in ({"status"}, {"status", "digest", "total", "completed"})

        assert name in tag_names(puller.url)
        # The local store holds the exact manifest bytes the registry served.
        host, rest = name.split("/", 1)
        repo, tag = rest.rsplit(":", 1)
        assert (puller.models_dir / "manifests" / host / repo / tag).read_bytes() == seeded.manifest
        r = httpx.post(
            puller.url + "/api/chat",
            json={"model": name, "messages": [{"role": "user", "content": "Hi"}], "stream": False,
                  "options": {"num_predict": 4}},
            timeout=120,
        )
        assert r.status_code == 200 and r.json()["message"]["content"], r.text

        # Pulling again: every layer is already here and is reported once, complete.
        again = stream_lines(puller.url, "/api/pull", {"model": name, "insecure": True})
        for progress in layer_lines(again, "pulling").values():
            assert len(progress) == 1 and progress[0]["completed"] == progress[0]["total"]
        assert again[-1] == {"status": "success"}

        # The official client, as users call it.
        assert ollama.Client(host=puller.url).pull(name, insecure=True).status == "success"
    finally:
        delete(puller.url, name)


def test_pull_without_streaming_answers_the_last_line_only(upstream, puller):
    _, seeded = upstream
    r = httpx.post(puller.url + "/api/pull", json={"model": seeded.reference, "insecure": True, "stream": False},
                   timeout=120)
    try:
        assert r.status_code == 200 and r.json() == {"status": "success"}
    finally:
        delete(puller.url, seeded.reference)


def test_pull_errors_are_ollamas(upstream, puller):
    server, _ = upstream
    unknown = f"{server.host}/library/nothing:here"
    lines = stream_lines(puller.url, "/api/pull", {"model": unknown, "insecure": True})
    assert lines == [{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]

    r = httpx.post(puller.url + "/api/pull", json={"model": unknown, "insecure": True, "stream": False})
    assert r.status_code == 500 and r.json() == {"error": "pull model manifest: file does not exist"}

    # An http:// name needs "insecure", as in Ollama.
    r = httpx.post(puller.url + "/api/pull", json={"model": f"http://{server.host}/library/smollm2:135m"})
    assert r.status_code == 500 and r.json() == {"error": "insecure protocol http"}

    r = httpx.post(puller.url + "/api/pull", json={"model": "bad name!"})
    assert r.status_code == 400 and r.json() == {"error": "invalid model name"}

    with pytest.raises(ollama.ResponseError) as err:
        ollama.Client(host=puller.url).pull(unknown, insecure=True)
    assert "file does not exist" in str(err.value)
    assert unknown not in tag_names(puller.url)


def test_an_upstream_that_is_down_is_a_clear_error(puller):
    port = free_port()  # nobody listens here
    r = httpx.post(puller.url + "/api/pull",
                   json={"model": f"127.0.0.1:{port}/library/smollm2:135m", "insecure": True, "stream": False},
                   timeout=60)
    assert r.status_code == 500
    message = r.json()["error"]
    assert message == (
        f'pull model manifest: Get "http://127.0.0.1:{port}/v2/library/smollm2/manifests/135m": '
        "connect: connection refused"
    )


def test_a_registry_that_demands_tokens(tmp_path, gguf_path, puller):
    with TokenServer(tmp_path / "auth") as tokens, RegistryServer(tmp_path / "reg", token_server=tokens) as server:
        seeded = seed_model(server, "team/smol", "v1", gguf=gguf_path)
        tokens.requests.clear()
        assert httpx.get(f"{server.url}/v2/team/smol/manifests/v1").status_code == 401
        lines = stream_lines(puller.url, "/api/pull", {"model": seeded.reference, "insecure": True})
        try:
            assert lines[-1] == {"status": "success"}, lines
            scopes = {scope for request in tokens.requests for scope in request.scopes}
            assert "repository:team/smol:pull" in scopes
            # Push back under another tag: the push scope is asked for and granted.
            target = f"{server.host}/team/smol:copy"
            assert httpx.post(puller.url + "/api/copy", json={"source": seeded.reference, "destination": target}
                              ).status_code == 200
            pushed = stream_lines(puller.url, "/api/push", {"model": target, "insecure": True})
            assert pushed[-1] == {"status": "success"}, pushed
            assert any("push" in scope for request in tokens.requests for scope in request.scopes)
            r = httpx.get(f"{server.url}/v2/team/smol/manifests/copy",
                          headers={"Accept": MANIFEST_V2}, auth=server.auth())
            assert r.status_code == 200 and r.content == seeded.manifest
        finally:
            delete(puller.url, seeded.reference)
            delete(puller.url, f"{server.host}/team/smol:copy")


def test_a_pull_cut_mid_blob_resumes_where_it_stopped(upstream, fresh_worker):
    server, seeded = upstream
    model = seeded.model_layer
    with TCPProxy(server.url) as proxy:
        proxy.cut_after(f"/blobs/{model.digest}", 30_000_000, method="GET")
        name = f"{proxy.host}/{seeded.repo}:{seeded.tag}"
        lines = stream_lines(fresh_worker.url, "/api/pull", {"model": name, "insecure": True})
        assert lines[-1] == {"status": "success"}, lines
        assert proxy.cuts_done == 1
        assert proxy.count("GET", model.digest) == 2
        # Resumed, not restarted: the bytes crossing the proxy are about one blob, not two.
        assert proxy.bytes_sent(model.digest) < model.size + 1_000_000
    blob = fresh_worker.models_dir / "blobs" / f"sha256-{model.digest[7:]}"
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == model.digest[7:]
    assert not any(p.name.endswith("-partial") for p in blob.parent.iterdir())


def test_a_blob_that_does_not_match_its_digest_is_rejected(tmp_path, gguf_path, fresh_worker):
    with RegistryServer(tmp_path / "reg") as server:
        seeded = seed_model(server, "library/smollm2", "135m", gguf=gguf_path)
        hex_digest = seeded.model_layer.digest[7:]
        data = server.storage / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"
        with data.open("r+b") as f:  # same size, different bytes: the registry serves them as they are
            f.seek(1_000_000)
            f.write(b"\x00corrupted\x00")
        lines = stream_lines(fresh_worker.url, "/api/pull", {"model": seeded.reference, "insecure": True})
    assert "error" in lines[-1], lines
    assert lines[-1]["error"].startswith(
        f"digest mismatch, file must be downloaded again: want {seeded.model_layer.digest}, got sha256:"
    )
    # Nothing appears under the name, and no file of that blob is left.
    assert tag_names(fresh_worker.url) == []
    assert not list((fresh_worker.models_dir / "blobs").glob(f"sha256-{hex_digest}*"))
    assert not (fresh_worker.models_dir / "manifests").exists()


def test_two_pulls_of_one_model_at_once_download_it_once(upstream, fresh_worker):
    server, seeded = upstream
    model = seeded.model_layer
    with TCPProxy(server.url) as proxy:
        name = f"{proxy.host}/{seeded.repo}:{seeded.tag}"
        results: list[list[dict]] = []
        threads = [
            threading.Thread(target=lambda: results.append(
                stream_lines(fresh_worker.url, "/api/pull", {"model": name, "insecure": True})))
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(results) == 2 and all(r[-1] == {"status": "success"} for r in results), results
        assert proxy.count("GET", model.digest) == 1
        assert proxy.bytes_sent(model.digest) < model.size + 1_000_000
    assert tag_names(fresh_worker.url) == [name]


def test_redirects_are_followed_to_where_the_bytes_are(upstream, fresh_worker):
    server, seeded = upstream
    with Redirector(server.url) as front:
        name = f"{front.host}/{seeded.repo}:{seeded.tag}"
        lines = stream_lines(fresh_worker.url, "/api/pull", {"model": name, "insecure": True})
        assert lines[-1] == {"status": "success"}, lines
        assert any(seeded.model_layer.digest in hit for hit in front.hits)
    assert tag_names(fresh_worker.url) == [name]


def test_a_mirror_serves_the_default_registry(upstream, tmp_path):
    server, seeded = upstream
    proc = start_worker(tmp_path, {**WORKER_ENV, "CORRAL_REGISTRY_MIRRORS": f"registry.ollama.ai={server.url}"})
    try:
        # "smollm2:135m" means registry.ollama.ai/library/smollm2:135m; the mirror answers for it.
        lines = stream_lines(proc.url, "/api/pull", {"model": "smollm2:135m"})
        assert lines[-1] == {"status": "success"}, lines
        assert tag_names(proc.url) == ["smollm2:135m"]
        assert (proc.models_dir / "manifests/registry.ollama.ai/library/smollm2/135m").read_bytes() == seeded.manifest
    finally:
        proc.stop()


def test_bad_mirror_settings_stop_the_worker(tmp_path):
    with pytest.raises(ChildError, match="CORRAL_REGISTRY_MIRRORS"):
        start_worker(tmp_path, {"CORRAL_REGISTRY_MIRRORS": "registry.ollama.ai"})


# --- push ----------------------------------------------------------------------------------------


def test_push_publishes_the_model_to_another_registry(upstream, puller, tmp_path):
    _, seeded = upstream
    with RegistryServer(tmp_path / "down") as down:
        target = f"{down.host}/team/smol:v1"
        assert stream_lines(puller.url, "/api/pull", {"model": seeded.reference, "insecure": True})[-1] == {
            "status": "success"}
        try:
            r = httpx.post(puller.url + "/api/copy", json={"source": seeded.reference, "destination": target})
            assert r.status_code == 200
            lines = stream_lines(puller.url, "/api/push", {"model": target, "insecure": True})
            statuses = [line["status"] for line in lines]
            assert statuses[0] == "retrieving manifest"
            assert statuses[-2:] == ["pushing manifest", "success"]
            pushed = layer_lines(lines, "pushing")
            assert list(pushed) == [layer.digest for layer in seeded.layers] + [seeded.config.digest]
            for layer in [*seeded.layers, seeded.config]:
                assert pushed[layer.digest][-1]["completed"] == layer.size
                assert pushed[layer.digest][-1]["status"] == f"pushing {layer.digest[7:19]}"

            # Read it back there: the same manifest bytes, every blob present.
            r = httpx.get(f"{down.url}/v2/team/smol/manifests/v1", headers={"Accept": MANIFEST_V2})
            assert r.status_code == 200 and r.content == seeded.manifest
            assert r.headers["docker-content-digest"] == seeded.digest
            for layer in [*seeded.layers, seeded.config]:
                assert httpx.head(f"{down.url}/v2/team/smol/blobs/{layer.digest}").status_code == 200

            # Again: the blobs are there, so each is reported once, complete; and the client agrees.
            again = stream_lines(puller.url, "/api/push", {"model": target, "insecure": True})
            assert all(len(p) == 1 for p in layer_lines(again, "pushing").values())
            assert ollama.Client(host=puller.url).push(target, insecure=True).status == "success"

            # A model made FROM it, pushed to the same registry: its model layer is mounted from
            # there (one line, complete), not uploaded again (a series of progress lines).
            derived = f"{down.host}/team/pirate:v1"
            r = httpx.post(puller.url + "/api/create",
                           json={"model": derived, "from": target, "system": "Arr.", "stream": False})
            assert r.status_code == 200, r.text
            lines = stream_lines(puller.url, "/api/push", {"model": derived, "insecure": True})
            assert lines[-1] == {"status": "success"}, lines
            model_lines = layer_lines(lines, "pushing")[seeded.model_layer.digest]
            assert model_lines == [{"status": f"pushing {seeded.model_layer.digest[7:19]}",
                                    "digest": seeded.model_layer.digest, "total": seeded.model_layer.size,
                                    "completed": seeded.model_layer.size}]
            assert httpx.head(f"{down.url}/v2/team/pirate/blobs/{seeded.model_layer.digest}").status_code == 200
        finally:
            delete(puller.url, f"{down.host}/team/pirate:v1")
            delete(puller.url, target)
            delete(puller.url, seeded.reference)


def test_pushing_a_model_that_is_not_here(puller):
    lines = stream_lines(puller.url, "/api/push", {"model": "127.0.0.1:1/team/ghost:v1", "insecure": True})
    assert lines == [
        {"status": "retrieving manifest"},
        {"status": "couldn't retrieve manifest"},
        {"error": "model '127.0.0.1:1/team/ghost:v1' not found"},
    ]


def test_a_projector_layer_is_pushed_and_pulled_with_its_model(puller, fresh_worker, tmp_path, gguf_path, gguf_digest):
    """A vision model (tests/support/vision.py) pushed by one worker and pulled by another keeps
    its projector: the same layers, the vision capability, and the same answer to an image."""
    import_model(puller.url, gguf_path, gguf_digest, name="smollm2:135m")
    projector = create_vision_model(puller.url, gguf_digest, tmp_path)
    with RegistryServer(tmp_path / "down") as down:
        target = f"{down.host}/team/eyes:v1"
        try:
            assert httpx.post(puller.url + "/api/copy", json={"source": VISION_MODEL, "destination": target}).status_code == 200
            lines = stream_lines(puller.url, "/api/push", {"model": target, "insecure": True})
            assert lines[-1] == {"status": "success"}, lines
            projector_digest = "sha256:" + hashlib.sha256(projector.read_bytes()).hexdigest()
            assert projector_digest in layer_lines(lines, "pushing")
            lines = stream_lines(fresh_worker.url, "/api/pull", {"model": target, "insecure": True})
            assert lines[-1] == {"status": "success"}, lines
            assert projector_digest in layer_lines(lines, "pulling")
            shown = httpx.post(fresh_worker.url + "/api/show", json={"model": target}).json()
            assert "vision" in shown["capabilities"] and shown["projector_info"]["general.architecture"] == "clip"
            ask = {"prompt": PROMPT, "images": [b64(RED)], "stream": False,
                   "options": {"temperature": 0, "num_predict": 8}}
            here = httpx.post(puller.url + "/api/generate", json={"model": target, **ask}, timeout=120).json()
            there = httpx.post(fresh_worker.url + "/api/generate", json={"model": target, **ask}, timeout=120).json()
            assert (there["response"], there["prompt_eval_count"]) == (here["response"], here["prompt_eval_count"])
        finally:
            for name in (target, VISION_MODEL, "smollm2:135m"):
                delete(puller.url, name)
