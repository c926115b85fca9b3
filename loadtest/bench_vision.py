#!/usr/bin/env python
"""Images in the batched decode loop: what an image request costs the streams running beside it.

Run from the repository root (on a quiet machine; see loadtest/README.md):

    .venv/bin/python loadtest/bench_vision.py [--repeats 5] [--out loadtest/reports/vision.md]

One real ``corral worker`` (OLLAMA_NUM_PARALLEL=4) with the test model and, as a second model,
the test model plus the tests' tiny projector (tests/support/projector.py: a seeded random CLIP
encoder, 16 embeddings an image). Three greedy streams run; once they are generating, one
request with three images and a short text arrives. For each repeat the report takes

- the streams' inter-token gaps before the image request (the baseline step), and the longest
  gap while it is read (from its send to its first token);
- the image request's own prefill as the worker reports it (``prompt_eval_duration``).

The target (the vision issue): no stream waits longer than the image request's own prefill,
plus one baseline step (a gap always contains one step of the streams' own). Alone, a
prefill with three images is also measured, and the same request without images, to show
what the images themselves cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_worker import import_model  # noqa: E402
from corral.store.manifest import file_digest  # noqa: E402
from harness import (  # noqa: E402
    Deadline,
    Worker,
    banners,
    busy_reason,
    exit_on_sigterm,
    exit_status,
    fmt,
    loadavg,
    machine,
    median,
    samples,
    save,
)
from tests.support.images import png  # noqa: E402
from tests.support.model import TEST_MODEL  # noqa: E402
from tests.support.projector import IMAGE_TOKENS  # noqa: E402
from tests.support.vision import MODEL as VISION_MODEL  # noqa: E402
from tests.support.vision import b64, create_vision_model  # noqa: E402

STREAMS = 3
STREAM_TOKENS = 160
ASK = "Compare these pictures."
_drawn = 0


def fresh_images(n: int = 3) -> list[bytes]:
    """Images never sent before: a repeat must not find them in a sequence's cached prefix."""
    global _drawn
    _drawn += 1
    return [png(64, 64, lambda x, y, k=k, d=_drawn: ((x * (k + 3) + d) % 256, (y * (k + 5) + 7 * d) % 256, 40 * k))
            for k in range(n)]


async def stream(client, arrivals: list[float], started: asyncio.Event) -> None:
    body = {"model": VISION_MODEL, "prompt": "Tell me a long story about a lighthouse keeper.",
            "options": {"temperature": 0, "num_predict": STREAM_TOKENS}}
    async with client.stream("POST", "/api/generate", json=body) as r:
        async for line in r.aiter_lines():
            if line:
                arrivals.append(time.perf_counter())
                started.set()


async def image_request(client, images: list[bytes]) -> tuple[float, float, dict]:
    """(sent at, first token at, final chunk)."""
    import json

    body = {"model": VISION_MODEL, "prompt": ASK, "images": [b64(i) for i in images], "keep_alive": -1,
            "options": {"temperature": 0, "num_predict": 8}}
    sent = time.perf_counter()
    first = 0.0
    final: dict = {}
    async with client.stream("POST", "/api/generate", json=body) as r:
        async for line in r.aiter_lines():
            if line:
                first = first or time.perf_counter()
                final = json.loads(line)
    return sent, first, final


async def one_repeat(url: str) -> dict:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        arrivals: list[list[float]] = [[] for _ in range(STREAMS)]
        events = [asyncio.Event() for _ in range(STREAMS)]
        tasks = [asyncio.create_task(stream(client, arrivals[i], events[i])) for i in range(STREAMS)]
        await asyncio.gather(*(e.wait() for e in events))
        await asyncio.sleep(1.0)  # the streams in their stride
        sent, first, final = await image_request(client, fresh_images())
        await asyncio.gather(*tasks)
    before, during = [], []
    for times in arrivals:
        for a, b in zip(times, times[1:]):
            if b < sent:
                before.append(b - a)
            elif a < first and b > sent:
                during.append(b - a)
    return {"step_s": median(before), "longest_gap_s": max(during, default=0.0),
            "prefill_s": final.get("prompt_eval_duration", 0) / 1e9, "ttft_s": first - sent,
            "prompt_tokens": final.get("prompt_eval_count", 0)}


