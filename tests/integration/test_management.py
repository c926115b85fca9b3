"""Model management and the server's HTTP surface, over raw HTTP (docs/api-coverage.md: "Conventions",
"Routes", "Model management", "Modelfiles").

Read-only checks use the session server. Anything that creates, copies or deletes runs on
this module's own server (``store``, of the same kind), so the shared model list stays as other
files expect it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.answers import JSON_UTF8, assert_error
from tests.support.model import MODEL_NAME
from tests.support.servers import Server, import_model, start_server

MODELFILE_COMMANDS = (
    'command must be one of "from", "license", "template", "system", "adapter", "draft", "renderer", "parser", '
    '"parameter", "message", or "requires"'
)
CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)


@dataclass
class Store:
    """This module's server, with its own directory (a worker's models dir, a cluster's data
    dir) nested deep inside ``sandbox`` so that a name escaping the store by a few ``..``
    would still land somewhere we can see."""

    worker: Server
    client: httpx.Client
    sandbox: Path
    own_dir: Path
    gguf_digest: str


@pytest.fixture(scope="module")
def store(tmp_path_factory, gguf_path, gguf_digest, serving) -> Iterator[Store]:
    sandbox = tmp_path_factory.mktemp("store")
    home = sandbox / "d1" / "d2" / "d3" / "d4" / "d5" / "d6"
    home.mkdir(parents=True)
    own_dir = home / "models"
    proc = start_server(serving, home, {"OLLAMA_ORIGINS": "https://*.example.org"}, models_dir=own_dir)
    try:
        import_model(proc.url, gguf_path, gguf_digest)
        with httpx.Client(base_url=proc.url, timeout=120) as client:
            yield Store(proc, client, sandbox, own_dir, gguf_digest)
    finally:
        proc.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}:latest"


def create(client: httpx.Client, body: dict) -> list[str]:
    """A streamed /api/create; the status lines, which must end in success."""
    r = client.post("/api/create", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines() if line]
    assert lines and lines[-1] == {"status": "success"}, lines
    return [line["status"] for line in lines]


def delete(client: httpx.Client, name: str) -> httpx.Response:
    return client.request("DELETE", "/api/delete", json={"model": name})


def blob_status(client: httpx.Client, digest: str) -> int:
    return client.head(f"/api/blobs/{digest}").status_code


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tag_names(client: httpx.Client) -> list[str]:
    return [m["name"] for m in client.get("/api/tags").json()["models"]]


def show(client: httpx.Client, name: str) -> dict:
    r = client.post("/api/show", json={"model": name})
    assert r.status_code == 200, r.text
    return r.json()


# -- liveness, version, routing -------------------------------------------------------------


def test_root_says_ollama_is_running(http):
    r = http.get("/")
    assert (r.status_code, r.text) == (200, "Ollama is running")
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    r = http.head("/")
    assert (r.status_code, r.content) == (200, b"")
    assert r.headers["content-length"] == "17"


def test_version_reports_a_semver(http):
    r = http.get("/api/version")
    assert r.status_code == 200 and r.headers["content-type"] == JSON_UTF8
    assert set(r.json()) == {"version"}
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", r.json()["version"])


@pytest.mark.parametrize("path", ["/", "/api/version", "/api/tags"])
def test_head_is_answered_like_get(http, path):
    assert http.head(path).status_code == 200


# -- ollama.com's routes, as Ollama answers them with its cloud disabled and no account ----------


def test_status_says_the_cloud_is_disabled(http):
    r = http.get("/api/status")
    assert (r.status_code, r.json()) == (200, {"cloud": {"disabled": True, "source": "env"}})
    assert r.headers["content-type"] == JSON_UTF8


def test_account_routes_say_no_one_is_signed_in(http):
    assert_error(http.post("/api/me"), 401, "unauthorized")
    assert_error(http.post("/api/signout"), 401, "you are not currently signed in")
    assert_error(http.delete("/api/user/keys/c3NoLWVkMjU1MTkgQUFBQQ"), 401, "you are not currently signed in")


@pytest.mark.parametrize(("path", "body"), [("/api/experimental/web_search", {"query": "latest ollama release"}),
                                            ("/api/experimental/web_fetch", {"url": "https://ollama.com"})])
def test_web_search_and_fetch_are_refused_as_cloud_features(http, path, body):
    operation = "web search" if path.endswith("search") else "web fetch"
    assert_error(http.post(path, json=body), 403, f"ollama cloud is disabled: {operation} is unavailable")
    # Ollama checks the body first; nothing in it is parsed, so junk is the same refusal.
    assert_error(http.post(path, content=b"  \n "), 400, "missing request body")
    assert_error(http.post(path, content=b"\xff{not json"), 403, f"ollama cloud is disabled: {operation} is unavailable")
    assert http.get("/api/version").status_code == 200  # the connection and the server live on


def test_model_recommendations_are_empty(http):
    r = http.get("/api/experimental/model-recommendations")
    assert (r.status_code, r.json()) == (200, {"recommendations": []})


@pytest.mark.parametrize(("method", "path"), [("POST", "/api/status"), ("GET", "/api/me"), ("GET", "/api/signout"),
                                              ("GET", "/api/experimental/web_search"),
                                              ("POST", "/api/experimental/model-recommendations")])
def test_cloud_routes_refuse_other_methods(http, method, path):
    r = http.request(method, path)
    assert (r.status_code, r.text) == (405, "405 method not allowed")


@pytest.mark.parametrize(("method", "path"), [("GET", "/api/nope"), ("POST", "/api/nope"), ("GET", "/nope/deeper")])
def test_unknown_route_is_plain_text_404(http, method, path):
    r = http.request(method, path)
    assert (r.status_code, r.text) == (404, "404 page not found")
    assert r.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/generate"), ("GET", "/api/chat"), ("GET", "/api/create"), ("POST", "/api/tags"),
     ("GET", "/api/delete"), ("GET", "/api/embed")],
)
def test_wrong_method_is_plain_text_405(http, method, path):
    r = http.request(method, path)
    assert (r.status_code, r.text) == (405, "405 method not allowed")
    assert r.headers["content-type"].startswith("text/plain")


# -- CORS and the Host check ------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    ["http://localhost:3000", "http://localhost", "https://127.0.0.1:8443", "http://0.0.0.0:5173",
     "app://obsidian.md", "tauri://localhost", "vscode-webview://abc123", "file://"],
)
def test_local_origins_are_allowed(http, origin):
    r = http.get("/api/version", headers={"Origin": origin})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize("origin", ["https://evil.example", "http://localhost.evil.example", "http://192.168.1.9"])
def test_foreign_origins_are_refused(http, origin):
    r = http.get("/api/version", headers={"Origin": origin})
    assert (r.status_code, r.content) == (403, b"")
    assert "access-control-allow-origin" not in r.headers


def test_preflight_is_204_with_ollamas_allow_lists(http):
    r = http.options("/api/chat", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
    methods = {m.strip() for m in r.headers["access-control-allow-methods"].split(",")}
    assert methods == {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
    headers = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "user-agent", "accept", "x-requested-with", "openai-beta"} <= headers
    assert r.headers["access-control-max-age"] == "43200"

    r = http.options("/api/chat", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 403


def test_ollama_origins_adds_wildcard_origins(store):
    ok = store.client.get("/api/version", headers={"Origin": "https://app.example.org"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example.org"
    # The defaults still apply next to OLLAMA_ORIGINS.
    assert store.client.get("/api/version", headers={"Origin": "http://localhost:3000"}).status_code == 200
    assert store.client.get("/api/version", headers={"Origin": "https://example.com"}).status_code == 403


@pytest.mark.parametrize("host", ["evil.example", "evil.example:11434", "attacker.com"])
def test_foreign_host_header_is_refused_on_loopback(http, host):
    r = http.get("/api/version", headers={"Host": host})
    assert (r.status_code, r.content) == (403, b"")


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:11434", "127.0.0.1", "[::1]:11434", "10.1.2.3", "app.localhost", "box.local",
             "db.internal"],
)
def test_local_host_headers_are_allowed(http, host):
    assert http.get("/api/version", headers={"Host": host}).status_code == 200


# -- tags and show -------------------------------------------------------------------------------


def test_tags_entries_describe_each_model(http):
    (entry,) = [m for m in http.get("/api/tags").json()["models"] if m["name"] == MODEL_NAME]
    assert entry["model"] == MODEL_NAME
    assert datetime.fromisoformat(entry["modified_at"]).tzinfo is not None
    assert isinstance(entry["size"], int) and entry["size"] > 50_000_000
    assert re.fullmatch(r"[0-9a-f]{64}", entry["digest"])
    details = entry["details"]
    assert (details["format"], details["family"], details["quantization_level"]) == ("gguf", "llama", "Q4_1")
    assert details["families"] == ["llama"] and details["parameter_size"]


def test_show_describes_the_model(http):
    body = show(http, MODEL_NAME)
    for key in ("license", "modelfile", "parameters", "template", "model_info", "details", "capabilities",
                "modified_at", "tensors"):
        assert key in body, key
    assert body["modelfile"].startswith('# Modelfile generated by "ollama show"')
    assert "\nFROM " in body["modelfile"]
    assert body["capabilities"] == ["completion"]
    assert body["details"]["family"] == "llama"
    info = body["model_info"]
    assert info["general.architecture"] == "llama"
    assert "general.name" not in info and "tokenizer.chat_template" not in info
    assert body["tensors"] and set(body["tensors"][0]) == {"name", "type", "shape"}
    assert "<|im_start|>" in body["template"]
    # `name` is still accepted in place of `model`, and names are matched case-insensitively.
    for alias in ({"name": MODEL_NAME}, {"model": MODEL_NAME.upper()}, {"model": f"library/{MODEL_NAME}"}):
        r = http.post("/api/show", json=alias)
        assert r.status_code == 200 and r.json()["details"] == body["details"], alias


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [({}, 400, "model is required"), ({"model": "no-such-model"}, 404, "model 'no-such-model' not found")],
)
def test_show_errors(http, body, status, message):
    assert_error(http.post("/api/show", json=body), status, message)


def test_tags_lists_newest_first(store):
    older, newer = unique("older"), unique("newer")
    create(store.client, {"model": older, "from": MODEL_NAME})
    time.sleep(0.05)
    create(store.client, {"model": newer, "from": MODEL_NAME})
    try:
        names = tag_names(store.client)
        assert names.index(newer) < names.index(older) < names.index(MODEL_NAME)
    finally:
        delete(store.client, older)
        delete(store.client, newer)


# -- create --------------------------------------------------------------------------------------


def test_create_from_files_reports_progress(store):
    name = unique("imported")
    statuses = create(store.client, {"model": name, "files": {"model.gguf": store.gguf_digest}})
    try:
        hex_digest = store.gguf_digest.removeprefix("sha256:")
        assert statuses[0] == "parsing GGUF"
        assert f"using existing layer sha256:{hex_digest}" in statuses
        assert statuses[-2:] == ["writing manifest", "success"]
        assert show(store.client, name)["details"]["quantization_level"] == "Q4_1"
    finally:
        delete(store.client, name)


def test_create_with_every_json_field_shows_them_back(store):
    name = unique("custom")
    system = f"You are a terse assistant {uuid.uuid4().hex}."
    statuses = create(store.client, {
        "model": name, "from": MODEL_NAME, "template": CHATML, "system": system,
        "parameters": {"temperature": 0.2, "stop": ["<|im_end|>", "END"], "num_ctx": 1024},
        "messages": [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A model."}],
        "license": ["MIT", "Apache-2.0"],
    })
    try:
        assert statuses[-2:] == ["writing manifest", "success"]
        assert f"creating new layer {sha256(system.encode())}" in statuses
        assert f"using existing layer {store.gguf_digest}" in statuses
        body = show(store.client, name)
        assert body["system"] == system
        assert body["template"] == CHATML
        assert body["license"] == "MIT\nApache-2.0"
        assert body["messages"] == [{"role": "user", "content": "Who are you?"},
                                    {"role": "assistant", "content": "A model."}]
        lines = body["parameters"].splitlines()
        assert f"{'temperature':<30} 0.2" in lines
        assert f"{'num_ctx':<30} 1024" in lines
        assert f'{"stop":<30} "<|im_end|>"' in lines and f'{"stop":<30} "END"' in lines
        assert "SYSTEM " in body["modelfile"] and "PARAMETER temperature 0.2" in body["modelfile"]
    finally:
        delete(store.client, name)


def test_create_again_with_same_content_reuses_layers(store):
    name = unique("again")
    body = {"model": name, "from": MODEL_NAME, "system": f"same {uuid.uuid4().hex}"}
    first = create(store.client, body)
    try:
        second = create(store.client, body)
        assert any(s.startswith("creating new layer") for s in first)
        assert not any(s.startswith("creating new layer") for s in second)
        assert tag_names(store.client).count(name) == 1
    finally:
        delete(store.client, name)


def test_create_non_streaming_returns_only_success(store):
    name = unique("quiet")
    r = store.client.post("/api/create", json={"model": name, "from": MODEL_NAME, "stream": False})
    try:
        assert (r.status_code, r.json()) == (200, {"status": "success"})
        assert r.headers["content-type"] == JSON_UTF8
    finally:
        delete(store.client, name)


@pytest.mark.parametrize(
    "modelfile",
    ["FROM smollm2:135m\nPARAMETER temperature 0.2\nSYSTEM hello",
     "# a comment\nfrom {digest}\nparameter temperature 0.2\nsystem \"\"\"hello\"\"\"\n"],
    ids=["from-name", "from-blob"],
)
def test_legacy_modelfile_create(store, modelfile):
    name = unique("legacy")
    text = modelfile.replace("{digest}", "@" + store.gguf_digest)
    statuses = create(store.client, {"model": name, "modelfile": text})
    try:
        assert statuses[-2:] == ["writing manifest", "success"]
        body = show(store.client, name)
        assert body["system"] == "hello"
        assert f"{'temperature':<30} 0.2" in body["parameters"].splitlines()
        assert body["details"]["family"] == "llama"
    finally:
        delete(store.client, name)


@pytest.mark.parametrize(
    ("modelfile", "message"),
    [
        ("SYSTEM hello", "no FROM line"),
        ("FROM smollm2:135m\nSYSTEM hi\nBOGUS thing", f"(line 3): {MODELFILE_COMMANDS}"),
        ("FROM smollm2:135m\nPARAMETER bogus_param 1", "unknown parameter 'bogus_param'"),
        ('FROM smollm2:135m\nSYSTEM """never closed', "unexpected EOF"),
        ("FROM smollm2:135m\nMESSAGE robot hi",
         '(line 2): message role must be one of "system", "user", or "assistant"'),
    ],
)
def test_legacy_modelfile_errors_are_400(store, modelfile, message):
    name = unique("broken")
    r = store.client.post("/api/create", json={"model": name, "modelfile": modelfile})
    assert_error(r, 400, message)
    assert name not in tag_names(store.client)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "nothing"}, "neither 'from' or 'files' was specified"),
        ({"from": MODEL_NAME}, "invalid model name"),
        ({"model": "bad", "files": {"../model.gguf": "sha256:" + "0" * 64}}, "file path must be relative"),
        ({"model": "bad", "files": {"/abs/model.gguf": "sha256:" + "0" * 64}}, "file path must be relative"),
        ({"model": "bad", "files": {"model.gguf": ""}}, "invalid digest format"),
    ],
)
def test_json_create_validation_errors_are_400(store, body, message):
    assert_error(store.client.post("/api/create", json=body), 400, message)


