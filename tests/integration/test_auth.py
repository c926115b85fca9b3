"""API keys (CORRAL_AUTH=keys), end to end: a ``corral up`` cluster with two routers behind
nginx, the real clients (ollama with OLLAMA_API_KEY, the OpenAI SDK with api_key,
langchain-ollama) and raw HTTP; limits checked across both routers, usage against what the
clients were told. docs/sharing.md describes what is tested here."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import anthropic
import httpx
import ollama
import openai
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from corral.settings import derived_cluster_token
from tests.support.answers import JSON_UTF8, assert_error, wait_for
from tests.support.cluster import Cluster
from tests.support.hostile import BIG_INTS, Probe, Wire, body_bytes, check_answer, either, odd_text, small_text
from tests.support.model import MODEL_NAME

pytestmark = pytest.mark.integration

ADMIN_KEY = "test-admin-key-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
OTHER_MODEL = "other:latest"  # the test model again, under a second name
NO_KEY = "unauthorized: no API key (send Authorization: Bearer <key>)"
BAD_KEY = "unauthorized: invalid API key"
NOT_ADMIN = "this API key may not manage the cluster: an admin key is needed"
CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "stream": False,
        "options": {"num_predict": 4, "temperature": 0}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, gguf_path: Path, gguf_digest: str) -> Iterator[Cluster]:
    # OLLAMA_MAX_QUEUE=8: a key may have half of it (4) in flight (CORRAL_KEY_QUEUE_SHARE's default).
    env = {"CORRAL_AUTH": "keys", "CORRAL_ADMIN_KEY": ADMIN_KEY, "OLLAMA_MAX_QUEUE": "8"}
    with Cluster(tmp_path_factory.mktemp("auth"), workers=1, routers=2, env=env) as c:
        c.import_models(gguf_path, gguf_digest, headers=ADMIN)
        r = httpx.post(c.endpoint + "/api/copy", json={"source": MODEL_NAME, "destination": OTHER_MODEL},
                       headers=ADMIN, timeout=60)
        assert r.status_code == 200, r.text
        yield c


def new_key(cluster: Cluster, name: str, **fields: object) -> str:
    r = httpx.post(cluster.endpoint + "/api/cluster/keys", json={"name": name, **fields}, headers=ADMIN, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == name and body["key"].startswith("corral-") and set(body) == {"name", "key"}
    return body["key"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_openai_error(r: httpx.Response, status: int, message: str, type_: str, code: str | None) -> None:
    assert r.status_code == status, r.text
    assert r.json() == {"error": {"message": message, "type": type_, "param": None, "code": code}}


# -- who may call what --------------------------------------------------------------------------


def test_only_the_root_and_the_version_answer_without_a_key(cluster: Cluster) -> None:
    assert httpx.get(cluster.endpoint + "/").text == "Ollama is running"
    assert httpx.head(cluster.endpoint + "/").status_code == 200
    assert httpx.get(cluster.endpoint + "/api/version").status_code == 200
    for method, path in [("GET", "/api/tags"), ("POST", "/api/chat"), ("GET", "/api/ps"), ("POST", "/api/show"),
                         ("GET", "/api/cluster/workers"), ("POST", "/api/pull"), ("GET", "/nowhere")]:
        assert_error(httpx.request(method, cluster.endpoint + path, json=CHAT), 401, NO_KEY)


def test_a_missing_or_unknown_key_is_401_in_each_route_s_format(cluster: Cluster) -> None:
    url = cluster.endpoint
    assert_error(httpx.post(url + "/api/chat", json=CHAT, headers=bearer("corral-nope")), 401, BAD_KEY)
    assert_error(httpx.post(url + "/api/chat", json=CHAT, headers={"Authorization": "Basic abc"}), 401, NO_KEY)
    assert_error(httpx.get(url + "/api/tags", headers=bearer("x" * 5000)), 401, BAD_KEY)
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}]}
    r = httpx.post(url + "/v1/chat/completions", json=body)
    assert_openai_error(r, 401, NO_KEY, "invalid_request_error", "invalid_api_key")
    r = httpx.post(url + "/v1/chat/completions", json=body, headers={"x-api-key": "corral-nope"})
    assert_openai_error(r, 401, BAD_KEY, "invalid_request_error", "invalid_api_key")
    assert r.headers["content-type"] == JSON_UTF8


def test_a_key_works_as_a_bearer_token_and_as_x_api_key(cluster: Cluster) -> None:
    key = new_key(cluster, "both-headers")
    for headers in (bearer(key), {"x-api-key": key}, {"authorization": f"bearer {key}"}):
        r = httpx.post(cluster.endpoint + "/api/chat", json=CHAT, headers=headers, timeout=120)
        assert r.status_code == 200 and r.json()["done"] is True, r.text


def test_a_user_key_cannot_change_the_cluster(cluster: Cluster) -> None:
    key = new_key(cluster, "plain-user")
    url = cluster.endpoint
    for method, path, body in [
        ("POST", "/api/create", {"model": "x", "from": MODEL_NAME}),
        ("DELETE", "/api/delete", {"model": MODEL_NAME}),
        ("POST", "/api/copy", {"source": MODEL_NAME, "destination": "y"}),
        ("POST", "/api/pull", {"model": "z"}),
        ("POST", "/api/push", {"model": MODEL_NAME}),
        ("HEAD", f"/api/blobs/sha256:{'0' * 64}", None),
        ("GET", "/api/cluster/workers", None),
        ("GET", "/api/cluster/keys", None),
        ("GET", "/api/cluster/usage", None),
    ]:
        r = httpx.request(method, url + path, json=body, headers=bearer(key))
        if method == "HEAD":
            assert r.status_code == 403
        else:
            assert_error(r, 403, NOT_ADMIN)
    assert MODEL_NAME in [m["name"] for m in httpx.get(url + "/api/tags", headers=ADMIN).json()["models"]]
    # A user key reads: tags, show, ps, /v1/models.
    assert httpx.get(url + "/api/tags", headers=bearer(key)).status_code == 200
    assert httpx.post(url + "/api/show", json={"model": MODEL_NAME}, headers=bearer(key)).status_code == 200
    assert httpx.get(url + "/api/ps", headers=bearer(key)).status_code == 200
    assert httpx.get(url + "/v1/models", headers=bearer(key)).status_code == 200


def test_a_key_limited_to_one_model_sees_and_uses_only_that_model(cluster: Cluster) -> None:
    key = new_key(cluster, "one-model", models=[OTHER_MODEL.removesuffix(":latest")])
    url, headers = cluster.endpoint, bearer(key)
    assert [m["name"] for m in httpx.get(url + "/api/tags", headers=headers).json()["models"]] == [OTHER_MODEL]
    assert [m["id"] for m in httpx.get(url + "/v1/models", headers=headers).json()["data"]] == [OTHER_MODEL]
    assert {m["name"] for m in httpx.get(url + "/api/tags", headers=ADMIN).json()["models"]} >= {MODEL_NAME, OTHER_MODEL}
    r = httpx.post(url + "/api/chat", json={**CHAT, "model": OTHER_MODEL}, headers=headers, timeout=120)
    assert r.status_code == 200, r.text
    assert_error(httpx.post(url + "/api/chat", json=CHAT, headers=headers), 403,
                 f"this API key may not use model '{MODEL_NAME}'")
    assert_error(httpx.post(url + "/api/show", json={"model": MODEL_NAME}, headers=headers), 403,
                 f"this API key may not use model '{MODEL_NAME}'")
    r = httpx.post(url + "/v1/chat/completions", headers=headers,
                   json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}]})
    assert_openai_error(r, 403, f"this API key may not use model '{MODEL_NAME}'", "invalid_request_error",
                        "permission_denied")
    assert httpx.get(url + f"/v1/models/{MODEL_NAME}", headers=headers).status_code == 403
    assert MODEL_NAME not in json.dumps(httpx.get(url + "/api/ps", headers=headers).json())


# -- the real clients -------------------------------------------------------------------------------


def test_the_ollama_client_sends_ollama_api_key(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    key = new_key(cluster, "ollama-client")
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=cluster.endpoint).chat(model=MODEL_NAME, messages=CHAT["messages"])
    assert refused.value.status_code == 401 and refused.value.error == NO_KEY
    monkeypatch.setenv("OLLAMA_API_KEY", key)
    client = ollama.Client(host=cluster.endpoint)
    answer = client.chat(model=MODEL_NAME, messages=CHAT["messages"], options=CHAT["options"])
    assert answer.done and answer.eval_count
    assert MODEL_NAME in [m.model for m in client.list().models]
    with pytest.raises(ollama.ResponseError) as forbidden:
        client.delete(MODEL_NAME)
    assert forbidden.value.status_code == 403 and forbidden.value.error == NOT_ADMIN


def test_the_openai_sdk_sends_its_api_key(cluster: Cluster) -> None:
    key = new_key(cluster, "openai-client")
    client = openai.OpenAI(base_url=cluster.endpoint + "/v1", api_key=key, max_retries=0)
    answer = client.chat.completions.create(model=MODEL_NAME, messages=CHAT["messages"], max_tokens=4)
    assert answer.choices[0].message.content is not None
    wrong = openai.OpenAI(base_url=cluster.endpoint + "/v1", api_key="corral-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.models.list()
    assert refused.value.code == "invalid_api_key"


def test_the_anthropic_sdk_sends_its_api_key(cluster: Cluster) -> None:
    """x-api-key, as the Anthropic SDK sends it; refusals in Anthropic's envelope and types."""
    key = new_key(cluster, "anthropic-client", models=[MODEL_NAME])
    ask = {"model": MODEL_NAME, "max_tokens": 4, "messages": CHAT["messages"]}
    answer = anthropic.Anthropic(base_url=cluster.endpoint, api_key=key, max_retries=0).messages.create(**ask)
    assert answer.content and answer.usage.output_tokens
    with pytest.raises(anthropic.AuthenticationError) as refused:
        anthropic.Anthropic(base_url=cluster.endpoint, api_key="corral-wrong", max_retries=0).messages.create(**ask)
    assert refused.value.body["error"] == {"type": "authentication_error", "message": BAD_KEY}
    with pytest.raises(anthropic.PermissionDeniedError) as forbidden:
        anthropic.Anthropic(base_url=cluster.endpoint, api_key=key, max_retries=0).messages.create(
            **{**ask, "model": OTHER_MODEL})
    assert forbidden.value.body["error"]["message"] == f"this API key may not use model '{OTHER_MODEL}'"
    r = httpx.post(cluster.endpoint + "/v1/messages", json=ask)
    assert r.status_code == 401 and r.json()["error"] == {"type": "authentication_error", "message": NO_KEY}


