"""Direct streaming (``CORRAL_DIRECT_STREAMING=true``, docs/architecture.md): behind Corral's
nginx, routers place each inference request and nginx streams the answer from the worker.

Seen from outside, through nginx: the answers are the relayed ones (same bytes for a greedy
request), slots come back when a request ends or its client leaves, the router keeps owning
keep-alive, a worker that cannot be reached before the first byte is skipped, a worker that dies
mid-stream ends the stream (no hang) and gives its slots back, and what a client sends in the
cluster's own headers reaches neither router nor worker as theirs. Every process is real
(``tests.support.cluster``); every wait is bounded.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.support.answers import wait_for
from tests.support.cluster import Cluster, Metrics

pytestmark = pytest.mark.integration

PROMPT = "Once upon a time, in a small village by the sea, there lived"
LEASE_S = 10  # corral.cluster.workers.LEASE_MS


def gen(model: str, num_predict: int = 8, **extra: object) -> dict:
    return {"model": model, "prompt": PROMPT, "raw": True, "stream": False,
            "options": {"num_predict": num_predict, "temperature": 0, "seed": 7}, **extra}


def direct(metrics: Metrics, event: str) -> float:
    return metrics.value("corral_router_direct_total", event=event)


def unloaded(c: Cluster, model: str) -> bool:
    """Ask for an unload (done only when nothing runs on the model) and see whether it went."""
    r = c.post("/api/generate", {"model": model, "keep_alive": 0})
    assert r.status_code == 200, r.text
    return not any(name.startswith(model) for name in c.ps())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, gguf_path: Path, gguf_digest: str) -> Iterator[Cluster]:
    env = {"CORRAL_DIRECT_STREAMING": "true", "OLLAMA_NUM_PARALLEL": "2", "CORRAL_REPLICATE_AFTER": "60",
           "OLLAMA_KEEP_ALIVE": "5m"}
    with Cluster(tmp_path_factory.mktemp("direct"), workers=2, routers=2, env=env) as c:
        c.import_models(gguf_path, gguf_digest, ["d1", "d2"])
        yield c


def test_answers_come_from_the_worker_as_relayed_ones_would(cluster: Cluster):
    c = cluster
    before = c.metrics()
    relayed = httpx.post(c.router_urls()[0] + "/api/generate", json=gen("d1", 12), timeout=60).json()
    through_nginx = c.post("/api/generate", gen("d1", 12)).json()
    assert through_nginx["response"] == relayed["response"] and through_nginx["eval_count"] == 12
    # Streams, chat, the OpenAI SDK: each answer in its own format, all handed to nginx.
    client = ollama.Client(host=c.endpoint)
    parts = list(client.generate(model="d1", prompt=PROMPT, raw=True, stream=True,
                                 options={"num_predict": 12, "temperature": 0, "seed": 7}))
    assert "".join(p.response for p in parts) == relayed["response"] and parts[-1].done
    reply = client.chat(model="d1", messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 4})
    assert reply.message.role == "assistant" and reply.done
    sdk = openai.OpenAI(base_url=c.endpoint + "/v1", api_key="unused")
    chunks = list(sdk.chat.completions.create(model="d1", messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=4, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    after = wait_for("the workers to report every end", lambda: (
        m if direct(m := c.metrics(), "ended") - direct(before, "ended") >= 4 else None), timeout=10)
    assert direct(after, "redirected") - direct(before, "redirected") == 4  # the first went to a router directly
    assert direct(after, "lost") == direct(before, "lost") and direct(after, "retried") == direct(before, "retried")
    # Time to first token is still measured, from the router's placing and the worker's report.
    assert (after.value("corral_router_time_to_first_token_seconds_count")
            > before.value("corral_router_time_to_first_token_seconds_count"))
    wait_for("d1 to be unloaded: every slot came back", lambda: unloaded(c, "d1"), timeout=30, interval=0.5)


def test_the_router_keeps_owning_keep_alive(cluster: Cluster):
    """The client's keep_alive reaches the worker untouched, but the model stays as the router
    decides: 5 minutes as asked, and keep_alive 0 unloads it once the request is done."""
    c = cluster
    assert c.post("/api/generate", gen("d2", 2, keep_alive="5m")).status_code == 200
    (model,) = [m for m in c.get("/api/ps").json()["models"] if m["name"].startswith("d2")]
    expires = datetime.fromisoformat(re.sub(r"(\.\d{1,6})\d*", r"\1", model["expires_at"]).replace("Z", "+00:00"))
    left = (expires - datetime.now(UTC)).total_seconds()
    assert 240 < left <= 300, model["expires_at"]
    assert c.post("/api/generate", gen("d2", 2, keep_alive=0)).status_code == 200
    wait_for("keep_alive 0 to unload d2 after its request", lambda: "d2:latest" not in c.ps(), timeout=15)


def test_a_client_that_leaves_mid_stream_gives_the_slot_back(cluster: Cluster):
    c = cluster
    before = c.metrics()
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", c.endpoint + "/api/generate", json=gen("d1", 2000, stream=True)) as r:
            assert r.status_code == 200
            assert "response" in json.loads(next(r.iter_lines()))
    wait_for("the worker to report the end of the stream its client left", lambda: (
        direct(c.metrics(), "ended") > direct(before, "ended")), timeout=15)
    wait_for("d1 to be unloaded once its client left", lambda: unloaded(c, "d1"), timeout=30, interval=0.5)


def test_headers_a_client_sends_are_not_the_clusters(cluster: Cluster):
    """A forged retry header would make a router give back someone else's slot, a forged lease
    would send the worker's reports elsewhere: nginx replaces both."""
    c = cluster
    before = c.metrics()
    forged = {
        "X-Corral-Retry": "corral:inbox:" + "0" * 32 + " 1 worker-1",
        "X-Corral-Lease": "corral:inbox:" + "f" * 32 + " 1 worker-1",
        "X-Corral-Worker": "127.0.0.1:1",
        "X-Corral-Direct": "0",
    }
    r = httpx.post(c.endpoint + "/api/generate", json=gen("d1", 2), headers=forged, timeout=60)
    assert r.status_code == 200 and r.json()["done"], r.text
    after = wait_for("the end's report", lambda: (
        m if direct(m := c.metrics(), "ended") > direct(before, "ended") else None), timeout=10)
    assert direct(after, "retried") == direct(before, "retried")
    assert after.value("corral_router_retries_total") == before.value("corral_router_retries_total")