def test_create_with_a_broken_template_is_400(store):
    r = store.client.post("/api/create", json={"model": unique("tmpl"), "from": MODEL_NAME,
                                               "template": "{{ .Prompt "})
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("template error: ")


# -- copy and delete -----------------------------------------------------------------------------


def test_copy_duplicates_the_manifest(store):
    name = unique("copied")
    r = store.client.post("/api/copy", json={"source": MODEL_NAME, "destination": name})
    try:
        assert (r.status_code, r.content) == (200, b"")
        tags = {m["name"]: m for m in store.client.get("/api/tags").json()["models"]}
        assert tags[name]["digest"] == tags[MODEL_NAME]["digest"]
        assert tags[name]["size"] == tags[MODEL_NAME]["size"]
    finally:
        delete(store.client, name)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"source": "no-such-model", "destination": "x"}, 404, 'model "no-such-model" not found'),
        ({"source": "../up", "destination": "x"}, 400, 'source "../up" is invalid'),
        ({"source": MODEL_NAME, "destination": "bad/../../name"}, 400, 'destination "bad/../../name" is invalid'),
    ],
)
def test_copy_errors(store, body, status, message):
    assert_error(store.client.post("/api/copy", json=body), status, message)


def test_delete_removes_the_model(store):
    name = unique("doomed")
    create(store.client, {"model": name, "from": MODEL_NAME})
    r = delete(store.client, name)
    assert (r.status_code, r.content) == (200, b"")
    assert name not in tag_names(store.client)
    assert_error(delete(store.client, name), 404, f"model '{name}' not found")
    # The model it was made from is untouched.
    assert MODEL_NAME in tag_names(store.client)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "no-such-model"}, 404, "model 'no-such-model' not found"),
        ({"model": "../../etc"}, 400, 'name "../../etc" is invalid'),
    ],
)
def test_delete_errors(store, body, status, message):
    assert_error(store.client.request("DELETE", "/api/delete", json=body), status, message)


