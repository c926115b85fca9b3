"""The registry fixtures work: a real Distribution registry, token server and TCP proxy,
driven with plain httpx (no Corral code), and the registry behaviours pull/push rely on."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.support.registries import (
    CONFIG_V1,
    DEFAULT_CONFIG,
    MANIFEST_V2,
    OLLAMA_MODEL,
    OLLAMA_PARAMS,
    BearerAuth,
    RegistryServer,
    TCPProxy,
    TokenServer,
    make_blob_file,
    parse_bearer_challenge,
    push_blob,
    registry_client,
    seed_model,
)

ACCEPT = {"Accept": MANIFEST_V2}


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_registry_starts_fast_and_stops_its_process(tmp_path: Path) -> None:
    started = time.monotonic()
    server = RegistryServer(tmp_path)
    assert time.monotonic() - started < 2
    r = httpx.get(server.url + "/v2/")
    assert r.status_code == 200 and r.headers["docker-distribution-api-version"] == "registry/2.0"
    assert server.url == f"http://{server.host}" and server.storage.parent == tmp_path
    server.stop()
    assert not server.process.alive()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=1):
        pass
    server.stop()  # idempotent


def test_seeded_model_manifest_comes_back_byte_for_byte(registry: RegistryServer, gguf_path: Path) -> None:
    model = seed_model(registry, "library/smollm2", "135m", gguf=gguf_path)
    with httpx.Client(base_url=registry.url) as http:
        r = http.get("/v2/library/smollm2/manifests/135m", headers=ACCEPT)
        assert r.status_code == 200 and r.content == model.manifest
        assert r.headers["docker-content-digest"] == model.digest == _sha(model.manifest)
        assert r.headers["content-type"] == MANIFEST_V2

        manifest = json.loads(model.manifest)
        assert list(manifest) == ["schemaVersion", "mediaType", "config", "layers"]
        assert manifest["config"]["mediaType"] == CONFIG_V1
        assert [layer["mediaType"] for layer in manifest["layers"]] == [OLLAMA_MODEL, OLLAMA_PARAMS]
        assert model.model_layer.size == gguf_path.stat().st_size
        assert model.reference == f"{registry.host}/library/smollm2:135m"

        config = http.get(f"/v2/library/smollm2/blobs/{model.config.digest}").content
        assert config == json.dumps(DEFAULT_CONFIG, separators=(",", ":")).encode()
        params = http.get(f"/v2/library/smollm2/blobs/{model.layers[1].digest}").json()
        assert params == {"stop": ["<|im_start|>", "<|im_end|>"]}

        # a ranged GET of the model blob, which resumed downloads rely on
        r = http.get(f"/v2/library/smollm2/blobs/{model.model_layer.digest}", headers={"Range": "bytes=1000-1999"})
        assert r.status_code == 206
        assert r.headers["content-range"] == f"bytes 1000-1999/{model.model_layer.size}"
        with gguf_path.open("rb") as f:
            f.seek(1000)
            assert r.content == f.read(1000)


def test_manifest_head_delete_catalog_and_tags(registry: RegistryServer) -> None:
    model = seed_model(registry, "ns/tiny", "v1", gguf=b"GGUF tiny", params=None,
                       extra_layers=[("application/vnd.ollama.image.license", b"MIT")])
    assert [layer.media_type for layer in model.layers] == [OLLAMA_MODEL, "application/vnd.ollama.image.license"]
    seed_model(registry, "ns/tiny", "v2", gguf=b"GGUF tiny 2")
    with httpx.Client(base_url=registry.url) as http:
        assert http.get("/v2/_catalog").json() == {"repositories": ["ns/tiny"]}
        assert sorted(http.get("/v2/ns/tiny/tags/list").json()["tags"]) == ["v1", "v2"]

        r = http.head(f"/v2/ns/tiny/manifests/{model.digest}", headers=ACCEPT)
        assert r.status_code == 200 and r.headers["docker-content-digest"] == model.digest
        assert int(r.headers["content-length"]) == len(model.manifest)

        # Distribution 2.8 deletes manifests by digest only; that removes the tag as well
        assert http.delete("/v2/ns/tiny/manifests/v1").status_code == 400
        assert http.delete(f"/v2/ns/tiny/manifests/{model.digest}").status_code == 202
        assert http.get("/v2/ns/tiny/manifests/v1", headers=ACCEPT).status_code == 404
        assert http.get("/v2/ns/tiny/tags/list").json()["tags"] == ["v2"]


def test_registry_behaviours_push_relies_on(registry: RegistryServer, tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    size = 3 * (1 << 20) + 123
    digest = make_blob_file(blob, size)
    assert blob.stat().st_size == size and digest == _sha(blob.read_bytes())
    assert push_blob(registry.url, "src/model", blob) == digest
    assert push_blob(registry.url, "src/model", blob) == digest  # already there: skipped

    with httpx.Client(base_url=registry.url) as http:
        r = http.head(f"/v2/src/model/blobs/{digest}")
        assert r.status_code == 200 and int(r.headers["content-length"]) == size
        assert "last-modified" not in r.headers and r.headers["etag"] == f'"{digest}"'

        # cross-repository mount
        r = http.post("/v2/dst/model/blobs/uploads/", params={"mount": digest, "from": "src/model"})
        assert r.status_code == 201 and r.headers["docker-content-digest"] == digest
        assert http.head(f"/v2/dst/model/blobs/{digest}").status_code == 200

        # an upload's progress, then a wrong digest
        r = http.post("/v2/dst/model/blobs/uploads/")
        assert r.status_code == 202
        r = http.patch(r.url.join(r.headers["location"]), content=b"x" * 1000)
        assert r.status_code == 202 and r.headers["range"] == "0-999"
        location = r.url.join(r.headers["location"])
        r = http.get(location)
        assert r.status_code == 204 and r.headers["range"] == "0-999"
        r = http.put(location.copy_merge_params({"digest": _sha(b"something else")}))
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "DIGEST_INVALID"


@pytest.mark.parametrize("key_hint", ["x5c", "kid"])
def test_token_registry_demands_and_accepts_bearer_tokens(tmp_path: Path, key_hint: str) -> None:
    with TokenServer(tmp_path, key_hint=key_hint) as tokens, RegistryServer(tmp_path, token_server=tokens) as reg:
        r = httpx.get(reg.url + "/v2/library/tiny/manifests/latest", headers=ACCEPT)
        assert r.status_code == 401
        assert parse_bearer_challenge(r.headers["www-authenticate"]) == {
            "realm": tokens.realm, "service": tokens.service, "scope": "repository:library/tiny:pull",
        }
        model = seed_model(reg, "library/tiny", "latest", gguf=b"GGUF tiny")
        assert any(q.actions("library/tiny") == {"pull", "push"} for q in tokens.requests)

        tokens.requests.clear()
        auth = BearerAuth()
        with registry_client(reg.url, auth) as http:
            r = http.get("/v2/library/tiny/manifests/latest", headers=ACCEPT)
            assert r.status_code == 200 and r.content == model.manifest
            assert http.get(f"/v2/library/tiny/blobs/{model.model_layer.digest}").content == b"GGUF tiny"
        assert auth.token_fetches == 1  # the second request reused the token
        [request] = tokens.requests
        assert request.path == "/token" and request.query["service"] == [tokens.service]
        assert request.scopes == ["repository:library/tiny:pull"]

        async def tags_async() -> httpx.Response:
            async with httpx.AsyncClient(base_url=reg.url, auth=BearerAuth()) as http:
                return await http.get("/v2/library/tiny/tags/list")

        assert asyncio.run(tags_async()).json() == {"name": "library/tiny", "tags": ["latest"]}
        assert len(tokens.requests) == 2


def test_token_server_can_demand_basic_credentials(tmp_path: Path) -> None:
    with TokenServer(tmp_path, username="alice", password="s3cret") as tokens, \
            RegistryServer(tmp_path, token_server=tokens) as reg:
        r = httpx.get(tokens.realm, params={"service": tokens.service, "scope": "repository:a/b:pull"})
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic ")
        with registry_client(reg.url, BearerAuth("alice", "wrong")) as http:
            assert http.get("/v2/a/b/tags/list").status_code == 401
        seed_model(reg, "a/b", "t", gguf=b"GGUF")  # takes the token server's credentials
        with registry_client(reg.url, BearerAuth("alice", "s3cret")) as http:
            assert http.get("/v2/a/b/tags/list").json() == {"name": "a/b", "tags": ["t"]}
        assert tokens.requests[-1].user == "alice"
        assert tokens.requests[-1].headers["authorization"].startswith("Basic ")


def test_token_server_grants_only_what_grant_allows(tmp_path: Path) -> None:
    def read_only(user, kind, name, actions):
        return [a for a in actions if a == "pull"]

    with TokenServer(tmp_path, grant=read_only) as tokens, RegistryServer(tmp_path, token_server=tokens) as reg, \
            pytest.raises(RuntimeError, match="401"):
        push_blob(reg.url, "a/b", b"data")


def test_token_registry_fixture_lists_the_catalog_with_a_catalog_token(
    token_registry: RegistryServer, token_server: TokenServer
) -> None:
    assert token_registry.token_server is token_server
    with token_registry.client() as http:
        assert http.get("/v2/_catalog").json() == {"repositories": []}
    [request] = token_server.requests
    assert request.scopes == ["registry:catalog:*"]


def test_proxy_counts_requests_and_cuts_a_blob_download_once(registry: RegistryServer, tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    make_blob_file(blob, 4 << 20)
    body = [b"GET /fake HTTP/1.1\r\n\r\n", blob.read_bytes()]
    digest, size = _sha(b"".join(body)), sum(map(len, body))
    with TCPProxy(registry.url) as proxy:
        # a chunked upload whose body holds something like a request line: not counted
        with httpx.Client(base_url=proxy.url) as http:
            r = http.post("/v2/p/q/blobs/uploads/")
            put = http.put(r.url.join(r.headers["location"]).copy_merge_params({"digest": digest}),
                           content=iter(body))
            assert put.status_code == 201, put.text
            proxy.cut_after(f"/blobs/{digest}", 1_000_000, method="GET")
            assert http.head(f"/v2/p/q/blobs/{digest}").status_code == 200  # a HEAD isn't cut

            received = 0
            with pytest.raises(httpx.RemoteProtocolError), http.stream("GET", f"/v2/p/q/blobs/{digest}") as r:
                assert r.status_code == 200
                for chunk in r.iter_raw():
                    received += len(chunk)
            assert received == 1_000_000

            r = http.get(f"/v2/p/q/blobs/{digest}", headers={"Range": f"bytes={received}-"})
            assert r.status_code == 206 and len(r.content) == size - received

        assert proxy.cuts_done == 1
        assert proxy.count("POST", "/blobs/uploads/") == 1 and proxy.count("PUT") == 1
        assert proxy.count("HEAD") == 1 and proxy.count("GET", f"/blobs/{digest}") == 2
        assert proxy.count(path_contains="/fake") == 0
        assert proxy.bytes_sent(f"/blobs/{digest}") > size
        assert proxy.connections >= 2  # the cut closed the first one


def test_seeding_through_a_proxy_counts_each_blob_upload(registry: RegistryServer, gguf_path: Path) -> None:
    with TCPProxy(registry.host) as proxy:
        model = seed_model(proxy.url, "library/smollm2", "135m", gguf=gguf_path)
        assert proxy.count("POST") == 3 and proxy.count("PUT", "/blobs/uploads/") == 3
        assert proxy.count("PUT", "/manifests/135m") == 1
        r = httpx.get(f"{proxy.url}/v2/library/smollm2/manifests/135m", headers=ACCEPT)
        assert r.content == model.manifest