async def alone(url: str, images: list[bytes], nonce: int) -> tuple[float, int]:
    """The prefill of the request, alone; ``nonce`` starts its text (no cached prefix to reuse)."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        r = await client.post("/api/generate", json={"model": VISION_MODEL, "prompt": f"{nonce}. {ASK}", "stream": False,
                                                     "images": [b64(i) for i in images],
                                                     "options": {"temperature": 0, "num_predict": 1}})
        r.raise_for_status()
        final = r.json()
    return final["prompt_eval_duration"] / 1e9, final["prompt_eval_count"]


def build_report(args, meta: dict, runs: list[dict], plain: list[float], imaged: list[float], tokens: tuple[int, int],
                 problems: list[str]) -> str:
    margins = [r["longest_gap_s"] - (r["prefill_s"] + r["step_s"]) for r in runs]
    ok = all(m <= 0 for m in margins)
    lines = [
        "# Images in the batched decode loop (loadtest/bench_vision.py)",
        "",
        *banners(meta, problems, "Problems", "The machine was busy"),
        f"{meta['date']}. Machine: {meta['cpu']}, {meta['nproc']} cores, {meta['mem']}; load {meta['load_start']} at start, "
        f"{loadavg()} at end. Model: SmolLM2-135M Q4_1 with the tests' tiny projector ({IMAGE_TOKENS} embeddings "
        f"an image); OLLAMA_NUM_PARALLEL=4, {args.threads} threads. {args.repeats} repeats.",
        "",
        "## Alone",
        "",
        "| prompt | tokens | prefill (median, s) | samples |",
        "|---|---|---|---|",
        f"| `<n>. {ASK}` | {tokens[0]} | {fmt(median(plain), 3)} | {samples(plain, 3)} |",
        f"| the same with 3 images | {tokens[1]} | {fmt(median(imaged), 3)} | {samples(imaged, 3)} |",
        "",
        f"## Beside {STREAMS} running streams",
        "",
        "| repeat | streams' step (median gap, s) | longest gap while the image request is read (s) "
        "| its prefill (s) | its first token after (s) | gap − (prefill + step) (s) |",
        "|---|---|---|---|---|---|",
        *[f"| {i + 1} | {fmt(r['step_s'], 3)} | {fmt(r['longest_gap_s'], 3)} | {fmt(r['prefill_s'], 3)} "
          f"| {fmt(r['ttft_s'], 3)} | {fmt(m, 3)} |" for i, (r, m) in enumerate(zip(runs, margins))],
        "",
        f"**Target** (no stream waits longer than the image request's own prefill plus one step of its own): "
        f"{'PASS' if ok else 'FAIL'} (worst margin {fmt(max(margins, default=0.0), 3)} s).",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", type=Path, default=TEST_MODEL)
    p.add_argument("--out", type=Path, default=Path("loadtest/reports/vision.md"))
    p.add_argument("--max-seconds", type=float, default=900.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    if not args.model.is_file():
        print(f"model missing at {args.model}: run ./scripts/test or set CORRAL_TEST_MODEL", file=sys.stderr)
        return 2
    deadline = Deadline(args.max_seconds)
    meta = {**machine(), "load_start": loadavg(), "busy": []}
    problems: list[str] = []
    runs: list[dict] = []
    plain: list[float] = []
    imaged: list[float] = []
    tokens = (0, 0)
    with tempfile.TemporaryDirectory(prefix="corral-bench-vision-") as tmp, contextlib.ExitStack() as up:
        worker = Worker(Path(tmp), {"OLLAMA_NUM_PARALLEL": "4", "CORRAL_NUM_THREADS": str(args.threads),
                                    "OLLAMA_KEEP_ALIVE": "-1"})
        up.callback(worker.stop)
        worker.wait_ready(deadline)
        digest = file_digest(args.model)
        import_model(worker.url, args.model, digest)
        create_vision_model(worker.url, digest, Path(tmp))
        asyncio.run(alone(worker.url, fresh_images(), 0))  # load, and the first image's one-off costs
        for repeat in range(args.repeats):
            plain_s, plain_tokens = asyncio.run(alone(worker.url, [], 1000 + repeat))
            imaged_s, imaged_tokens = asyncio.run(alone(worker.url, fresh_images(), 2000 + repeat))
            plain.append(plain_s)
            imaged.append(imaged_s)
            tokens = (plain_tokens, imaged_tokens)
            runs.append(asyncio.run(one_repeat(worker.url)))
            print(f"[bench] {runs[-1]}", flush=True)
        reason, _ = busy_reason(after_own_load=True)
        if reason:
            meta["busy"].append(f"at end: {reason}")
    save(build_report(args, meta, runs, plain, imaged, tokens, problems), args.out, None, {})
    return exit_status(meta, problems)


if __name__ == "__main__":
    sys.exit(main())