@pytest.mark.worker_only("the registry store leaves unreferenced blobs to the registry's garbage collector (docs/registries.md)")
def test_delete_keeps_shared_blobs_until_the_last_reference_goes(store):
    system = f"garbage-collected {uuid.uuid4().hex}"
    layer = sha256(system.encode())
    orphan_upload = os.urandom(64)
    original, copy = unique("gc-a"), unique("gc-b")
    create(store.client, {"model": original, "from": MODEL_NAME, "system": system})
    assert store.client.post(f"/api/blobs/{sha256(orphan_upload)}", content=orphan_upload).status_code == 201
    assert store.client.post("/api/copy", json={"source": original, "destination": copy}).status_code == 200
    assert blob_status(store.client, layer) == 200

    assert delete(store.client, original).status_code == 200
    assert blob_status(store.client, layer) == 200  # the copy still uses it
    assert delete(store.client, copy).status_code == 200
    assert blob_status(store.client, layer) == 404
    # Weights other models use, and an upload waiting for its create, are left alone.
    assert blob_status(store.client, store.gguf_digest) == 200
    assert blob_status(store.client, sha256(orphan_upload)) == 200
    assert show(store.client, MODEL_NAME)["details"]["family"] == "llama"


# -- blobs ---------------------------------------------------------------------------------------


