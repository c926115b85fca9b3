"""The cluster as a whole: ``corral up`` (Redis, registry, workers, routers, nginx) on loopback.

Placement (docs/architecture.md, "Placement") seen from outside, through nginx: LRU eviction,
keep-alive, the bounded queue, one load per model across routers; and faults: a worker
SIGKILLed under load, a router SIGKILLed mid-load, Redis SIGKILLed and started again. Every
process is real (``tests.support.cluster``); every wait is bounded.

Clusters are shared where tests can share one (module scope, models unloaded between tests);
a test that kills something gets a cluster of its own.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from tests.support.answers import wait_for
from tests.support.cluster import Cluster

pytestmark = pytest.mark.integration

PROMPT = "Once upon a time, in a small village by the sea, there lived"  # raw: SmolLM2 keeps going
BUSY = "server busy, please try again.  maximum pending requests exceeded"
LEASE_S = 10  # corral.cluster.workers.LEASE_MS
FOREVER_YEAR = 2300  # a pinned model (negative keep-alive) "expires" in 2318, as in Ollama


def gen(model: str, num_predict: int = 4, **extra: object) -> dict:
    return {
        "model": model, "prompt": PROMPT, "raw": True, "stream": False,
        "options": {"num_predict": num_predict, "temperature": 0}, **extra,
    }


def generate(cluster: Cluster, model: str, num_predict: int = 4, **extra: object) -> dict:
    r = cluster.post("/api/generate", gen(model, num_predict, **extra))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["done"] is True and "error" not in body, body
    return body


def parse_time(text: str) -> datetime:
    """Ollama's RFC 3339 times, with nanoseconds and any offset."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    return datetime.fromisoformat(text)


def same_models(names: list[str], expected: list[str]) -> bool:
    """Model lists equal, ":latest" or not (the router may key placements either way)."""
    return sorted(n.removesuffix(":latest") for n in names) == sorted(expected)


def queue_depth(metrics, model: str) -> float:
    return metrics.value("corral_router_queue_depth", model=model) + metrics.value(
        "corral_router_queue_depth", model=model + ":latest")


def worker_loads(cluster: Cluster, worker: str, name: str) -> int:
    """How often a worker's log says it loaded ``name`` (the worker logs its full name)."""
    return len(re.findall(rf"loaded {re.escape(name)} in ", cluster.log(worker)))


# -- concurrent requests ---------------------------------------------------------------------


@dataclass
class Outcome:
    """One request's end: status and headers, the JSON lines of the answer (one unless
    streamed), or the transport error / timeout that ended it instead."""

    stream: bool
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    lines: list = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def last(self) -> object:
        return self.lines[-1] if self.lines else None

    def ok(self) -> bool:
        """Complete and successful: 200, the final line says done, no error line anywhere."""
        return (
            self.error is None and self.status == 200 and bool(self.lines)
            and all(isinstance(line, dict) and "error" not in line for line in self.lines)
            and self.last.get("done") is True
        )

    def ended_with_error_line(self) -> bool:
        """A stream cut after its first byte: 200, then tokens, then a final ``{"error": ...}`` line."""
        return (
            self.error is None and self.status == 200 and bool(self.lines)
            and isinstance(self.last, dict) and isinstance(self.last.get("error"), str)
            and all(isinstance(line, dict) and "error" not in line for line in self.lines[:-1])
        )


async def _request(client: httpx.AsyncClient, path: str, body: dict, timeout: float,
                   first_token: asyncio.Event | None = None, pad: int = 0) -> Outcome:
    outcome = Outcome(stream=bool(body.get("stream", True)))
    content = json.dumps(body).encode() + b" " * pad
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("POST", path, content=content, headers={"Content-Type": "application/json"}) as r:
                outcome.status, outcome.headers = r.status_code, dict(r.headers)
                async for line in r.aiter_lines():
                    if not line.strip():
                        continue
                    try:
                        outcome.lines.append(json.loads(line))
                    except ValueError:
                        outcome.lines.append(line)
                    if first_token is not None and outcome.stream:
                        first_token.set()
    except TimeoutError:
        outcome.error = f"no end after {timeout}s (a hang)"
    except httpx.HTTPError as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    outcome.seconds = time.monotonic() - started
    return outcome


