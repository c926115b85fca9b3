"""Shared test fixtures: the real test model, and real servers on loopback.

The API tests run against two kinds of server (``SERVING``): one ``corral worker``, and a
whole cluster started by ``corral up`` (Redis, the registry, 3 workers, 2 routers, nginx),
which must answer exactly as the single worker does. The session fixture ``serving`` picks the
kind; ``worker`` and every fixture that starts a server of its own (``start_server``) follow
it, so each such test runs once per kind (``test_x[worker]``, ``test_x[cluster]``). A test about
one worker's own disk or internals carries ``@pytest.mark.worker_only("why")`` and is skipped
on the cluster with that reason.

Fixtures only; the helpers they use live in ``tests/support/``. Every test runs with the
caller's ``OLLAMA_*``/``CORRAL_*`` variables removed (the test kit's own ``_KEPT`` aside), so a
developer's shell settings cannot change what a test sees or what the servers it starts do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from corral.store.manifest import file_digest
from tests.support.model import TEST_MODEL
from tests.support.redisd import RedisServer
from tests.support.registries import RegistryServer, SeededModel, TokenServer, seed_model
from tests.support.servers import Server, import_model, start_server
from tests.support.vision import MODEL as VISION_MODEL
from tests.support.vision import create_vision_model

SERVING = ["worker", "cluster"]
# Variables the tests' own code reads; every other OLLAMA_*/CORRAL_* variable is removed.
_KEPT = frozenset({"CORRAL_TEST_MODEL", "CORRAL_CACHE", "CORRAL_DEBIAN_MIRROR"})


def _settings_in_env() -> list[str]:
    return [k for k in os.environ if k.startswith(("OLLAMA_", "CORRAL_")) and k not in _KEPT]


# Session fixtures start servers before any function-scoped fixture runs: the variables go at
# import, before the first test is collected.
for _name in _settings_in_env():
    del os.environ[_name]


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Also between tests: a test that sets one (monkeypatch or not) leaves none behind for the next."""
    for name in _settings_in_env():
        monkeypatch.delenv(name)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "worker_only(reason): about one worker process itself; skipped on the cluster")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("worker_only")
        params = getattr(item, "callspec", None)
        if marker and params and params.params.get("serving") == "cluster":
            item.add_marker(pytest.mark.skip(reason=f"worker only: {marker.args[0]}"))


# -- the test model ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    if not TEST_MODEL.is_file():
        pytest.fail(f"test model missing at {TEST_MODEL}: run ./scripts/test, which downloads it")
    return TEST_MODEL


@pytest.fixture(scope="session")
def gguf_digest(gguf_path: Path) -> str:
    return file_digest(gguf_path)


# -- the server under test: a worker or a cluster ------------------------------------------------


@pytest.fixture(scope="session", params=SERVING)
def serving(request: pytest.FixtureRequest) -> str:
    """The kind of server under test: ``worker`` or ``cluster``."""
    return request.param


@pytest.fixture(scope="session")
def worker(tmp_path_factory: pytest.TempPathFactory, gguf_path: Path, gguf_digest: str, serving: str) -> Iterator[Server]:
    """One server for the whole session, with the test model imported as smollm2:135m."""
    tmp = tmp_path_factory.mktemp(serving)
    proc = start_server(serving, tmp, {"OLLAMA_NUM_PARALLEL": "4"})
    try:
        import_model(proc.url, gguf_path, gguf_digest)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def vision(worker: Server, tmp_path_factory: pytest.TempPathFactory, gguf_digest: str) -> Iterator[Path]:
    """The test model with a tiny projector, as smolvision:latest (tests/support/vision.py); the
    projector's file."""
    projector = create_vision_model(worker.url, gguf_digest, tmp_path_factory.mktemp("projector"))
    yield projector
    httpx.request("DELETE", worker.url + "/api/delete", json={"model": VISION_MODEL}, timeout=60)


@pytest.fixture
def http(worker: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=worker.url, timeout=120) as client:
        yield client


# -- Redis -----------------------------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own (empty, nothing persisted)."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def redis_db(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of ``redis_server``'s database 0, flushed before and after the test."""
    with redis_server.client() as client:
        client.flushdb()
        yield client
        client.flushdb()


# -- registries ------------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryServer]:
    """A fresh registry without auth."""
    with RegistryServer(tmp_path) as server:
        yield server


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[TokenServer]:
    with TokenServer(tmp_path) as server:
        yield server


@pytest.fixture
def token_registry(tmp_path: Path, token_server: TokenServer) -> Iterator[RegistryServer]:
    """A fresh registry that demands bearer tokens from ``token_server``."""
    with RegistryServer(tmp_path, token_server=token_server) as server:
        yield server


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory, gguf_path: Path) -> Iterator[tuple[RegistryServer, SeededModel]]:
    """A registry holding the test model as library/smollm2:135m, shared by a module's tests."""
    with RegistryServer(tmp_path_factory.mktemp("upstream")) as server:
        yield server, seed_model(server, "library/smollm2", "135m", gguf=gguf_path)
