"""The engine alone (no HTTP): one context, several sequences, llama.cpp sampling, with the real model."""

from __future__ import annotations

import logging
import math
import queue
import re
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
    return collect(submit(engine, prompt, **job))


def submit(engine: Engine, prompt: str = PROMPT, **job) -> queue.Queue:
    """Submit one job; its events arrive on the returned queue."""
    events: queue.Queue = queue.Queue()
    sampling = job.pop("sampling", Sampling(temperature=0))
    engine.submit(GenerateJob(prompt=engine.model.tokenize(prompt), sampling=sampling, emit=events.put, **job))
    return events


def collect(events: queue.Queue) -> tuple[str, Done]:
    """A submitted job's text and its Done event."""
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


def test_penalties_are_applied_in_the_sampler_chain(engine):
    plain = generate(engine, num_predict=24)[0]
    penalised, done = generate(engine, num_predict=24, sampling=Sampling(
        temperature=0, repeat_penalty=1.8, presence_penalty=0.5, frequency_penalty=0.5, repeat_last_n=64))
    assert done.generated_tokens == 24 and penalised != plain


def test_a_prompt_that_starts_like_a_cached_sequence_skips_the_shared_prefix(engine):
    prompt = PROMPT + " a fisherman who"
    sampling = lambda: Sampling(temperature=0.8)  # noqa: E731  (unseeded: may reuse the cache)
    first, done1 = generate(engine, prompt, num_predict=8, sampling=sampling())
    again, done2 = generate(engine, prompt, num_predict=8, sampling=sampling())
    _, done3 = generate(engine, prompt + first, num_predict=8, sampling=sampling())  # the next turn
    n = len(engine.model.tokenize(prompt))
    assert done2.cached == n - 1  # all but the last token, which must be decoded for its logits
    assert done3.cached >= n - 1 and done3.prompt_tokens > n


# Decoding this prompt's last token alone instead of inside the prompt's chunk flips a greedy
# choice on this machine's CPU kernels (found by search; other CPUs may round alike).
NEAR_TIE = ("rope quietly in a cold is spoke young quietly said rope young the light harbor a walked on and were to "
            "moon storm said sea the in keeper on is warm was is was tide walked night light was in and rope tide "
            "warm fisherman warm sea harbor tide cold on village young the tide is storm sea spoke in walked was "
            "ship spoke young harbor on was walked is")


def test_a_greedy_request_sent_again_reuses_the_cache_and_repeats_its_text(engine):
    n = len(engine.model.tokenize(NEAR_TIE))
    first, done1 = generate(engine, NEAR_TIE, num_predict=12)
    again, done2 = generate(engine, NEAR_TIE, num_predict=12)
    assert done1.cached == 0 and done2.cached == n - 1
    assert again == first


def test_a_long_prompt_is_decoded_in_chunks_between_running_tokens(engine):
    running: queue.Queue = queue.Queue()
    engine.submit(GenerateJob(prompt=engine.model.tokenize(PROMPT), sampling=Sampling(temperature=0),
                              emit=running.put, num_predict=400))
    assert isinstance(running.get(timeout=60), Token)  # it is generating
    long_prompt = engine.model.tokenize("The keeper wrote in his log every evening. " * 45)[:450]
    long_events: queue.Queue = queue.Queue()
    engine.submit(GenerateJob(prompt=long_prompt, sampling=Sampling(temperature=0), emit=long_events.put,
                              num_predict=2))
    first_long = long_events.get(timeout=120)
    # Tokens of the running job that arrived before the long prompt's first token.
    during, ended = 0, False
    while not running.empty():
        event = running.get_nowait()
        during += isinstance(event, Token)
        ended = ended or isinstance(event, Done)
    assert isinstance(first_long, Token)
    assert during >= 4, during  # not one 450-token stall: several steps, each with a running token
    while not ended:  # a few tokens per step: the running job may well have ended first
        ended = isinstance(running.get(timeout=120), Done)


def test_one_steps_events_cross_to_the_consumer_in_one_post(engine):
    posts: list[int] = []
    events: queue.Queue = queue.Queue()

    def post(fn):
        posts.append(1)
        fn()

    jobs = [GenerateJob(prompt=engine.model.tokenize(PROMPT), sampling=Sampling(temperature=0.8, seed=s),
                        emit=events.put, post=post, num_predict=16) for s in (1, 2)]
    for job in jobs:
        engine.submit(job)
    got = [events.get(timeout=60) for _ in range(2 * 17)]  # 16 tokens and a Done each
    assert sum(isinstance(e, Done) for e in got) == 2
    assert len(posts) < len(got)  # steps with both sequences delivered both tokens at once


