"""A short load through an endpoint with the real clients, shaped so that every dashboard
panel has something to show: streamed and whole answers (time to first token, tokens/s),
both API families, a burst beyond the slots (queueing), an unknown model (an error status),
and an unload with ``keep_alive: 0`` followed by a new request (an eviction and a load)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import ollama
import openai
import pytest

TIMEOUT_S = 180.0
BURST = 6


def short_load(endpoint: str, model: str) -> None:
    client = ollama.Client(host=endpoint, timeout=TIMEOUT_S)
    for seed in range(3):
        parts = list(client.chat(
            model=model, messages=[{"role": "user", "content": "Name a colour."}], stream=True,
            options={"num_predict": 16, "seed": seed},
        ))
        assert parts[-1].done and "".join(p.message.content for p in parts).strip()

    oai = openai.OpenAI(base_url=f"{endpoint}/v1", api_key="corral", timeout=TIMEOUT_S, max_retries=0)
    reply = oai.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=16,
    )
    assert reply.choices[0].message.content.strip()

    def generate(i: int) -> str:
        return client.generate(model=model, prompt=f"Count to {i + 3}.", options={"num_predict": 24}).response

    with ThreadPoolExecutor(BURST) as pool:
        answers = list(pool.map(generate, range(BURST)))
    assert all(a.strip() for a in answers), answers

    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="no-such-model:latest", messages=[{"role": "user", "content": "Hi"}])
    assert missing.value.status_code == 404

    unloaded = client.generate(model=model, prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload", unloaded
    again = client.generate(model=model, prompt="One more word.", options={"num_predict": 8})
    assert again.response.strip()