def run_concurrently(endpoint: str, bodies: list[dict], *, timeout: float = 120.0, path: str = "/api/generate",
                     during=None, pad: int = 0) -> list[Outcome]:
    """Send every body at once through ``endpoint``; ``during(first_token)`` (a coroutine
    function, given an event set on the first line of any stream) runs meanwhile. ``pad``
    bytes of JSON whitespace make a body as big as a long conversation's."""

    async def main() -> list[Outcome]:
        limits = httpx.Limits(max_connections=len(bodies) + 4)
        async with httpx.AsyncClient(base_url=endpoint, timeout=httpx.Timeout(timeout), limits=limits) as client:
            first = asyncio.Event()
            tasks = [asyncio.create_task(_request(client, path, body, timeout, first, pad)) for body in bodies]
            if during is not None:
                await during(first)
            return list(await asyncio.gather(*tasks))

    return asyncio.run(main())


def describe(outcomes: list[Outcome]) -> str:
    return "\n".join(
        f"{i}: stream={o.stream} status={o.status} error={o.error} {o.seconds:.1f}s last={str(o.last)[:200]}"
        for i, o in enumerate(outcomes)
    )


# == one shared cluster: 2 workers holding one model each, 2 routers ===========================

MODELS = ["m1", "m2", "m3"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, gguf_path: Path, gguf_digest: str) -> Iterator[Cluster]:
    """Two workers of one model each (``OLLAMA_MAX_LOADED_MODELS=1``), two routers behind
    nginx; no replicas unless a request waits a minute (``CORRAL_REPLICATE_AFTER=60``)."""
    env = {
        "OLLAMA_MAX_LOADED_MODELS": "1", "OLLAMA_NUM_PARALLEL": "2", "CORRAL_REPLICATE_AFTER": "60",
        "OLLAMA_KEEP_ALIVE": "5m",
    }
    with Cluster(tmp_path_factory.mktemp("cluster"), workers=2, routers=2, env=env) as c:
        c.import_models(gguf_path, gguf_digest, MODELS)
        yield c


@pytest.fixture
def idle(cluster: Cluster) -> Cluster:
    """The shared cluster with nothing loaded."""
    cluster.unload_all()
    return cluster


def test_cluster_workers_and_router_metrics(idle: Cluster):
    c = idle
    workers = c.workers()
    assert [w["id"] for w in workers] == ["worker-1", "worker-2"]
    for w in workers:
        assert set(w) == {"id", "url", "state", "device", "memory_total", "memory_used", "models"}
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", w["url"])
        assert w["state"] == "ready" and w["device"] in ("cpu", "cuda")
        assert w["memory_total"] > 0 and w["memory_used"] == 0 and w["models"] == []
        assert httpx.get(w["url"] + "/", timeout=5).text == "Ollama is running"  # the url is the worker

    before = c.metrics()
    generate(c, "m1", keep_alive="10m")
    generate(c, "m1", keep_alive="10m")
    workers = {w["id"]: w for w in c.workers()}
    holder = c.ps()["m1:latest"]
    assert len(holder) == 1
    assert same_models(workers[holder[0]]["models"], ["m1"]) and workers[holder[0]]["memory_used"] > 0

    after = c.metrics()
    expected = {
        "corral_router_requests_total", "corral_router_time_to_first_token_seconds_count",
        "corral_router_queue_depth", "corral_router_rejections_total", "corral_router_loads_total",
        "corral_router_evictions_total", "corral_router_placements_total", "corral_router_workers",
        "corral_router_retries_total",
    }
    # Families with labels appear once they have a sample; these have one by now or always.
    present = {"corral_router_requests_total", "corral_router_time_to_first_token_seconds_count",
               "corral_router_loads_total", "corral_router_placements_total", "corral_router_workers",
               "corral_router_retries_total"}
    assert present <= after.names(), sorted(after.names())

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved("corral_router_requests_total", route="/api/generate") >= 2
    assert moved("corral_router_time_to_first_token_seconds_count") >= 2
    assert moved("corral_router_loads_total", kind="first") == 1
    assert moved("corral_router_placements_total", kind="loaded") == 1
    assert moved("corral_router_placements_total", kind="resident") == 1
    assert after.value("corral_router_workers", state="ready") == 2 * len(c.router_urls())  # each router says 2
    assert after.value("corral_router_workers", state="draining") == 0
    assert expected - after.names() <= {
        "corral_router_queue_depth", "corral_router_rejections_total", "corral_router_evictions_total",
    }, "metrics named in the issue are missing"
    # Queue depth is a gauge read from Redis at scrape time: named even with no queue.
    text = httpx.get(c.router_urls()[0] + "/metrics", timeout=10).text
    assert "# TYPE corral_router_queue_depth gauge" in text
    # Rejections, evictions, retries and queue depth move in the tests that cause them.


