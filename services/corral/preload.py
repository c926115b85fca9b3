"""``corral pull``: pull models through a running Corral (or Ollama) endpoint, as ``ollama pull`` does.

The one-shot preload of ``docker compose`` and the Helm chart's post-install Job run this: it
waits (bounded) for the endpoint to answer, pulls each model with ``/api/pull``, prints the
progress lines' statuses, and exits non-zero on the first failure, so the orchestrator sees it.
"""

from __future__ import annotations

import json
import sys
import time

import httpx

from corral.api.errors import CorralError
from corral.settings import parse_ollama_host

WAIT_POLL_S = 1.0


class PullFailedError(CorralError):
    pass


def endpoint_from_env(ollama_host: str) -> str:
    """The URL a client uses for OLLAMA_HOST (a wildcard bind address means this machine)."""
    if ollama_host.startswith(("http://", "https://")):
        return ollama_host.rstrip("/")
    listen = parse_ollama_host(ollama_host)
    host = "127.0.0.1" if listen.host in ("", "0.0.0.0", "::") else listen.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{listen.port}"


def wait_until_up(client: httpx.Client, endpoint: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if client.get(endpoint + "/api/version", timeout=5).status_code == 200:
                return
            problem = "not ready"
        except httpx.HTTPError as exc:
            problem = str(exc) or type(exc).__name__
        if time.monotonic() >= deadline:
            raise PullFailedError(f"{endpoint} did not answer within {wait_s:g}s ({problem})")
        time.sleep(WAIT_POLL_S)


def pull(client: httpx.Client, endpoint: str, model: str, *, insecure: bool, out=sys.stdout) -> None:
    last = None
    body = {"model": model, "insecure": insecure, "stream": True}
    with client.stream("POST", endpoint + "/api/pull", json=body, timeout=httpx.Timeout(30, read=600)) as reply:
        if reply.status_code != 200:
            reply.read()
            raise PullFailedError(f"pulling {model}: {_error_of(reply.text) or reply.status_code}")
        for line in reply.iter_lines():
            if not line.strip():
                continue
            event = json.loads(line)
            if "error" in event:
                raise PullFailedError(f"pulling {model}: {event['error']}")
            status = event.get("status", "")
            if status != last:  # one line per step, not per progress tick
                print(f"{model}: {status}", file=out, flush=True)
                last = status
    if last != "success":
        raise PullFailedError(f"pulling {model}: the stream ended before success")


def _error_of(text: str) -> str | None:
    try:
        return json.loads(text).get("error")
    except (ValueError, AttributeError):
        return text.strip() or None


def run(models: list[str], *, endpoint: str, wait_s: float, insecure: bool) -> int:
    from corral.keys import client_headers  # (it imports this module)

    with httpx.Client(headers=client_headers()) as client:
        try:
            wait_until_up(client, endpoint, wait_s)
            for model in models:
                pull(client, endpoint, model, insecure=insecure)
        except (PullFailedError, httpx.HTTPError) as exc:
            print(f"corral pull: {exc}", file=sys.stderr)
            return 1
    return 0