def test_transcriptions_take_a_key_and_its_model_list(cluster: Cluster) -> None:
    """/v1/audio/transcriptions is inference: any valid key, for a model on its list."""
    key = new_key(cluster, "transcriber", models=[MODEL_NAME])
    ask = {"file": ("a.wav", b"RIFF\x00\x00\x00\x00WAVE")}
    r = httpx.post(cluster.endpoint + "/v1/audio/transcriptions", files=ask, data={"model": MODEL_NAME})
    assert r.status_code == 401 and r.json()["error"]["message"] == NO_KEY
    client = openai.OpenAI(base_url=cluster.endpoint + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as forbidden:
        client.audio.transcriptions.create(model=OTHER_MODEL, file=ask["file"])
    assert forbidden.value.body["message"] == f"this API key may not use model '{OTHER_MODEL}'"
    with pytest.raises(openai.BadRequestError) as refused:  # past the key: the model's own answer
        client.audio.transcriptions.create(model=MODEL_NAME, file=ask["file"])
    assert refused.value.body["message"] == f'"{MODEL_NAME}" does not support vision'


def test_langchain_ollama_uses_the_key(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_ollama import ChatOllama

    monkeypatch.setenv("OLLAMA_API_KEY", new_key(cluster, "langchain"))
    answer = ChatOllama(model=MODEL_NAME, base_url=cluster.endpoint, num_predict=4, temperature=0).invoke("Hi")
    assert isinstance(answer.content, str)


# -- limits ---------------------------------------------------------------------------------------------


def test_an_rpm_limit_holds_across_both_routers_under_concurrent_load(cluster: Cluster) -> None:
    key = new_key(cluster, "rpm-30", rpm=30)
    urls = cluster.router_urls()
    assert len(urls) == 2

    def call(i: int) -> httpx.Response:
        return httpx.get(urls[i % 2] + "/api/tags", headers=bearer(key), timeout=30)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, range(60)))
    ok = [r for r in answers if r.status_code == 200]
    limited = [r for r in answers if r.status_code == 429]
    assert len(ok) == 30 and len(limited) == 30, [r.status_code for r in answers]
    for r in limited:
        assert_error(r, 429, "rate limit reached for key 'rpm-30': 30 requests per minute")
        assert 1 <= int(r.headers["Retry-After"]) <= 60
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}]}
    r = httpx.post(cluster.endpoint + "/v1/chat/completions", json=body, headers=bearer(key))
    assert_openai_error(r, 429, "rate limit reached for key 'rpm-30': 30 requests per minute", "requests",
                        "rate_limit_exceeded")