def test_lru_eviction_order(idle: Cluster):
    """OLLAMA_MAX_LOADED_MODELS=1 on 2 workers: the third model evicts the least recently used."""
    c = idle
    before = c.metrics()
    generate(c, "m1", keep_alive="10m")
    first = c.ps()
    assert list(first) == ["m1:latest"]
    generate(c, "m2", keep_alive="10m")
    second = c.ps()
    assert set(second) == {"m1:latest", "m2:latest"}
    assert second["m1:latest"] != second["m2:latest"], "each worker holds one model"
    # m1 is the least recently used: m3 takes its place (its worker).
    generate(c, "m3", keep_alive="10m")
    third = c.ps()
    assert set(third) == {"m2:latest", "m3:latest"}, third
    assert third["m3:latest"] == first["m1:latest"]
    assert third["m2:latest"] == second["m2:latest"]
    # Use m2 again: now m3 is the least recently used, and m1 comes back in its place.
    generate(c, "m2", keep_alive="10m")
    generate(c, "m1", keep_alive="10m")
    fourth = c.ps()
    assert set(fourth) == {"m1:latest", "m2:latest"}, fourth
    assert fourth["m1:latest"] == third["m3:latest"]
    assert fourth["m2:latest"] == second["m2:latest"]
    after = c.metrics()
    assert after.value("corral_router_evictions_total", reason="lru") - before.value(
        "corral_router_evictions_total", reason="lru") == 2


def test_keep_alive_expiry_zero_and_pinned(idle: Cluster):
    c = idle
    before = c.metrics()
    generate(c, "m1", keep_alive="2s")
    answered = time.monotonic()
    r = c.get("/api/ps")
    (entry,) = r.json()["models"]
    expires, now = parse_time(entry["expires_at"]), datetime.now(timezone.utc)
    assert now < expires <= now + timedelta(seconds=2.5), entry["expires_at"]
    generate(c, "m2", keep_alive=-1)
    r = c.get("/api/ps")
    entries = {m["name"]: m for m in r.json()["models"]}
    assert set(entries) == {"m1:latest", "m2:latest"}
    assert parse_time(entries["m2:latest"]["expires_at"]).year >= FOREVER_YEAR  # pinned

    wait_for("m1 (keep_alive 2s) to leave /api/ps", lambda: "m1:latest" not in c.ps(), timeout=8, interval=0.1)
    gone_after = time.monotonic() - answered
    assert 1.5 <= gone_after <= 5, f"a 2s keep-alive ended after {gone_after:.1f}s"
    for w in c.workers():
        assert not same_models(w["models"], ["m1"])

    time.sleep(1)  # the pinned model outlives it
    assert "m2:latest" in c.ps()

    # keep_alive 0 with a prompt: answered, then unloaded at once.
    generate(c, "m2", keep_alive=0)
    wait_for("m2 (keep_alive 0) to leave /api/ps", lambda: "m2:latest" not in c.ps(), timeout=3, interval=0.05)

    # keep_alive 0 and nothing else: Ollama's unload request.
    generate(c, "m3")  # the default keep-alive (5m)
    assert "m3:latest" in c.ps()
    r = c.post("/api/generate", {"model": "m3", "keep_alive": 0})
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True and r.json()["done_reason"] == "unload"
    wait_for("m3 (unload request) to leave /api/ps", lambda: "m3:latest" not in c.ps(), timeout=3, interval=0.05)

    after = c.metrics()
    for reason, count in (("keep_alive", 1), ("request", 2)):
        moved = after.value("corral_router_evictions_total", reason=reason) - before.value(
            "corral_router_evictions_total", reason=reason)
        assert moved == count, (reason, moved)