def test_blob_upload_is_201_then_200(store):
    data = os.urandom(1024)
    digest = sha256(data)
    assert blob_status(store.client, digest) == 404
    assert store.client.post(f"/api/blobs/{digest}", content=data).status_code == 201
    assert blob_status(store.client, digest) == 200
    assert store.client.post(f"/api/blobs/{digest}", content=data).status_code == 200
    # The dash spelling names the same blob.
    assert blob_status(store.client, digest.replace(":", "-")) == 200


def test_blob_with_wrong_content_is_refused_and_not_stored(store):
    claimed = sha256(b"what I said I would send")
    actual = sha256(b"what I sent")
    r = store.client.post(f"/api/blobs/{claimed}", content=b"what I sent")
    assert_error(r, 400, f'digest mismatch, expected "{claimed}", got "{actual}"')
    assert blob_status(store.client, claimed) == 404
    assert blob_status(store.client, actual) == 404


@pytest.mark.parametrize(
    "digest",
    ["sha256:abc", "sha256:" + "g" * 64, "md5:" + "0" * 64, "sha256:" + "0" * 65, "sha256_" + "0" * 64, "0" * 64],
)
def test_malformed_blob_digest_is_400(store, digest):
    assert_error(store.client.post(f"/api/blobs/{digest}", content=b"x"), 400, "invalid digest format")
    assert store.client.head(f"/api/blobs/{digest}").status_code == 400