def test_a_tpm_limit_holds_across_streamed_requests(cluster: Cluster) -> None:
    limit = 150
    key = new_key(cluster, "tpm-150", tpm=limit)
    client = ollama.Client(host=cluster.endpoint, headers=bearer(key))
    spent, last = 0, 0
    for _ in range(20):
        try:
            chunks = list(client.chat(model=MODEL_NAME, messages=CHAT["messages"], stream=True,
                                      options={"num_predict": 30, "temperature": 0}))
        except ollama.ResponseError as exc:
            assert exc.status_code == 429 and exc.error == f"rate limit reached for key 'tpm-150': {limit} tokens per minute"
            break
        final = chunks[-1]
        last = final.prompt_eval_count + final.eval_count
        spent += last
        # The worker reports the tokens once the answer is out: wait until they are counted.
        wait_for("the tokens to be counted", lambda s=spent: _usage(cluster, "tpm-150")["totals"]["prompt_tokens"]
                 + _usage(cluster, "tpm-150")["totals"]["generated_tokens"] >= s, 10)
    else:
        pytest.fail("never limited")
    assert limit <= spent < limit + last  # passed by at most the request that crossed it
    r = httpx.post(cluster.endpoint + "/v1/chat/completions", headers=bearer(key),
                   json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}]})
    assert_openai_error(r, 429, f"rate limit reached for key 'tpm-150': {limit} tokens per minute", "tokens",
                        "rate_limit_exceeded")
    assert 1 <= int(r.headers["Retry-After"]) <= 61  # tokens are kept per second: the window ends with one


