"""Scheduling on one worker: parallel slots, the bounded queue, keep-alive, LRU unload, cancellation."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.model import MODEL_NAME
from tests.support.servers import WorkerProcess, import_model, start_worker

LONG = {"num_predict": 400, "temperature": 0}
PROMPT = "Once upon a time, in a small village by the sea, there lived"  # raw: runs 400+ tokens


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, gguf_path: Path, gguf_digest: str) -> Path:
    """One store with the test model and two variants, shared by this module's workers."""
    tmp = tmp_path_factory.mktemp("sched")
    proc = start_worker(tmp)
    try:
        import_model(proc.url, gguf_path, gguf_digest)
        for name in ("alpha:latest", "beta:latest"):
            r = httpx.post(
                proc.url + "/api/create",
                json={"model": name, "from": MODEL_NAME, "system": f"You are {name}.", "stream": False},
                timeout=60,
            )
            assert r.status_code == 200, r.text
    finally:
        proc.stop()
    return proc.models_dir


@contextmanager
def _worker(tmp_path: Path, models_dir: Path, **env: str) -> Iterator[WorkerProcess]:
    proc = start_worker(tmp_path, env, models_dir=models_dir)
    try:
        yield proc
    finally:
        proc.stop()


def _stream_lines(url: str, body: dict, out: list, started: threading.Event | None = None) -> None:
    with httpx.stream("POST", url + "/api/generate", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line:
                out.append((time.monotonic(), json.loads(line)))
                if started is not None:
                    started.set()


def _ps(url: str) -> list[dict]:
    return httpx.get(url + "/api/ps", timeout=10).json()["models"]


def test_parallel_slots_really_run_at_the_same_time(tmp_path, models_dir):
    with _worker(tmp_path, models_dir, OLLAMA_NUM_PARALLEL="2") as proc:
        body = {"model": MODEL_NAME, "prompt": PROMPT, "raw": True, "options": {"num_predict": 60, "temperature": 0}}
        httpx.post(proc.url + "/api/generate", json={"model": MODEL_NAME}, timeout=60)  # load first
        outs: list[list] = [[], []]
        threads = [threading.Thread(target=_stream_lines, args=(proc.url, body, outs[i])) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        (a_first, a_last), (b_first, b_last) = [(o[0][0], o[-1][0]) for o in outs]
        # Each stream produced its first token before the other one finished.
        assert a_first < b_last and b_first < a_last
        assert all(o[-1][1]["eval_count"] == 60 for o in outs)


def test_full_queue_answers_503_even_for_a_loaded_model(tmp_path, models_dir):
    with _worker(tmp_path, models_dir, OLLAMA_NUM_PARALLEL="1", OLLAMA_MAX_QUEUE="1") as proc:
        httpx.post(proc.url + "/api/generate", json={"model": MODEL_NAME}, timeout=60)  # loaded and idle
        running: list = []
        started = threading.Event()
        long_body = {"model": MODEL_NAME, "prompt": PROMPT, "raw": True, "options": LONG}
        runner = threading.Thread(target=_stream_lines, args=(proc.url, long_body, running, started))
        runner.start()
        assert started.wait(60)
        queued: list = []
        waiter = threading.Thread(
            target=_stream_lines,
            args=(proc.url, {"model": MODEL_NAME, "prompt": "Hi", "options": {"num_predict": 2}}, queued),
        )
        waiter.start()
        time.sleep(0.5)  # the second request is now waiting for the only slot
        r = httpx.post(proc.url + "/api/generate", json={"model": MODEL_NAME, "prompt": "Hi"}, timeout=30)
        assert r.status_code == 503
        assert r.json() == {"error": "server busy, please try again.  maximum pending requests exceeded"}
        assert r.headers["retry-after"].isdigit()
        runner.join()
        waiter.join()
        assert queued and queued[-1][1]["done"] is True
        metrics = httpx.get(proc.url + "/metrics").text
        assert "corral_worker_rejected_total 1.0" in metrics


def test_least_recently_used_idle_model_is_unloaded_at_the_limit(tmp_path, models_dir):
    with _worker(tmp_path, models_dir, OLLAMA_MAX_LOADED_MODELS="2") as proc:
        for name in ("alpha:latest", "beta:latest"):
            r = httpx.post(proc.url + "/api/generate", json={"model": name, "prompt": "Hi",
                                                             "options": {"num_predict": 1}, "stream": False},
                           timeout=60)
            assert r.status_code == 200
        assert {m["name"] for m in _ps(proc.url)} == {"alpha:latest", "beta:latest"}
        # Touch alpha so beta becomes the least recently used.
        httpx.post(proc.url + "/api/generate", json={"model": "alpha:latest", "prompt": "Hi",
                                                     "options": {"num_predict": 1}, "stream": False}, timeout=60)
        httpx.post(proc.url + "/api/generate", json={"model": MODEL_NAME, "prompt": "Hi",
                                                     "options": {"num_predict": 1}, "stream": False}, timeout=60)
        assert {m["name"] for m in _ps(proc.url)} == {"alpha:latest", MODEL_NAME}


def test_keep_alive_expiry_and_overrides(tmp_path, models_dir):
    with _worker(tmp_path, models_dir, OLLAMA_KEEP_ALIVE="1s") as proc:
        body = {"model": MODEL_NAME, "prompt": "Hi", "options": {"num_predict": 1}, "stream": False}
        httpx.post(proc.url + "/api/generate", json=body, timeout=60)
        assert [m["name"] for m in _ps(proc.url)] == [MODEL_NAME]
        deadline = time.monotonic() + 10
        while _ps(proc.url) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _ps(proc.url) == []
        # A request's keep_alive overrides the default; negative pins the model.
        httpx.post(proc.url + "/api/generate", json=body | {"keep_alive": -1}, timeout=60)
        time.sleep(2)
        (pinned,) = _ps(proc.url)
        assert pinned["expires_at"].startswith("2318-")
        # keep_alive 0 unloads as soon as the request is done.
        httpx.post(proc.url + "/api/generate", json=body | {"keep_alive": 0}, timeout=60)
        deadline = time.monotonic() + 5
        while _ps(proc.url) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _ps(proc.url) == []


def test_client_that_leaves_stops_its_generation(tmp_path, models_dir):
    with _worker(tmp_path, models_dir, OLLAMA_NUM_PARALLEL="1") as proc:
        body = {"model": MODEL_NAME, "prompt": PROMPT, "raw": True, "options": {"num_predict": 2000, "temperature": 0}}
        with httpx.stream("POST", proc.url + "/api/generate", json=body, timeout=60) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i == 3:
                    break
        # The only slot is free again long before 2,000 tokens could have been generated: the
        # next request runs, and the count of generated tokens shows the first one stopped.
        r = httpx.post(proc.url + "/api/generate", json={"model": MODEL_NAME, "prompt": "Hi", "stream": False,
                                                         "options": {"num_predict": 2}}, timeout=60)
        assert r.status_code == 200
        metrics = httpx.get(proc.url + "/metrics").text
        generated = [line for line in metrics.splitlines()
                     if line.startswith("corral_worker_generated_tokens_total{")]
        assert generated and float(generated[0].split()[-1]) < 500


def test_concurrent_requests_each_get_their_own_options(http):
    """Eight requests at once on one model, each with different options, each honoured."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    cases = [
        ({"num_predict": 5, "temperature": 0}, None, lambda r: r["eval_count"] == 5),
        ({"num_predict": 7, "temperature": 1.0, "seed": 3}, None, lambda r: r["eval_count"] == 7),
        ({"num_predict": 60, "temperature": 0, "stop": ["e"]}, None,
         lambda r: "e" not in r["response"] and r["done_reason"] == "stop"),
        ({"num_predict": 40, "temperature": 0}, schema, lambda r: isinstance(json.loads(r["response"])["n"], int)),
        ({"num_predict": 3, "temperature": 0.5}, None, lambda r: r["eval_count"] == 3),
        ({"num_predict": 60, "temperature": 0, "stop": [" the"]}, None,
         lambda r: " the" not in r["response"] and r["done_reason"] == "stop"),
        ({"num_predict": 1, "temperature": 0}, None, lambda r: r["eval_count"] == 1),
        ({"num_predict": 40, "temperature": 0.7}, "json", lambda r: r["response"].lstrip().startswith("{")),
    ]
    results: list = [None] * len(cases)

    def run(i: int) -> None:
        options, fmt, _ = cases[i]
        body = {"model": MODEL_NAME, "prompt": PROMPT, "raw": True, "options": options, "stream": False}
        if fmt is not None:
            body["format"] = fmt
        results[i] = httpx.post(str(http.base_url) + "/api/generate", json=body, timeout=120).json()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (options, fmt, check), result in zip(cases, results):
        assert check(result), (options, fmt, result)