def test_routers_racing_load_a_cold_model_once(idle: Cluster):
    """Both routers get first requests for a cold model at once, on a full cluster (each
    worker holds an idle model): one worker loads it, in place of the least recently used
    model; the others wait for that load instead of evicting a second model for a copy."""
    c = idle
    generate(c, "m1", keep_alive="10m")
    generate(c, "m2", keep_alive="10m")
    full = c.ps()
    assert set(full) == {"m1:latest", "m2:latest"}
    before = c.metrics()
    loads_before = {w: worker_loads(c, w, "m3:latest") for w in ("worker-1", "worker-2")}
    outcomes = run_concurrently(c.endpoint, [gen("m3", 8, keep_alive="10m") for _ in range(12)], timeout=90)
    assert all(o.ok() for o in outcomes), describe(outcomes)
    ps = c.ps()
    assert ps == {"m3:latest": full["m1:latest"], "m2:latest": full["m2:latest"]}, ps
    holders = [w["id"] for w in c.workers() if same_models(w["models"], ["m3"])]
    assert holders == full["m1:latest"]
    loads = {w: worker_loads(c, w, "m3:latest") - n for w, n in loads_before.items()}
    assert loads == {w: int(w in holders) for w in loads}, loads
    after = c.metrics()

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved("corral_router_loads_total", kind="first") == 1
    assert moved("corral_router_loads_total", kind="replica") == 0
    assert moved("corral_router_evictions_total", reason="lru") == 1


def test_one_model_under_two_spellings_is_loaded_once(idle: Cluster):
    """``m1`` and ``m1:latest`` are one model: the second request uses the loaded one."""
    c = idle
    loads_before = sum(worker_loads(c, w, "m1:latest") for w in ("worker-1", "worker-2"))
    generate(c, "m1", keep_alive="10m")
    generate(c, "m1:latest", keep_alive="10m")
    r = c.get("/api/ps")
    names = [m["name"] for m in r.json()["models"]]
    assert names == ["m1:latest"], r.json()
    assert len(r.json()["models"][0]["workers"]) == 1
    loads = sum(worker_loads(c, w, "m1:latest") for w in ("worker-1", "worker-2")) - loads_before
    assert loads == 1


def test_unload_by_the_name_that_ps_reports(idle: Cluster):
    c = idle
    generate(c, "m2", keep_alive="10m")
    assert list(c.ps()) == ["m2:latest"]
    r = c.post("/api/generate", {"model": "m2:latest", "keep_alive": 0})
    assert r.status_code == 200 and r.json()["done_reason"] == "unload", r.text
    wait_for("m2 to leave /api/ps", lambda: not c.ps(), timeout=3, interval=0.05)
    assert all(w["models"] == [] and w["memory_used"] == 0 for w in c.workers()), c.workers()


# == a full queue: one worker, one slot, two places in the queue ================================


@pytest.fixture(scope="module")
def small_cluster(tmp_path_factory, gguf_path: Path, gguf_digest: str) -> Iterator[Cluster]:
    env = {"OLLAMA_MAX_QUEUE": "2", "OLLAMA_NUM_PARALLEL": "1", "CORRAL_REPLICATE_AFTER": "60"}
    with Cluster(tmp_path_factory.mktemp("small"), workers=1, routers=1, env=env) as c:
        c.import_models(gguf_path, gguf_digest, ["q1"])
        yield c


def test_full_queue_answers_503_with_retry_after(small_cluster: Cluster):
    c = small_cluster
    generate(c, "q1", 1)  # loaded: the requests below only wait for the slot
    before = c.metrics()
    depths: list[float] = []

    async def watch_queue(_first: asyncio.Event) -> None:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(timeout=10) as client:
            while time.monotonic() < deadline:
                text = (await client.get(c.router_urls()[0] + "/metrics")).text
                found = re.findall(r'^corral_router_queue_depth\{model="q1(?::latest)?"\} (\S+)$', text, re.M)
                depths.append(sum(float(v) for v in found))
                if depths[-1] >= 2 or (depths[-1] == 0 and max(depths) > 0):
                    return  # full, or it filled and drained (which would fail below)
                await asyncio.sleep(0.05)

    outcomes = run_concurrently(c.endpoint, [gen("q1", 48) for _ in range(8)], timeout=90, during=watch_queue)
    ok = [o for o in outcomes if o.ok()]
    busy = [o for o in outcomes if o.status == 503]
    assert len(ok) + len(busy) == 8, describe(outcomes)
    assert len(ok) >= 3, describe(outcomes)  # the one running and the two queued
    assert busy, describe(outcomes)
    for o in busy:
        assert o.lines == [{"error": BUSY}], o.lines
        assert int(o.headers["retry-after"]) >= 1
        assert o.seconds < 10, "a rejection is immediate"
    assert max(depths) == 2, depths
    after = c.metrics()
    assert after.value("corral_router_rejections_total", reason="queue_full") - before.value(
        "corral_router_rejections_total", reason="queue_full") == len(busy)
    assert after.value("corral_router_requests_total", route="/api/generate", status="503") - before.value(
        "corral_router_requests_total", route="/api/generate", status="503") == len(busy)
    # Nothing is left in the queue, and the model answers as before.
    assert queue_depth(after, "q1") == 0
    generate(c, "q1", 1)


