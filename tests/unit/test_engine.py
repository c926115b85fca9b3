"""The engine alone (no HTTP): one context, several sequences, llama.cpp sampling, with the real model."""

from __future__ import annotations

import queue
import threading

import pytest

from corral.worker.engine import Done, EmbedJob, Engine, GenerateJob, LlamaModel, LoadOptions, Sampling, Token

PROMPT = "Once upon a time, in a small village by the sea, there lived"


@pytest.fixture(scope="module")
def engine(gguf_path):
    options = LoadOptions(num_ctx=512, n_parallel=3)
    eng = Engine(LlamaModel(gguf_path, options), options, threads=2)
    yield eng
    eng.close()


def generate(engine: Engine, prompt: str = PROMPT, **job) -> tuple[str, Done]:
    events: queue.Queue = queue.Queue()
    sampling = job.pop("sampling", Sampling(temperature=0))
    engine.submit(GenerateJob(prompt=engine.model.tokenize(prompt), sampling=sampling, emit=events.put, **job))
    pieces = []
    while True:
        ev = events.get(timeout=60)
        if isinstance(ev, Token):
            pieces.append(ev.piece)
        else:
            assert isinstance(ev, Done), ev
            return b"".join(pieces).decode("utf-8", errors="replace"), ev


def test_num_predict_bounds_generation(engine):
    text, done = generate(engine, num_predict=12)
    assert done.reason == "length" and done.generated_tokens == 12 and text
    assert done.tokens[: done.prompt_tokens] == engine.model.tokenize(PROMPT)


def test_greedy_and_seeded_sampling_repeat(engine):
    assert generate(engine, num_predict=10)[0] == generate(engine, num_predict=10)[0]
    seeded = Sampling(temperature=1.2, seed=7)
    first = generate(engine, num_predict=10, sampling=seeded)[0]
    assert generate(engine, num_predict=10, sampling=Sampling(temperature=1.2, seed=7))[0] == first


def test_sequences_run_together_and_each_gets_its_own_limit(engine):
    results: dict[int, Done] = {}

    def run(n: int) -> None:
        results[n] = generate(engine, num_predict=n, sampling=Sampling(temperature=0.9))[1]

    threads = [threading.Thread(target=run, args=(n,)) for n in (5, 9, 13, 17)]  # one more than slots
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert {n: d.generated_tokens for n, d in results.items()} == {5: 5, 9: 9, 13: 13, 17: 17}


def test_cancelled_job_ends_at_once_and_frees_its_sequence(engine):
    events: queue.Queue = queue.Queue()
    job = GenerateJob(prompt=engine.model.tokenize(PROMPT), sampling=Sampling(temperature=0), emit=events.put,
                      num_predict=5000)
    engine.submit(job)
    assert isinstance(events.get(timeout=60), Token)
    job.cancel()
    while not isinstance(ev := events.get(timeout=60), Done):
        pass
    assert ev.reason == "cancel" and ev.generated_tokens < 5000
    assert generate(engine, num_predict=3)[1].generated_tokens == 3


def test_grammar_constrains_output(engine):
    digits = 'root ::= [0-9] [0-9] [0-9]'
    text, done = generate(engine, num_predict=10, sampling=Sampling(temperature=0.8, grammar=digits))
    assert text.isdigit() and len(text) == 3 and done.reason == "stop"


def test_embeddings_have_the_model_width(engine):
    out: queue.Queue = queue.Queue()
    engine.submit(EmbedJob([engine.model.tokenize("hello"), engine.model.tokenize("world")], out.put))
    vectors = out.get(timeout=60)
    assert [len(v) for v in vectors] == [engine.model.n_embd] * 2 and vectors[0] != vectors[1]
