"""The last resort every service has (``serve_ollama_api``): an exception no handler expected
becomes a 500 in the route's own format, with a request id, and the connection stays usable.

A small app with the services' own wiring and one route that fails as a bug would, served by a
real uvicorn on loopback and asked over one keep-alive connection (``http.client``: a closed or
reset connection shows as an error on the next request).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI

from corral.api.http import serve_ollama_api
from corral.settings import CommonSettings
from corral.worker.metrics import WorkerMetrics
from tests.support.servers import free_port


@pytest.fixture
def server() -> Iterator[int]:
    app = FastAPI()

    @app.post("/api/chat")
    @app.post("/v1/chat/completions")
    async def broken() -> None:
        raise KeyError("a bug")

    @app.get("/")
    async def root() -> str:
        return "ok"

    serve_ollama_api(app, CommonSettings(), WorkerMetrics())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def test_an_unexpected_error_is_a_500_in_the_routes_format_and_the_connection_stays(server: int, caplog):
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=10)
    try:
        for path in ("/api/chat", "/v1/chat/completions"):
            conn.request("POST", path, body=b"{}", headers={"X-Request-Id": "req-42"})
            r = conn.getresponse()
            body = json.loads(r.read())
            assert r.status == 500 and not r.will_close
            assert r.getheader("X-Request-Id") == "req-42"
            message = "internal error (request id req-42)"
            if path.startswith("/v1/"):
                assert body == {"error": {"message": message, "type": "api_error", "param": None, "code": None}}
            else:
                assert body == {"error": message}
        # The same connection goes on serving.
        conn.request("GET", "/")
        r = conn.getresponse()
        assert (r.status, json.loads(r.read())) == (200, "ok")
        # A request id the client made up is not trusted as is.
        conn.request("POST", "/api/chat", body=b"{}", headers={"X-Request-Id": "bad id\twith spaces"})
        r = conn.getresponse()
        ident = r.getheader("X-Request-Id")
        assert json.loads(r.read()) == {"error": f"internal error (request id {ident})"} and len(ident) == 16
    finally:
        conn.close()
    logged = [rec for rec in caplog.records if "unhandled error" in rec.getMessage()]
    assert len(logged) == 3 and "req-42" in logged[0].getMessage() and logged[0].exc_info