def test_clients_that_leave_give_their_slot_and_place_back(small_cluster: Cluster):
    """A stream whose client hangs up after the first line, and a request whose client gives up
    while queued behind it: the queue place and the slot both come back, so the model can be
    unloaded (an unload only happens when nothing runs on it) and serves the next request."""
    c = small_cluster
    generate(c, "q1", 1)
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", c.endpoint + "/api/generate", json=gen("q1", 2000, stream=True)) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            assert "response" in json.loads(next(lines))
            # The slot is taken: this one queues, and its client leaves after a second.
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(c.endpoint + "/api/generate", json=gen("q1", 4), timeout=1.0)
            wait_for("the queued request that left to give its place back",
                     lambda: queue_depth(c.metrics(), "q1") == 0, timeout=10)
        # leaving the block closed the stream's connection mid-generation

    def unloaded() -> bool:
        r = c.post("/api/generate", {"model": "q1", "keep_alive": 0})
        assert r.status_code == 200, r.text
        return not c.ps()

    wait_for("q1 to be unloaded once its clients left", unloaded, timeout=30, interval=0.5)
    assert generate(c, "q1", 1)["done"]


# == conversations: two replicas of one model, ties go to the worker that served the conversation ==


@pytest.fixture(scope="module")
def replicated(tmp_path_factory, gguf_path: Path, gguf_digest: str) -> Iterator[Cluster]:
    """Two workers, one slot per replica, and a replica as soon as a request has to wait."""
    env = {"OLLAMA_NUM_PARALLEL": "1", "CORRAL_REPLICATE_AFTER": "0", "OLLAMA_KEEP_ALIVE": "10m"}
    with Cluster(tmp_path_factory.mktemp("replicated"), workers=2, routers=2, env=env) as c:
        c.import_models(gguf_path, gguf_digest, ["a1"])
        outcomes = run_concurrently(c.endpoint, [gen("a1", 16, stream=False) for _ in range(2)], timeout=120)
        assert all(o.ok() for o in outcomes), describe(outcomes)
        assert sorted(c.ps()["a1:latest"]) == ["worker-1", "worker-2"], "the waiting request loaded a replica"
        yield c


def test_a_conversation_stays_with_the_worker_that_served_it(replicated: Cluster):
    """With both replicas idle, least-recently-used spreading alone would alternate a chat's
    turns between the workers; the turns of one conversation go to the worker that holds its
    prefix instead (docs/architecture.md, "Placement": conversation affinity)."""
    c = replicated
    urls = {w["id"]: w["url"] for w in c.workers()}

    def chats_served() -> dict[str, float]:
        return {wid: c.metrics([url]).value("corral_worker_requests_total", route="/api/chat", status="200")
                for wid, url in urls.items()}

    served_by: dict[str, list[str]] = {}
    for topic in ("the sea", "the mountains"):
        messages = [{"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": f"Tell me about {topic}."}]
        for turn in range(3):
            before = chats_served()
            r = c.post("/api/chat", {"model": "a1", "messages": messages, "stream": False,
                                     "options": {"num_predict": 4, "temperature": 0}})
            assert r.status_code == 200, r.text
            after = chats_served()
            [worker] = [wid for wid in urls if after[wid] > before[wid]]
            served_by.setdefault(topic, []).append(worker)
            messages += [r.json()["message"], {"role": "user", "content": "Tell me more."}]
    for topic, workers in served_by.items():
        assert len(set(workers)) == 1, f"{topic}: turns served by {workers}"


# == faults: each test kills something, so each has a cluster of its own ==========================