def test_a_worker_gone_before_the_first_byte_is_skipped(tmp_path, gguf_path: Path, gguf_digest: str):
    """A worker dies while the routers still list it: nginx cannot reach it, sends the request
    back to a router, which gives that slot back and places the request on the other worker."""
    env = {"CORRAL_DIRECT_STREAMING": "true", "OLLAMA_NUM_PARALLEL": "2"}
    with Cluster(tmp_path, workers=2, routers=1, env=env) as c:
        c.import_models(gguf_path, gguf_digest, ["k1"])
        assert c.post("/api/generate", gen("k1", 1)).status_code == 200
        (victim,) = c.ps()["k1:latest"]
        c.kill(c.worker_process(victim))
        before = c.metrics()
        started = time.monotonic()
        r = c.post("/api/generate", gen("k1", 4, stream=True), timeout=120)
        assert r.status_code == 200, r.text
        lines = [json.loads(line) for line in r.text.splitlines()]
        assert lines[-1]["done"] and "error" not in lines[-1], lines[-1]
        assert time.monotonic() - started < 60
        after = c.metrics()
        assert direct(after, "retried") - direct(before, "retried") == 1
        assert after.value("corral_router_retries_total") > before.value("corral_router_retries_total")
        survivor = "worker-2" if victim == "worker-1" else "worker-1"
        wait_for("the dead worker to leave /api/ps", lambda: c.ps().get("k1:latest") == [survivor],
                 timeout=LEASE_S + 10, interval=0.5)
        # The dead worker's slot was given back (not left to lapse): nothing is in flight.
        wait_for("k1 to be unloaded", lambda: unloaded(c, "k1"), timeout=30, interval=0.5)


def test_a_worker_that_dies_mid_stream_ends_the_stream(tmp_path, gguf_path: Path, gguf_digest: str):
    """The stream is cut (nginx, not a router, was carrying it: no error line), nothing hangs,
    and once the worker leaves the cluster the router gives its slot back."""
    env = {"CORRAL_DIRECT_STREAMING": "true", "OLLAMA_NUM_PARALLEL": "2"}
    with Cluster(tmp_path, workers=1, routers=1, env=env) as c:
        c.import_models(gguf_path, gguf_digest, ["k2"])
        before = c.metrics()
        started = time.monotonic()
        got = []
        with pytest.raises(httpx.HTTPError):  # the cut: an unfinished chunked body
            with httpx.Client(timeout=60) as client:
                with client.stream("POST", c.endpoint + "/api/generate", json=gen("k2", 5000, stream=True)) as r:
                    for line in r.iter_lines():
                        got.append(json.loads(line))
                        if len(got) == 3:
                            c.kill(c.worker_process("worker-1"))
        assert len(got) >= 3 and not got[-1]["done"]
        assert time.monotonic() - started < 60
        wait_for("the router to count the lost stream once the worker left", lambda: (
            direct(c.metrics(), "lost") > direct(before, "lost")), timeout=LEASE_S + 10, interval=0.5)