def test_one_key_cannot_fill_the_queue_alone(cluster: Cluster) -> None:
    key = new_key(cluster, "greedy")
    patient = new_key(cluster, "patient")
    # Long answers (no early end of sequence), one at a time on the one worker (OLLAMA_NUM_PARALLEL=1).
    long = {"model": MODEL_NAME, "prompt": "Count from 1 to 1000, separated by commas: 1, 2, 3,", "raw": True,
            "stream": False, "options": {"num_predict": 300, "temperature": 0}}

    def long_call(_: int) -> int:
        return httpx.post(cluster.endpoint + "/api/generate", json=long, headers=bearer(key), timeout=300).status_code

    # OLLAMA_MAX_QUEUE=8: the key may have 4 requests in flight (queued or running), cluster-wide.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        running = pool.map(long_call, range(4))
        time.sleep(1.5)
        assert_error(httpx.post(cluster.endpoint + "/api/chat", json=CHAT, headers=bearer(key)), 429,
                     "too many requests in flight for key 'greedy': at most 4 at once")
        other = httpx.post(cluster.endpoint + "/api/chat", json=CHAT, headers=bearer(patient), timeout=300)
        assert other.status_code == 200, other.text  # another key is not held back
        assert list(running) == [200] * 4
    # Once they end, the key may go again.
    wait_for("the key's requests to leave", lambda: httpx.post(
        cluster.endpoint + "/api/chat", json=CHAT, headers=bearer(key), timeout=120).status_code == 200, 20, 0.5)


