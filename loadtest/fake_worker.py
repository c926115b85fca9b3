#!/usr/bin/env python
"""A PACED FAKE WORKER, for benchmarks that measure the router alone. Not a model.

It registers in Redis like a real worker (``corral.cluster.workers``), heartbeats, and answers
``/api/generate`` and ``/api/chat`` with Ollama-shaped NDJSON: ``--tokens`` chunks spaced
``--pace-ms`` apart (0: as fast as it can), then a final ``done`` line; non-streamed requests
get the final object after the same total time. ``/api/ps`` and ``/`` answer as a worker's do.
Raw ASGI on uvicorn, so the fake costs as little CPU as possible and the router is what the
benchmark sees.

    python loadtest/fake_worker.py --port 12001 --redis redis://127.0.0.1:6379/0 --id fake-1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import redis.asyncio as aioredis
import uvicorn

from corral.cluster.workers import HEARTBEAT_S, WorkerInfo, deregister, heartbeat


def make_app(tokens: int, pace: float):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if path in ("/", "/api/ps") or scope["method"] == "GET":
            payload = b"Ollama is running" if path == "/" else b'{"models":[]}'
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": payload})
            return
        request = json.loads(body or b"{}")
        model = request.get("model", "")
        chat = path.endswith("/chat")
        if not request.get("prompt") and not request.get("messages"):  # load/unload orders
            await _json(send, {"model": model, "response": "", "done": True})
            return
        stream = request.get("stream", True)
        if not stream:
            await asyncio.sleep(pace * tokens)
            await _json(send, _final(model, chat, "tok " * tokens))
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-ndjson")]})
        for _ in range(tokens):
            if pace:
                await asyncio.sleep(pace)
            part = {"model": model, "created_at": "", "done": False}
            part.update({"message": {"role": "assistant", "content": "tok "}} if chat else {"response": "tok "})
            await send({"type": "http.response.body", "body": json.dumps(part).encode() + b"\n", "more_body": True})
        await send({"type": "http.response.body", "body": json.dumps(_final(model, chat, "")).encode() + b"\n"})

    return app


def _final(model: str, chat: bool, text: str) -> dict:
    out = {"model": model, "created_at": "", "done": True, "done_reason": "stop", "eval_count": 1}
    out.update({"message": {"role": "assistant", "content": text}} if chat else {"response": text})
    return out


async def _json(send, obj: dict) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(obj).encode()})


async def main(args: argparse.Namespace) -> None:
    # Room for anything: the router's memory estimate grows with the slots.
    info = WorkerInfo(id=args.id, url=f"http://127.0.0.1:{args.port}", memory_total=1 << 50,
                      num_parallel=args.parallel, max_loaded=8, started_at=int(time.time() * 1000),
                      labels={"fake": "paced"})
    redis = aioredis.from_url(args.redis)
    config = uvicorn.Config(make_app(args.tokens, args.pace_ms / 1000), host="127.0.0.1", port=args.port,
                            log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=75)
    server = uvicorn.Server(config)

    async def beat() -> None:
        while True:
            await heartbeat(redis, info)
            await asyncio.sleep(HEARTBEAT_S)

    task = asyncio.create_task(beat())
    try:
        await server.serve()
    finally:
        task.cancel()
        await deregister(redis, info.id)
        await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--id", default="fake-1")
    parser.add_argument("--tokens", type=int, default=1)
    parser.add_argument("--pace-ms", type=float, default=0.0)
    parser.add_argument("--parallel", type=int, default=256)
    asyncio.run(main(parser.parse_args()))
