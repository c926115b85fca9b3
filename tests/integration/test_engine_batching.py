"""Eight requests with different options decoded together in one context each get what they asked.

A real ``corral worker`` with OLLAMA_NUM_PARALLEL=8 runs eight requests at once (sharing every
llama_decode). Each must honour its own options, checked token by token where the options
decide tokens: with ``logprobs`` the worker reports, next to every sampled token, the model's
likeliest alternatives from the raw logits, so greedy/top_k=1 must always take the likeliest,
min_p must never take one far below it, penalties must move some choice away from it. (Text is
not compared with the same request run alone: a different batch changes the logits in their
last bits, and near-ties then go the other way, in llama-server too.)
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.model import MODEL_NAME
from tests.support.servers import WorkerProcess, import_model, start_worker

STORY = "Once upon a time, in a small village by the sea, there lived"  # raw: runs hundreds of tokens
REQUEST_TIMEOUT_S = 120
LOGPROBS = {"logprobs": True, "top_logprobs": 3}

REQUESTS: dict[str, tuple[str, dict]] = {
    "greedy": ("generate", {"prompt": STORY, "raw": True, **LOGPROBS,
                            "options": {"temperature": 0, "num_predict": 24}}),
    # top_k 1 leaves only the likeliest token, whatever the temperature.
    "top_k_1": ("generate", {"prompt": STORY, "raw": True, **LOGPROBS,
                             "options": {"temperature": 1.5, "top_k": 1, "seed": 9, "num_predict": 24}}),
    "min_p": ("generate", {"prompt": STORY, "raw": True, **LOGPROBS,
                           "options": {"temperature": 1.5, "seed": 1234, "top_k": 0, "top_p": 1.0,
                                       "min_p": 0.2, "num_predict": 24}}),
    "penalties": ("generate", {"prompt": STORY, "raw": True, **LOGPROBS,
                               "options": {"temperature": 0, "repeat_penalty": 1.8, "presence_penalty": 0.5,
                                           "frequency_penalty": 0.5, "repeat_last_n": 64, "num_predict": 24}}),
    "short": ("generate", {"prompt": "Tell me a story.", "options": {"temperature": 0.7, "num_predict": 3}}),
    "stop": ("chat", {"messages": [{"role": "user", "content": "Count from 1 to 20, one number per line."}],
                      "options": {"temperature": 0, "stop": ["7"], "num_predict": 120}}),
    "json": ("chat", {"messages": [{"role": "user", "content": "Describe a cat named Tom who is 3 years old."}],
                      "format": {"type": "object", "properties": {"name": {"type": "string"},
                                                                  "age": {"type": "integer"}},
                                 "required": ["name", "age"]},
                      "options": {"temperature": 0.8, "seed": 5, "num_predict": 200}}),
    "typical": ("chat", {"messages": [{"role": "user", "content": "Name a fruit."}],
                         "options": {"temperature": 0.9, "typical_p": 0.7, "seed": 77, "num_predict": 16}}),
}


@pytest.fixture(scope="module")
def worker8(tmp_path_factory, gguf_path: Path, gguf_digest: str) -> Iterator[WorkerProcess]:
    proc = start_worker(tmp_path_factory.mktemp("engine8"), {"OLLAMA_NUM_PARALLEL": "8", "CORRAL_NUM_THREADS": "2"})
    try:
        import_model(proc.url, gguf_path, gguf_digest)
        yield proc
    finally:
        proc.stop()


def _run(url: str, name: str) -> dict:
    kind, body = REQUESTS[name]
    r = httpx.post(f"{url}/api/{kind}", json={"model": MODEL_NAME, "stream": False, **body},
                   timeout=REQUEST_TIMEOUT_S)
    assert r.status_code == 200, (name, r.text)
    out = r.json()
    out["text"] = out["response"] if kind == "generate" else out["message"]["content"]
    return out


def _together(url: str) -> dict[str, dict]:
    results: dict[str, dict] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(REQUESTS), timeout=30)

    def one(name: str) -> None:
        try:
            start.wait()
            results[name] = _run(url, name)
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(name,)) for name in REQUESTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=REQUEST_TIMEOUT_S + 30)
    assert not errors, errors
    assert set(results) == set(REQUESTS), "a request did not finish"
    return results


def _is_top(entry: dict) -> bool:
    """The sampled token is the likeliest by the raw logits (ties allowed)."""
    return entry["logprob"] >= entry["top_logprobs"][0]["logprob"] - 1e-6


def test_eight_concurrent_requests_each_get_their_own_options(worker8: WorkerProcess):
    got = _together(worker8.url)

    for name in ("greedy", "top_k_1", "min_p", "penalties"):
        assert got[name]["eval_count"] == 24 and got[name]["done_reason"] == "length", name
        assert len(got[name]["logprobs"]) == 24, name
    assert all(_is_top(e) for e in got["greedy"]["logprobs"])
    assert all(_is_top(e) for e in got["top_k_1"]["logprobs"])
    # min_p 0.2: no token less than a fifth as likely as the likeliest; at temperature 1.5 the
    # draw still leaves the top choice sometimes (else this request ignored its temperature).
    floor = math.log(0.2)
    assert all(e["logprob"] >= e["top_logprobs"][0]["logprob"] + floor - 1e-4 for e in got["min_p"]["logprobs"])
    assert not all(_is_top(e) for e in got["min_p"]["logprobs"])
    # Strong penalties on a story that repeats " a", " the", ",": some pick is not the likeliest.
    assert not all(_is_top(e) for e in got["penalties"]["logprobs"])

    assert got["short"]["eval_count"] == 3 and got["short"]["done_reason"] == "length"
    counted = got["stop"]
    assert counted["done_reason"] == "stop" and "7" not in counted["text"]
    assert "6" in counted["text"], counted["text"]  # it did count, and stopped at 7
    cat = json.loads(got["json"]["text"])
    assert isinstance(cat["name"], str) and isinstance(cat["age"], int)
    assert 0 < got["typical"]["eval_count"] <= 16