def test_a_revoked_key_stops_working_on_every_router_within_a_second(cluster: Cluster) -> None:
    key = new_key(cluster, "short-lived")
    urls = cluster.router_urls()
    for url in urls:  # each router has seen the key now (its inference requests are admitted with their slot)
        assert httpx.get(url + "/api/tags", headers=bearer(key)).status_code == 200
        assert httpx.post(url + "/api/chat", json=CHAT, headers=bearer(key), timeout=120).status_code == 200
    r = httpx.request("DELETE", cluster.endpoint + "/api/cluster/keys", json={"name": "short-lived"}, headers=ADMIN)
    assert r.status_code == 200
    revoked = time.monotonic()
    for url in urls:
        assert_error(httpx.get(url + "/api/tags", headers=bearer(key)), 401, BAD_KEY)
        assert_error(httpx.post(url + "/api/chat", json=CHAT, headers=bearer(key), timeout=120), 401, BAD_KEY)
        assert_error(httpx.post(url + "/api/chat", content=b"{", headers=bearer(key)), 401, BAD_KEY)  # before its 400
    assert time.monotonic() - revoked < 1.0
    names = [k["name"] for k in httpx.get(cluster.endpoint + "/api/cluster/keys", headers=ADMIN).json()["keys"]]
    assert "short-lived" not in names


# -- inside the cluster -------------------------------------------------------------------------------


def test_a_worker_reached_directly_refuses_requests_without_the_cluster_token(cluster: Cluster) -> None:
    worker = _worker_url(cluster)
    assert httpx.get(worker + "/").status_code == 200  # probes
    assert httpx.get(worker + "/metrics").status_code == 200  # Prometheus
    for method, path in [("POST", "/api/chat"), ("GET", "/api/tags"), ("POST", "/api/pull"), ("GET", "/api/ps")]:
        r = httpx.request(method, worker + path, json=CHAT, headers=ADMIN)
        assert_error(r, 401, "unauthorized: this worker serves the cluster's routers only")
    token = derived_cluster_token(ADMIN_KEY)  # no CORRAL_CLUSTER_TOKEN given: from the admin key
    r = httpx.get(worker + "/api/tags", headers={"x-corral-cluster-token": token})
    assert r.status_code == 200


def _worker_url(cluster: Cluster) -> str:
    r = httpx.get(cluster.endpoint + "/api/cluster/workers", headers=ADMIN)
    assert r.status_code == 200, r.text
    return r.json()["workers"][0]["url"]


# -- usage -------------------------------------------------------------------------------------------


def _usage(cluster: Cluster, name: str, window: str = "1h") -> dict:
    r = httpx.get(cluster.endpoint + "/api/cluster/usage", params={"window": window, "key": name}, headers=ADMIN)
    assert r.status_code == 200, r.text
    return r.json()


