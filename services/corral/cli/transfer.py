"""``corral pull`` and ``corral push``: a model to or from a registry, through the server, with
``ollama``'s progress display (``corral.cli.progress``).

``pull`` is also what compose's preload service and the Helm chart's post-install Job run:
``--wait`` waits (bounded) for the endpoint to answer first, and the plain log it prints when
not on a terminal is what their logs show. A pull stopped with Ctrl-C resumes where it was on
the next pull: the server keeps the layers it has. The progress goes to stderr; stdout has
only what ollama prints there (push: where the model now is).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import httpx

from corral.cli.client import Api, CliError
from corral.cli.progress import Progress

WAIT_POLL_S = 1.0


def wait_until_up(api: Api, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if api.http.get("/api/version", timeout=5).status_code == 200:
                return
            problem = "not ready"
        except httpx.HTTPError as exc:
            problem = str(exc) or type(exc).__name__
        if time.monotonic() >= deadline:
            raise CliError(f"{api.endpoint} did not answer within {wait_s:g}s ({problem})")
        time.sleep(WAIT_POLL_S)


def transfer(api: Api, path: str, model: str, *, insecure: bool) -> None:
    """One ``/api/pull`` or ``/api/push`` stream, drawn as it goes; raises on its error."""
    progress = Progress(model, kind=path.rsplit("/", 1)[-1])
    last = ""
    try:
        for event in api.stream(path, {"model": model, "insecure": insecure, "stream": True}):
            progress.update(event)
            last = event.get("status", last)
    finally:
        progress.close()
    if last != "success":
        raise CliError(f"{path.rsplit('/', 1)[-1]} of {model} ended before success")


def pull(args: argparse.Namespace) -> int:
    models = [m for arg in args.models for m in arg.replace(",", " ").split()]
    with Api(args.host or None) as api:
        if args.wait:
            wait_until_up(api, args.wait)
        for model in models:
            transfer(api, "/api/pull", model, insecure=args.insecure)
    return 0


def push(args: argparse.Namespace) -> int:
    with Api() as api:
        transfer(api, "/api/push", args.model, insecure=args.insecure)
    print(f"\nYou can find your model at:\n\n\t{args.model}")
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("pull", help="pull models from a registry (also: preload them into a cluster)")
    p.add_argument("models", nargs="+", help="model names (a comma- or space-separated list also works)")
    p.add_argument("--host", default="", help="endpoint URL (default from OLLAMA_HOST, else 127.0.0.1:11434)")
    p.add_argument("--wait", type=float, default=0, help="seconds to wait for the endpoint to answer first")
    p.add_argument("--insecure", action="store_true", help="use an insecure registry")
    p.set_defaults(func=pull)
    p = sub.add_parser("push", help="push a model to a registry")
    p.add_argument("model")
    p.add_argument("--insecure", action="store_true", help="use an insecure registry")
    p.set_defaults(func=push)
