"""What every client command shares: where the server is (``OLLAMA_HOST``), the key it is sent
(``OLLAMA_API_KEY``, as the ``ollama`` client sends it), and how a failure reads.

A command raises ``CliError`` with the words ``ollama`` would print; ``corral.cli.main`` prints
it as ``Error: <words>`` on stderr and exits 1, never with a traceback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from corral.settings import parse_ollama_host

CALL_TIMEOUT = httpx.Timeout(30.0)
# Pulls, pushes, creates and answers stream for as long as they take; a silent minute is a
# server that went away.
STREAM_TIMEOUT = httpx.Timeout(30.0, read=600.0)
UNREACHABLE = "could not connect to ollama server, run 'ollama serve' to start it"


class CliError(Exception):
    """A failure the user is told about in one line; ``status``: the server's, when it answered."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def endpoint_from_env(ollama_host: str | None = None) -> str:
    """The URL a client uses for OLLAMA_HOST (a wildcard bind address means this machine)."""
    ollama_host = os.environ.get("OLLAMA_HOST", "") if ollama_host is None else ollama_host
    if ollama_host.startswith(("http://", "https://")):
        return ollama_host.rstrip("/")
    listen = parse_ollama_host(ollama_host)
    host = "127.0.0.1" if listen.host in ("", "0.0.0.0", "::") else listen.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{listen.port}"


def client_headers() -> dict[str, str]:
    """``OLLAMA_API_KEY`` as a bearer token, as the ``ollama`` client sends it."""
    key = os.environ.get("OLLAMA_API_KEY", "").strip()
    return {"Authorization": f"Bearer {key}"} if key else {}


def error_text(body: bytes | str, status: int) -> str:
    """The server's ``{"error": ...}`` (or OpenAI's envelope), else the body, else the status."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        error = error.get("message")
    if isinstance(error, str) and error:
        return error
    return text.strip() or f"{status} {httpx.codes.get_reason_phrase(status)}".strip()


class Api:
    """The Ollama API at one endpoint."""

    def __init__(self, endpoint: str | None = None) -> None:
        self.endpoint = endpoint or endpoint_from_env()
        self.http = httpx.Client(base_url=self.endpoint, headers=client_headers(), timeout=CALL_TIMEOUT)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.http.close()

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        """A failure to reach the server (or to hear all of its answer) as the user is told it."""
        try:
            yield
        except httpx.ConnectError:
            raise CliError(UNREACHABLE) from None
        except httpx.HTTPError as exc:
            raise CliError(f"{self.endpoint}: {exc or type(exc).__name__}") from None

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        """One call; a 4xx or 5xx becomes its ``CliError``."""
        with self._reaching():
            reply = self.http.request(method, path, json=body, **kwargs)
        if reply.status_code >= 400:
            raise CliError(error_text(reply.content, reply.status_code), reply.status_code)
        return reply

    def exists(self, path: str) -> bool:
        """``HEAD path``: 200 is there, 404 is not, anything else is the server's error."""
        with self._reaching():
            reply = self.http.head(path)
        if reply.status_code not in (200, 404):
            raise CliError(error_text(reply.content, reply.status_code), reply.status_code)
        return reply.status_code == 200

    def json(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        """One call's JSON answer (None for an empty one)."""
        reply = self.request(method, path, body, **kwargs)
        return _decoded(reply.content) if reply.content else None

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """An NDJSON stream's objects; an ``{"error"}`` line (or a failed status) raises."""
        with self._reaching(), self.http.stream("POST", path, json=body, timeout=STREAM_TIMEOUT) as reply:
            if reply.status_code >= 400:  # as ollama's streaming calls say it: with the status line
                status = f"{reply.status_code} {reply.reason_phrase}".strip()
                raise CliError(f"{status}: {error_text(reply.read(), reply.status_code)}", reply.status_code)
            for line in reply.iter_lines():
                if not line.strip():
                    continue
                event = _decoded(line)
                if not isinstance(event, dict):
                    raise CliError(f"unexpected line from the server: {line[:200]}")
                if "error" in event:
                    raise CliError(error_text(line, reply.status_code))
                yield event


def _decoded(data: bytes | str) -> Any:
    """A server's JSON, or the user's error (as ollama's client words a body it cannot read)."""
    try:
        return json.loads(data)
    except ValueError as exc:
        raise CliError(f"invalid JSON from the server: {exc}") from None