def test_usage_totals_equal_what_the_clients_were_told(cluster: Cluster) -> None:
    key = new_key(cluster, "metered")
    client = ollama.Client(host=cluster.endpoint, headers=bearer(key))
    prompt = generated = 0
    answer = client.generate(model=MODEL_NAME, prompt="Count to three.", options={"num_predict": 8})
    prompt, generated = prompt + answer.prompt_eval_count, generated + answer.eval_count
    *_, last = client.chat(model=OTHER_MODEL, messages=CHAT["messages"], stream=True, options={"num_predict": 6})
    prompt, generated = prompt + last.prompt_eval_count, generated + last.eval_count
    embedded = client.embed(model=MODEL_NAME, input=["one", "two words"])
    prompt += embedded.prompt_eval_count
    with pytest.raises(ollama.ResponseError):
        client.chat(model="missing-model", messages=CHAT["messages"])
    want = {"requests": 4, "errors": 1, "prompt_tokens": prompt, "generated_tokens": generated}
    wait_for("usage to add up", lambda: _usage(cluster, "metered")["totals"] == want, 10, 0.2)
    usage = _usage(cluster, "metered")
    assert [k["name"] for k in usage["keys"]] == ["metered"]
    by_model = {m["model"]: m for m in usage["keys"][0]["models"]}
    assert by_model[MODEL_NAME]["requests"] == 2 and by_model[OTHER_MODEL]["generated_tokens"] == last.eval_count
    assert by_model["missing-model:latest"]["errors"] == 1
    # Prometheus: by the key's name, never its secret.
    # (routers add their counts to Prometheus once a second)
    wait_for("the key's requests in Prometheus",
             lambda: cluster.metrics().value("corral_router_key_requests_total", key="metered") == 4, 10, 0.2)
    for url in cluster.router_urls() + [_worker_url(cluster)]:
        assert key not in httpx.get(url + "/metrics").text


def test_secrets_never_reach_the_logs(cluster: Cluster) -> None:
    key = new_key(cluster, "quiet")
    httpx.post(cluster.endpoint + "/api/chat", json=CHAT, headers=bearer(key), timeout=120)
    logs = "".join(p.read_text(errors="replace") for p in cluster.logs.glob("*.log"))
    assert "quiet" in logs  # the key's name is logged when it is made...
    assert key not in logs and ADMIN_KEY not in logs  # ...its secret never


# -- the admin API refuses what it cannot store ---------------------------------------------------------


def test_the_key_admin_api_refuses_bad_input(cluster: Cluster) -> None:
    url = cluster.endpoint + "/api/cluster/keys"

    def post(body: object) -> httpx.Response:
        return httpx.post(url, content=json.dumps(body), headers=ADMIN)

    name_rule = "invalid key name: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    assert_error(post({}), 400, name_rule)
    assert_error(post({"name": "-x"}), 400, name_rule)
    assert_error(post({"name": "a" * 65}), 400, name_rule)
    assert_error(post({"name": "admin"}), 400, "the key name 'admin' is CORRAL_ADMIN_KEY's")
    assert_error(post({"name": 7}), 400,
                 "json: cannot unmarshal number into Go struct field KeyRequest.name of type string")
    assert_error(post({"name": "x", "rpm": "10"}), 400,
                 "json: cannot unmarshal string into Go struct field KeyRequest.rpm of type int")
    assert_error(post({"name": "x", "rpm": -1}), 400, "rpm must be between 1 and 1000000000, or null for no limit")
    assert_error(post({"name": "x", "models": ["bad name!"]}), 400, "invalid model name in models: 'bad name!'")
    assert_error(post({"name": "x", "models": "all"}), 400,
                 "json: cannot unmarshal string into Go struct field KeyRequest.models of type []string")
    assert_error(httpx.post(url, content=b"{", headers=ADMIN), 400, "unexpected EOF")
    new_key(cluster, "twice")
    assert_error(post({"name": "twice"}), 409, "key 'twice' already exists")
    r = httpx.request("DELETE", url, json={"name": "never-made"}, headers=ADMIN)
    assert_error(r, 404, "key 'never-made' not found")
    assert_error(httpx.request("DELETE", url, json={}, headers=ADMIN), 400, "name is required")
    listed = httpx.get(url, headers=ADMIN).json()["keys"]
    twice = next(k for k in listed if k["name"] == "twice")
    assert set(twice) == {"name", "admin", "models", "rpm", "tpm", "created_at"}  # no secret, no hash
    usage = cluster.endpoint + "/api/cluster/usage"
    assert_error(httpx.get(usage, params={"window": "soon"}, headers=ADMIN), 400,
                 "invalid window: 'soon' (a duration such as 1h or 30m)")
    assert_error(httpx.get(usage, params={"window": "9000h"}, headers=ADMIN), 400,
                 "window must be more than 0 and at most 35 days")
    # Every refusal kept the connection: the router still answers on it.
    with httpx.Client(headers=ADMIN) as client:
        for _ in range(3):
            assert client.post(url, content=b"[").status_code == 400
        assert client.get(cluster.endpoint + "/api/version").status_code == 200