def test_embedding_inputs_are_batched_and_match_one_by_one(engine):
    texts = ["hello", "the lighthouse keeper", "a much longer sentence about ships that pass in the night"]
    tokens = [engine.model.tokenize(t) for t in texts]
    together: queue.Queue = queue.Queue()
    engine.submit(EmbedJob(tokens, together.put))
    batched = together.get(timeout=60)
    for toks, vector in zip(tokens, batched):
        alone: queue.Queue = queue.Queue()
        engine.submit(EmbedJob([toks], alone.put))
        (single,) = alone.get(timeout=60)
        dot = sum(a * b for a, b in zip(vector, single))
        norms = math.sqrt(sum(a * a for a in vector)) * math.sqrt(sum(b * b for b in single))
        assert dot / norms > 0.9999


def test_short_prompts_arriving_together_start_in_the_same_step(engine):
    """A burst of short prompts while another sequence generates: each goes in whole, so all of
    them produce their first token in the next step instead of queueing behind each other."""
    step = {"n": 0}
    first_at: dict[int, int] = {}
    shorts: list[GenerateJob] = []

    def post(fn):  # runs on the engine thread at the end of each step
        step["n"] += 1
        fn()
        if step["n"] == 3:  # between two steps: both are in the inbox when the next one starts
            for job in shorts:
                engine.submit(job)

    def first_token(i: int):
        def emit(ev) -> None:
            if isinstance(ev, Token) and i not in first_at:
                first_at[i] = step["n"]
        return emit

    running: queue.Queue = queue.Queue()
    engine.submit(GenerateJob(prompt=engine.model.tokenize(PROMPT), sampling=Sampling(temperature=0),
                              emit=running.put, post=post, num_predict=60))
    prompt = engine.model.tokenize("A lighthouse stood on the rocks above the bay. " * 5)  # in no cache yet
    assert 40 < len(prompt) <= 128  # more than a minimum chunk: chunked, they would take several steps
    shorts += [GenerateJob(prompt=prompt, sampling=Sampling(temperature=0), emit=first_token(i), post=post,
                           num_predict=2) for i in range(2)]
    while not isinstance(running.get(timeout=120), Done):
        pass
    # Both whole in step 4; greedy, so each prompt's last token goes alone in step 5.
    assert first_at == {0: 5, 1: 5}, first_at


def test_each_step_reports_its_time_inside_and_around_llama_decode(gguf_path):
    steps: list[tuple[float, float | None]] = []
    options = LoadOptions(num_ctx=256, n_parallel=2)
    eng = Engine(LlamaModel(gguf_path, options), options, threads=2, on_step=lambda d, h: steps.append((d, h)))
    try:
        generate(eng, num_predict=6)
        first_request = len(steps)
        generate(eng, num_predict=6)
    finally:
        eng.close()
    # Greedy: the prompt, its last token alone, then one decode per token after the first.
    assert first_request >= 6 and len(steps) >= 2 * 6
    assert all(d > 0 for d, _ in steps)
    # The loop waited for the second request, so its first step has no "between" time; the
    # steps within a request do.
    assert steps[0][1] is None and steps[first_request][1] is None
    within = [h for _, h in steps[1:first_request] + steps[first_request + 1:]]
    assert all(h is not None and h > 0 for h in within)


def test_the_context_reserves_logits_for_one_token_per_sequence_not_the_whole_batch(gguf_path, caplog):
    # A step never asks for more than one token's logits per sequence; reserving the output
    # layer for all 512 batch positions would cost 512 x n_vocab floats (96 MiB for SmolLM2).
    options = LoadOptions(num_ctx=256, n_parallel=4)
    model = LlamaModel(gguf_path, options)
    with caplog.at_level(logging.DEBUG, logger="corral.llama_cpp"):
        eng = Engine(model, options, threads=2)
    try:
        sizes = [float(m.group(1)) for r in caplog.records
                 if (m := re.search(r"CPU compute buffer size = +([\d.]+) MiB", r.getMessage()))]
        assert sizes, "llama.cpp logged no compute buffer size"
        whole_batch_logits_mib = options.num_batch * model.n_vocab * 4 / 2**20
        assert max(sizes) < whole_batch_logits_mib / 2, (sizes, whole_batch_logits_mib)
        # Four sequences, submitted together, still get their logits in the same steps.
        jobs = [submit(eng, f"{PROMPT} {i}", num_predict=5) for i in range(4)]
        assert [collect(events)[1].generated_tokens for events in jobs] == [5, 5, 5, 5]
    finally:
        eng.close()