def test_worker_killed_under_load(tmp_path, gguf_path: Path, gguf_digest: str):
    """SIGKILL a worker while 24 requests run: every non-streamed request still succeeds
    (retried before its first byte), every stream completes or ends with an error line, nothing
    hangs; the dead worker leaves /api/cluster/workers when its lease lapses."""
    env = {"OLLAMA_NUM_PARALLEL": "4", "CORRAL_REPLICATE_AFTER": "0.5"}
    with Cluster(tmp_path, workers=2, routers=2, env=env) as c:
        c.import_models(gguf_path, gguf_digest, ["k1"])
        generate(c, "k1", 1)
        victim = c.ps()["k1:latest"][0]
        victim_proc = c.worker_process(victim)
        before = c.metrics()
        killed_at: list[float] = []
        gone_at: list[float] = []

        async def kill_when_busy(first_token: asyncio.Event) -> None:
            await asyncio.wait_for(first_token.wait(), 60)  # streams are flowing
            await asyncio.sleep(0.2)
            await asyncio.to_thread(c.kill, victim_proc)
            killed_at.append(time.monotonic())
            # meanwhile, watch the dead worker leave the cluster (its lease lapses)
            while time.monotonic() - killed_at[0] < LEASE_S + 8:
                if victim not in [w["id"] for w in await asyncio.to_thread(c.workers)]:
                    gone_at.append(time.monotonic())
                    return
                await asyncio.sleep(0.2)

        bodies = [gen("k1", 30, stream=i % 2 == 1) for i in range(24)]
        outcomes = run_concurrently(c.endpoint, bodies, timeout=120, during=kill_when_busy)
        assert killed_at
        report = describe(outcomes)
        for o in outcomes:
            assert o.error is None, report  # no transport error, no hang
            if o.stream:
                assert o.ok() or o.ended_with_error_line(), report
            else:
                assert o.ok(), report

        assert gone_at, f"{victim} still in /api/cluster/workers {LEASE_S + 8}s after its death"
        gone_after = gone_at[0] - killed_at[0]
        assert gone_after <= LEASE_S + 2, f"{victim} left {gone_after:.1f}s after its death"
        survivor = "worker-2" if victim == "worker-1" else "worker-1"
        assert [w["id"] for w in c.workers()] == [survivor]
        generate(c, "k1", 4)
        assert c.ps() == {"k1:latest": [survivor]}
        # The worker leaves the listings as soon as its lease lapses; a router's reaper (every
        # second) then drops it with its placements and counts them.
        after = wait_for("a reaper to count the dead worker's placement", lambda: (
            m if (m := c.metrics()).value("corral_router_evictions_total", reason="worker_lost") >= 1 else None),
            timeout=10, interval=0.5)
        assert after.value("corral_router_retries_total") > before.value("corral_router_retries_total")
        assert after.value("corral_router_workers", state="ready") == 2  # one worker, as each router sees it


@dataclass
class RouterCrash:
    cluster: Cluster
    killed: str  # the dead router's URL
    outcomes: list[Outcome]


@pytest.fixture(scope="module")
def router_crash(tmp_path_factory, gguf_path: Path, gguf_digest: str) -> Iterator[RouterCrash]:
    """Three routers behind nginx; router-1 is SIGKILLed while a cold model loads for 8
    concurrent requests (nginx round-robins them over the routers)."""
    with Cluster(tmp_path_factory.mktemp("routers"), workers=2, routers=3, env={"OLLAMA_NUM_PARALLEL": "2"}) as c:
        c.import_models(gguf_path, gguf_digest, ["r1"])  # cold: not even in the workers' blob cache
        killed = c.router_urls()[0]
        victim = c.router_processes(1)

        def placing() -> bool:
            return any(re.search(r"placing r1(:latest)? on", c.log(f"router-{n}")) for n in (1, 2, 3))

        async def kill_mid_load(_first: asyncio.Event) -> None:
            await asyncio.to_thread(wait_for, "a router to place r1", placing, 30, 0.01)
            await asyncio.to_thread(c.kill, *victim)

        bodies = [gen("r1", 16, stream=i % 4 == 3) for i in range(8)]
        # 16 KiB bodies, like a conversation with some history: more than nginx reads with the headers
        outcomes = run_concurrently(c.endpoint, bodies, timeout=90, during=kill_mid_load, pad=16 << 10)
        loading = [w for w in ("worker-1", "worker-2") if worker_loads(c, w, "r1:latest")]
        assert loading, "the kill came after the load"
        yield RouterCrash(c, killed, outcomes)


def test_router_killed_mid_load(router_crash: RouterCrash):
    """nginx passes what the dead router held to a live one; later requests skip it."""
    c, outcomes = router_crash.cluster, router_crash.outcomes
    assert all(o.ok() for o in outcomes), describe(outcomes)
    for _ in range(4):  # round-robin would give the dead router every third one
        started = time.monotonic()
        generate(c, "r1", 2)
        assert time.monotonic() - started < 15