# -- names that try to leave the store ------------------------------------------------------------

ESCAPES = ["../../etc/passwd", "a/../../b", "..%2F..%2Fescaped", "x:../../y", "../../../../../../../escaped:latest",
           "host/..\\..\\win/model"]


def sandbox_files(store: Store) -> set[Path]:
    return {p for p in store.sandbox.rglob("*") if p.is_file() and store.own_dir not in p.parents}


@pytest.mark.parametrize("name", ESCAPES)
def test_names_cannot_escape_the_store(store, name):
    before = sandbox_files(store)
    tags_before = tag_names(store.client)
    attempts = [
        ("POST", "/api/create", {"model": name, "from": MODEL_NAME}),
        ("POST", "/api/create", {"model": name, "modelfile": "FROM smollm2:135m"}),
        ("POST", "/api/create", {"model": "fine", "from": name}),
        ("POST", "/api/copy", {"source": MODEL_NAME, "destination": name}),
        ("POST", "/api/copy", {"source": name, "destination": "fine"}),
        ("DELETE", "/api/delete", {"model": name}),
        ("POST", "/api/show", {"model": name}),
        ("POST", "/api/generate", {"model": name}),
    ]
    for method, path, body in attempts:
        r = store.client.request(method, path, json=body)
        assert 400 <= r.status_code < 500, (method, path, body, r.status_code, r.text)
    assert sandbox_files(store) == before
    assert tag_names(store.client) == tags_before
    assert "fine:latest" not in tags_before
    # Every manifest is where a valid name would put it: manifests/<host>/<ns>/<model>/<tag>.
    manifests = store.worker.models_dir / "manifests"
    for path in manifests.rglob("*"):
        if path.is_file():
            assert len(path.relative_to(manifests).parts) == 4, path


