"""Corral answers a user's first calls: import, list, generate, chat."""

from __future__ import annotations

import json

from tests.support.model import MODEL_NAME


def test_tags_lists_imported_model(http):
    models = http.get("/api/tags").json()["models"]
    assert [m["name"] for m in models] == [MODEL_NAME]
    assert models[0]["details"]["quantization_level"] == "Q4_1"


def test_generate_streams_tokens_then_final_metrics(http):
    with http.stream("POST", "/api/generate", json={"model": MODEL_NAME, "prompt": "Count to five.",
                                                     "options": {"num_predict": 8, "temperature": 0}}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert len(lines) >= 2 and all(not l["done"] for l in lines[:-1])
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "length"
    assert final["eval_count"] == 8
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] > 0, key
    assert isinstance(final["context"], list) and final["context"]