def test_an_admin_key_made_through_the_api_manages_the_cluster(cluster: Cluster) -> None:
    second = new_key(cluster, "second-admin", admin=True)
    r = httpx.get(cluster.endpoint + "/api/cluster/workers", headers=bearer(second))
    assert r.status_code == 200 and r.json()["workers"]
    r = httpx.post(cluster.endpoint + "/api/cluster/keys", json={"name": "made-by-second"}, headers=bearer(second))
    assert r.status_code == 200


# -- the Tenants dashboard ---------------------------------------------------------------------------


def test_the_tenants_dashboard_has_data_with_keys_on(cluster: Cluster, tmp_path: Path) -> None:
    from tests.support import dashboards

    jobs = {"router": [u.removeprefix("http://") for u in cluster.router_urls()],
            "worker": [_worker_url(cluster).removeprefix("http://")]}
    with dashboards.Prometheus(tmp_path / "prometheus", jobs) as prometheus:
        wait_for("Prometheus to scrape every target", lambda: [
            t["health"] for t in dashboards.targets(prometheus.url)].count("up") == 3, timeout=60, interval=0.5)
        key = new_key(cluster, "dashboarded", rpm=2, models=[MODEL_NAME])
        client = ollama.Client(host=cluster.endpoint, headers=bearer(key))
        client.chat(model=MODEL_NAME, messages=CHAT["messages"], options=CHAT["options"])
        with pytest.raises(ollama.ResponseError):
            client.chat(model=OTHER_MODEL, messages=CHAT["messages"])  # 403: not its model (an error, too)
        with pytest.raises(ollama.ResponseError):
            client.chat(model=MODEL_NAME, messages=CHAT["messages"])  # 429: its third request this minute
        httpx.get(cluster.endpoint + "/api/tags", headers=bearer("corral-unknown"))  # 401
        problems = dashboards.check_all(prometheus.url, "5m", 30.0, dashboards.KEYS_ONLY)
    assert not problems, "Tenants queries without data:\n" + "\n".join(f"  {q}\n      -> {p}" for q, p in problems.items())


# -- corral keys ----------------------------------------------------------------------------------------