def test_nginx_skips_a_dead_router(router_crash: RouterCrash):
    c = router_crash.cluster
    with pytest.raises(httpx.ConnectError):
        httpx.get(router_crash.killed + "/", timeout=2)
    for _ in range(6):  # round-robin would give the dead router every third one
        started = time.monotonic()
        generate(c, "r1", 2)
        assert time.monotonic() - started < 15
    assert "Connection refused" in c.log("nginx-error") or "prematurely closed" in c.log("nginx-error")


def test_slots_of_a_dead_router_are_given_back(router_crash: RouterCrash):
    """router-2 dies while it runs two streams: once the streams are over, nothing runs on
    the model any more, so an unload request (through router-3) unloads it."""
    c = router_crash.cluster
    second = c.router_urls()[1]
    victim = c.router_processes(2)

    async def kill_while_streaming(first_token: asyncio.Event) -> None:
        await asyncio.wait_for(first_token.wait(), 60)
        await asyncio.to_thread(c.kill, *victim)

    outcomes = run_concurrently(second, [gen("r1", 200, stream=True) for _ in range(2)], timeout=60,
                                during=kill_while_streaming)
    assert all(o.error for o in outcomes), describe(outcomes)  # their router died under them
    time.sleep(2)  # the workers notice the cut

    def unloaded() -> bool:
        r = c.post("/api/generate", {"model": "r1", "keep_alive": 0})
        assert r.status_code == 200, r.text
        return not c.ps()

    wait_for("r1 to be unloaded", unloaded, timeout=LEASE_S + 15, interval=0.5)
    assert all(w["models"] == [] for w in c.workers()), c.workers()
    assert queue_depth(c.metrics([c.router_urls()[2]]), "r1") == 0


@dataclass
class Call:
    started: float
    ended: float
    status: int | None
    body: object
    headers: dict[str, str]
    error: str | None = None


class Load:
    """``threads`` clients sending short requests back to back until stopped; every call recorded."""

    def __init__(self, endpoint: str, model: str, threads: int = 3, timeout: float = 30.0) -> None:
        self.calls: list[Call] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(endpoint, model, timeout), daemon=True)
                         for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, endpoint: str, model: str, timeout: float) -> None:
        with httpx.Client(base_url=endpoint, timeout=timeout) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    r = client.post("/api/generate", json=gen(model, 4))
                    try:
                        body = r.json()
                    except ValueError:
                        body = r.text
                    call = Call(started, time.monotonic(), r.status_code, body, dict(r.headers))
                except httpx.HTTPError as exc:
                    call = Call(started, time.monotonic(), None, None, {}, f"{type(exc).__name__}: {exc}")
                self.calls.append(call)
                if call.status != 200:
                    time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
            assert not t.is_alive(), "a request hung"

    def between(self, start: float, end: float) -> list[Call]:
        return [c for c in self.calls if c.started >= start and c.ended <= end]


def _ok(call: Call) -> bool:
    return call.status == 200 and isinstance(call.body, dict) and call.body.get("done") is True


@dataclass
class RedisOutage:
    cluster: Cluster
    load: Load
    killed_at: float
    back_at: float
    others: set[int]  # every other process of the cluster, before
    before: object  # the routers' metrics, before
    placed: dict[str, list[str]]  # /api/ps before: where each model is
    held: Outcome  # a stream that held a slot into the outage
    cold: list[httpx.Response]  # requests for a model placed nowhere, during the outage

    def report(self) -> str:
        return "\n".join(f"{c.started - self.killed_at:+.1f}s..{c.ended - self.killed_at:+.1f}s {c.status} "
                         f"{c.error or str(c.body)[:120]}" for c in self.load.calls)


OUTAGE_S = 10


