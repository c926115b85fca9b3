"""A real Redis on loopback for tests of the cluster's shared state: no mocks.

``RedisServer`` runs Debian's ``redis-server`` on a free loopback port, its files in a tmp dir,
nothing persisted (``--save ''``, no AOF): a restart (``shutdown()`` then ``start()``, same port)
comes back empty, like a Redis that lost its data. It runs under a watchdog shell in its own
process group, as the registries of ``tests.support.registries`` do: stopping kills the group, and
the server dies with the test process even when that is SIGKILLed.

The ``redis_server`` fixture (conftest.py) gives a test one of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import weakref
from pathlib import Path

import redis

from corral.supervise import Child, tail
from tests.support.registries import OwnedServer
from tests.support.servers import free_port


class RedisServer(OwnedServer):
    """``redis-server`` on 127.0.0.1:<free port>; returns once it answers PING."""

    def __init__(self, tmp: Path | None = None, *, start_timeout: float = 10.0, args: list[str] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server missing: apt-get install redis-server (./scripts/test does)")
        self._use_tmp(tmp, "corral-redis-")
        self.binary = binary
        self.start_timeout = start_timeout
        self.args = list(args)  # more of redis-server's options (--replicaof host port)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.log_path = self.tmp / f"redis-{self.port}.log"
        self.process: Child | None = None
        self._finalizer: weakref.finalize | None = None
        self.start()

    def start(self) -> None:
        """Start the server (again, after ``shutdown``) on the same port, empty."""
        if self.running:
            raise RuntimeError("redis-server is already running")
        command = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.tmp),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", str(self.log_path), *self.args,
        ]
        self.process = Child("redis-watchdog", command, watched=True).start()
        self._finalizer = weakref.finalize(self, self.process.stop)
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
                if not self.process.alive():
                    raise RuntimeError(f"redis-server exited with {self.process.exit_code}:\n{tail(self.log_path)}")
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer within {self.start_timeout}s:\n{tail(self.log_path)}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.alive()

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


class SentinelGroup:
    """A Redis master, one replica and three sentinels watching them, on loopback: failover for
    tests (a master unseen for 1 s is down; two sentinels agree to replace it).

    ``url`` is the ``redis+sentinel://`` URL clients use; ``kill_master`` SIGKILLs the current
    master and returns once the sentinels have promoted the replica."""

    SERVICE = "corral"

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.servers: list[RedisServer] = []
        self.sentinels: list[tuple[int, Child]] = []
        try:
            no_delay = ["--repl-diskless-sync-delay", "0"]  # a replica syncs at once, not after 5 s
            master = RedisServer(tmp / "master", args=no_delay)
            self.servers.append(master)
            replica = RedisServer(tmp / "replica", args=[*no_delay, "--replicaof", "127.0.0.1", str(master.port)])
            self.servers.append(replica)
            with replica.client() as client:
                self._wait(lambda: client.info("replication")["master_link_status"] == "up", "the replica to sync")
            for i in range(3):
                self._start_sentinel(i, master.port)
            self.url = "redis+sentinel://" + ",".join(f"127.0.0.1:{port}" for port, _ in self.sentinels) + \
                f"/{self.SERVICE}"
            self._wait(lambda: all(len(self._ask(port, "SENTINEL", "REPLICAS", self.SERVICE) or []) == 1
                                   and len(self._ask(port, "SENTINEL", "SENTINELS", self.SERVICE) or []) == 2
                                   for port, _ in self.sentinels), "the sentinels to see the replica and each other")
        except BaseException:
            self.stop()
            raise

    def _start_sentinel(self, i: int, master_port: int) -> None:
        port = free_port()
        conf = self.tmp / f"sentinel-{i}.conf"  # sentinels rewrite their own file
        conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.tmp}\n"
                        f"sentinel monitor {self.SERVICE} 127.0.0.1 {master_port} 2\n"
                        f"sentinel down-after-milliseconds {self.SERVICE} 1000\n"
                        f"sentinel failover-timeout {self.SERVICE} 5000\n"
                        f"sentinel parallel-syncs {self.SERVICE} 1\n")
        command = [shutil.which("redis-server"), str(conf), "--sentinel", "--logfile", str(self.tmp / f"sentinel-{i}.log")]
        process = Child("sentinel-watchdog", command, watched=True).start()
        self.sentinels.append((port, process))
        self._wait(lambda: self._ask(port, "PING"), f"sentinel {i} to answer")

    @staticmethod
    def _ask(port: int, *command: str) -> object:
        try:
            with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, decode_responses=True) as client:
                return client.execute_command(*command)
        except redis.RedisError:
            return None

    @staticmethod
    def _wait(probe, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not probe():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def master(self) -> RedisServer:
        """The server the sentinels name as master now."""
        port, _ = self.sentinels[0]
        _, master_port = self._ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
        return next(s for s in self.servers if s.port == int(master_port))

    def kill_master(self) -> RedisServer:
        """SIGKILL the master; returns the replica once every sentinel names it master."""
        old = self.master()
        os.killpg(old.process.pid, signal.SIGKILL)
        new = next(s for s in self.servers if s is not old)
        self._wait(lambda: all((self._ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE) or [0, 0])[1]
                               == str(new.port) for port, _ in self.sentinels), "the sentinels to promote the replica")
        return new

    def stop(self) -> None:
        for _, process in self.sentinels:
            process.stop()
        for server in self.servers:
            server.shutdown()
