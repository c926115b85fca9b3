"""A real Redis on loopback for tests of the cluster's shared state: no mocks.

``RedisServer`` runs Debian's ``redis-server`` on a free loopback port, its files in a tmp dir,
nothing persisted (``--save ''``, no AOF): a restart (``shutdown()`` then ``start()``, same port)
comes back empty, like a Redis that lost its data. It runs under a watchdog shell in its own
process group, as the registries of ``tests.registries`` do: stopping kills the group, and
the server dies with the test process even when that is SIGKILLed.

Import the fixture at the bottom into a test module to use it
(``from tests.redisd import redis_server``).
"""

from __future__ import annotations

import shutil
import subprocess
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port
from tests.registries import _Server, _stop_group, _tail

# The command in "$@" under a shell that stops it on SIGTERM (and waits, so the port is free),
# and kills it when this process's end of the stdin pipe closes (this process died).
_WATCHDOG = """
"$@" </dev/null & pid=$!
trap 'kill $pid 2>/dev/null; wait $pid; exit $?' TERM
exec 3<&0 0</dev/null
(read _ <&3; kill $pid 2>/dev/null) &
wait $pid
"""


class RedisServer(_Server):
    """``redis-server`` on 127.0.0.1:<free port>; returns once it answers PING."""

    def __init__(self, tmp: Path | None = None, *, start_timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server missing: apt-get install redis-server (./scripts/test does)")
        self._use_tmp(tmp, "corral-redis-")
        self.binary = binary
        self.start_timeout = start_timeout
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.log_path = self.tmp / f"redis-{self.port}.log"
        self.process: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None
        self.start()

    def start(self) -> None:
        """Start the server (again, after ``shutdown``) on the same port, empty."""
        if self.running:
            raise RuntimeError("redis-server is already running")
        command = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.tmp),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", str(self.log_path),
        ]
        self.process = subprocess.Popen(
            ["sh", "-c", _WATCHDOG, "redis-watchdog", *command],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self._finalizer = weakref.finalize(self, _stop_group, self.process)
        try:
            self._wait_ready()
        except BaseException:
            self._finalizer()
            raise

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        with self.client(socket_timeout=1) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{_tail(self.log_path)}")
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer within {self.start_timeout}s:\n{_tail(self.log_path)}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, **kwargs: object) -> redis.Redis:
        """A client that decodes replies to str (``with`` it, or ``close()`` it)."""
        return redis.Redis.from_url(self.url, decode_responses=True, **{"socket_timeout": 5, **kwargs})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def shutdown(self) -> None:
        """Stop the server, its whole process group; returns once the port is free."""
        if self._finalizer:
            self._finalizer()

    def stop(self) -> None:
        self.shutdown()
        self._drop_tmp()


# -- pytest fixture (import it into a test module to use it) ---------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server