@pytest.mark.parametrize("digest", ["..%2F..%2F..%2Fescaped", "sha256:..%2F..%2Fescaped", "sha256-%2E%2E"])
def test_blob_paths_cannot_escape_the_store(store, digest):
    before = sandbox_files(store)
    assert 400 <= store.client.post(f"/api/blobs/{digest}", content=b"payload").status_code < 500
    assert 400 <= store.client.head(f"/api/blobs/{digest}").status_code < 500
    assert sandbox_files(store) == before


# -- ps -------------------------------------------------------------------------------------------


def test_ps_lists_loaded_models_with_expiry_sorted_latest_first(store):
    client = store.client
    r = client.post("/api/generate", json={"model": MODEL_NAME, "prompt": "Hi", "keep_alive": "10m", "stream": False,
                                           "options": {"num_predict": 1, "temperature": 0}})
    assert r.status_code == 200, r.text
    tags = {m["name"]: m for m in client.get("/api/tags").json()["models"]}

    (entry,) = [m for m in client.get("/api/ps").json()["models"] if m["name"] == MODEL_NAME]
    assert entry["model"] == MODEL_NAME
    assert entry["digest"] == tags[MODEL_NAME]["digest"]
    assert entry["details"] == tags[MODEL_NAME]["details"] and entry["details"]["parent_model"] == ""
    assert isinstance(entry["size"], int) and entry["size"] > 0
    assert isinstance(entry["size_vram"], int) and entry["size_vram"] >= 0
    assert isinstance(entry["context_length"], int) and entry["context_length"] > 0
    expires = datetime.fromisoformat(entry["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(minutes=10))) < timedelta(seconds=60)

    pinned = unique("pinned")
    assert client.post("/api/copy", json={"source": MODEL_NAME, "destination": pinned}).status_code == 200
    try:
        r = client.post("/api/generate", json={"model": pinned, "keep_alive": -1})
        assert r.status_code == 200 and r.json()["done_reason"] == "load"
        models = client.get("/api/ps").json()["models"]
        assert [m["name"] for m in models][:2] == [pinned, MODEL_NAME]
        assert datetime.fromisoformat(models[0]["expires_at"]).year > 2300  # "forever"
        expiries = [datetime.fromisoformat(m["expires_at"]) for m in models]
        assert expiries == sorted(expiries, reverse=True)
    finally:
        client.post("/api/generate", json={"model": pinned, "keep_alive": 0})
        delete(client, pinned)


# -- metrics --------------------------------------------------------------------------------------


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


@pytest.mark.worker_only("the worker's own corral_worker_* series; a router serves corral_router_*")
def test_metrics_count_requests_and_time_to_first_token(http):
    before = http.get("/metrics").text
    r = http.post("/api/generate", json={"model": MODEL_NAME, "prompt": "Hi", "stream": False,
                                         "options": {"num_predict": 1, "temperature": 0}})
    assert r.status_code == 200
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = r.text
    route = {"route": "/api/generate", "status": "200"}
    assert sample(after, "corral_worker_requests_total", **route) >= sample(before, "corral_worker_requests_total",
                                                                            **route) + 1
    ttft = "corral_worker_time_to_first_token_seconds_count"
    assert sample(after, ttft, model=MODEL_NAME) >= sample(before, ttft, model=MODEL_NAME) + 1


@pytest.mark.worker_only("the worker's own corral_worker_* series; a router serves corral_router_*")
def test_metrics_time_each_decode_step_inside_and_around_llama_decode(http):
    name = "corral_worker_engine_step_seconds_count"
    before = http.get("/metrics").text
    r = http.post("/api/generate", json={"model": MODEL_NAME, "prompt": "Tell me a story", "stream": False,
                                         "options": {"num_predict": 8, "temperature": 0}})
    assert r.status_code == 200 and r.json()["eval_count"] == 8
    after = http.get("/metrics").text
    # Every generated token after the first needs a decode of its own; the steps after the first
    # also have a "host" time (the loop was busy with this request in between).
    def grew(metric: str, phase: str) -> float:
        return sample(after, metric, model=MODEL_NAME, phase=phase) - sample(before, metric, model=MODEL_NAME,
                                                                               phase=phase)

    decode, host = grew(name, "decode"), grew(name, "host")
    assert decode >= 8 and 7 <= host < decode
    assert grew("corral_worker_engine_step_seconds_sum", "decode") > 0