def corral(cluster: Cluster, *args: str, key: str = ADMIN_KEY) -> subprocess.CompletedProcess:
    env = {**os.environ, "OLLAMA_HOST": cluster.endpoint, "OLLAMA_API_KEY": key}
    return subprocess.run([sys.executable, "-m", "corral.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_corral_keys_then_the_clients_unchanged(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    made = corral(cluster, "keys", "create", "from-the-shell", "--models", MODEL_NAME, "--rpm", "100")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("corral-") and "only time it is shown" in made.stderr
    listed = corral(cluster, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["NAME", "ADMIN", "MODELS", "RPM", "TPM", "CREATED"]
    row = next(r.split() for r in rows if r.startswith("from-the-shell "))
    assert row[1:5] == ["no", MODEL_NAME, "100", "-"] and key not in listed.stdout
    # The user exports the key and runs an app: the ollama and openai clients work unchanged.
    app = f"""
import os, ollama, openai
print(ollama.chat(model="{MODEL_NAME}", messages=[{{"role": "user", "content": "Hi"}}], options={{"num_predict": 4}}).done)
client = openai.OpenAI(base_url=os.environ["OLLAMA_HOST"] + "/v1", api_key=os.environ["OLLAMA_API_KEY"])
print(bool(client.chat.completions.create(model="{MODEL_NAME}", messages=[{{"role": "user", "content": "Hi"}}],
                                          max_tokens=4).choices))
"""
    ran = subprocess.run([sys.executable, "-c", app], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OLLAMA_HOST": cluster.endpoint, "OLLAMA_API_KEY": key})
    assert (ran.returncode, ran.stdout.split()) == (0, ["True", "True"]), ran.stderr
    monkeypatch.setenv("OLLAMA_API_KEY", key)
    # A user key cannot manage keys; errors as ollama prints them, exit 1.
    refused = corral(cluster, "keys", "list", key=key)
    assert (refused.returncode, refused.stderr.strip()) == (1, f"Error: {NOT_ADMIN}")
    usage = corral(cluster, "keys", "usage", "--window", "1h")
    assert usage.returncode == 0 and "from-the-shell" in usage.stdout, usage.stderr
    gone = corral(cluster, "keys", "revoke", "from-the-shell")
    assert (gone.returncode, gone.stdout.strip()) == (0, "revoked 'from-the-shell'")
    again = corral(cluster, "keys", "revoke", "from-the-shell")
    assert (again.returncode, again.stderr.strip()) == (1, "Error: key 'from-the-shell' not found")
    with pytest.raises(ollama.ResponseError) as revoked:
        ollama.Client(host=cluster.endpoint).chat(model=MODEL_NAME, messages=CHAT["messages"])
    assert revoked.value.status_code == 401


# -- hostile input on the new routes ---------------------------------------------------------------------

KEY_FIELDS = {
    "name": either(st.one_of(st.sampled_from(["fuzzed", "admin", "-x", "a" * 65, ""]), odd_text)),
    "admin": either(st.booleans()),
    "models": either(st.one_of(st.none(), st.lists(st.one_of(st.just(MODEL_NAME), odd_text), max_size=3))),
    "rpm": either(st.one_of(st.none(), st.integers(-3, 5), st.sampled_from(BIG_INTS))),
    "tpm": either(st.one_of(st.none(), st.integers(-3, 5), st.sampled_from(BIG_INTS))),
}


@st.composite
def admin_probes(draw: st.DrawFn) -> Probe:
    kind = draw(st.sampled_from(["create", "revoke", "usage"]))
    if kind == "usage":
        window = draw(st.one_of(st.sampled_from(["1h", "0", "-1h", "1e9h", "9999h", "", "%00"]), small_text))
        return Probe("GET", "/api/cluster/usage?window=" + quote(window, safe="%"), b"", False)
    raw, _ = draw(body_bytes(KEY_FIELDS if kind == "create" else {"name": KEY_FIELDS["name"]}))
    return Probe("POST" if kind == "create" else "DELETE", "/api/cluster/keys", raw, False)


def test_hostile_admin_requests_get_a_4xx_and_keep_the_connection(cluster: Cluster) -> None:
    wire = Wire(cluster.endpoint, headers=ADMIN)

    @seed(18)
    @settings(max_examples=60, deadline=None, database=None, print_blob=False, suppress_health_check=list(HealthCheck))
    @given(admin_probes())
    def run(probe: Probe) -> None:
        status, headers, body = wire.send(probe)
        check_answer(probe, status, headers, body)
        if status == 200 and probe.method == "POST":  # a valid key: revoke it again
            name = json.loads(body)["name"]
            assert httpx.request("DELETE", cluster.endpoint + "/api/cluster/keys", json={"name": name},
                                 headers=ADMIN).status_code == 200
        wire.alive()

    try:
        run()
    finally:
        wire.close()


def test_hostile_keys_get_a_401_and_keep_the_connection(cluster: Cluster) -> None:
    header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=600)

    @seed(19)
    @settings(max_examples=40, deadline=None, database=None, print_blob=False, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(["Authorization", "x-api-key"]), header_text, st.sampled_from(["", "Bearer ", "bearer  "]))
    def run(header: str, value: str, scheme: str) -> None:
        wire = Wire(cluster.endpoint, headers={header: (scheme + value) if header == "Authorization" else value})
        try:
            status, _, body = wire.send(Probe("GET", "/api/tags", b"", False))
            assert status == 401 and json.loads(body)["error"] in (NO_KEY, BAD_KEY), (status, body)
            wire.alive()
        finally:
            wire.close()

    run()