@pytest.fixture(scope="module")
def redis_outage(tmp_path_factory, gguf_path: Path, gguf_digest: str) -> Iterator[RedisOutage]:
    """Redis SIGKILLed for 10 s and started again (same port, same files) while three clients
    send requests for a placed model back to back (through both routers), a stream that
    started before runs into the outage, and a model placed nowhere is asked for during it."""
    with Cluster(tmp_path_factory.mktemp("redis"), workers=2, routers=2, env={"OLLAMA_NUM_PARALLEL": "4"}) as c:
        c.import_models(gguf_path, gguf_digest, ["d1", "d2"])
        generate(c, "d1", 1)
        placed = c.ps()
        redis = c.redis_process()
        command = c.redis_command()
        others = {p.pid for p in c.processes() if p.pid != redis.pid}
        before = c.metrics()
        streaming = threading.Event()
        held: list[Outcome] = []

        def hold_a_slot() -> None:
            async def run() -> Outcome:
                first = asyncio.Event()
                async with httpx.AsyncClient(base_url=c.endpoint, timeout=60) as client:
                    task = asyncio.create_task(_request(client, "/api/generate", gen("d1", 40, stream=True), 60, first))
                    await asyncio.wait_for(first.wait(), 30)
                    streaming.set()
                    return await task

            held.append(asyncio.run(run()))

        load = Load(c.endpoint, "d1")
        holder = threading.Thread(target=hold_a_slot, daemon=True)
        try:
            wait_for("requests to flow", lambda: len([x for x in load.calls if _ok(x)]) >= 3, 30)
            holder.start()
            assert streaming.wait(30)
            time.sleep(0.3)
            killed_at = time.monotonic()
            c.kill(redis)
            time.sleep(OUTAGE_S / 2)
            cold = [c.post("/api/generate", gen("d2", 1), timeout=30) for _ in range(2)]
            time.sleep(OUTAGE_S / 2)
            back_at = time.monotonic()
            c.restart_redis(command, redis.env)
            # Requests go on through the return and after it.
            wait_for("requests to flow after Redis came back",
                     lambda: len([x for x in load.calls if x.started > back_at + 3]) >= 6, 30, interval=0.2)
        finally:
            load.stop()
            if holder.ident is not None:
                holder.join(timeout=60)
        assert held, "the long stream hung"
        yield RedisOutage(c, load, killed_at, back_at, others, before, placed, held[0], cold)


def test_a_redis_outage_loses_no_request_for_a_placed_model(redis_outage: RedisOutage):
    """While Redis is away, the routers serve placed models from their last known placements:
    no request for one fails, or waits; a model placed nowhere gets a clear 503 at once."""
    o, c = redis_outage, redis_outage.cluster
    report = o.report()
    during = o.load.between(o.killed_at + 0.5, o.back_at)
    assert len(during) >= 10, report  # requests really ran during the outage
    for call in o.load.calls:
        assert call.error is None and _ok(call), report  # every one: no error, no 503, no hang
        assert call.ended - call.started < 10, report
    assert o.held.ok(), o.held
    for r in o.cold:
        assert r.status_code == 503, r.text
        assert "cluster state unavailable" in r.json()["error"] and int(r.headers["retry-after"]) >= 1
    after = c.metrics()
    assert after.value("corral_router_placements_total", kind="offline") - o.before.value(
        "corral_router_placements_total", kind="offline") >= len(during)
    assert after.value("corral_router_rejections_total", reason="redis") - o.before.value(
        "corral_router_rejections_total", reason="redis") == len(o.cold)
    assert after.value("corral_router_redis_up") == 2  # both routers see it again


def test_after_a_redis_outage_the_cluster_is_as_before(redis_outage: RedisOutage):
    """The workers come back by their heartbeat; no worker or placement was dropped meanwhile,
    nothing was loaded again or restarted, and routers place through Redis again."""
    o, c = redis_outage, redis_outage.cluster
    assert [w["id"] for w in c.workers()] == ["worker-1", "worker-2"]
    assert all(w["state"] == "ready" for w in c.workers())
    for worker in ("worker-1", "worker-2"):
        # A worker logs its return only after its heartbeat's write has landed.
        wait_for(f"{worker} to log that Redis is back", lambda: "Redis reachable again: " + worker in c.log(worker),
                 timeout=15, interval=0.2)
    assert c.ps() == o.placed
    after = c.metrics()
    for kind in ("first", "replica"):
        assert after.value("corral_router_loads_total", kind=kind) == o.before.value("corral_router_loads_total", kind=kind)
    assert after.value("corral_router_evictions_total", reason="worker_lost") == 0
    assert o.others <= {p.pid for p in c.processes() if p.alive}
    resident = after.value("corral_router_placements_total", kind="resident")
    generate(c, "d1", 1)
    assert c.metrics().value("corral_router_placements_total", kind="resident") == resident + 1


def test_slots_held_across_a_redis_outage_are_given_back(redis_outage: RedisOutage):
    c = redis_outage.cluster

    def unloaded() -> bool:
        r = c.post("/api/generate", {"model": "d1", "keep_alive": 0})
        assert r.status_code == 200, r.text
        return all(w["models"] == [] for w in c.workers())

    wait_for("d1 to be unloaded from every worker", unloaded, timeout=LEASE_S + 15, interval=0.5)
    assert c.ps() == {}
