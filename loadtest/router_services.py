"""The processes bench_router.py runs: Redis, the registry, routers, nginx and the paced fake worker."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

from corral.settings import DEFAULT_MAX_REQUEST_BODY, parse_size
from corral.up import nginx_conf
from harness import ROOT, START_TIMEOUT_S, Deadline, Service, children, free_port
from router_setup import FAKE_WORKER, NGINX_BINARY, NUM_CTX, REDIS_BINARY, REGISTRY_BINARY


class Redis(Service):
    """``redis-server`` on a free loopback port, no persistence."""

    name = "redis"

    def __init__(self, tmp: Path) -> None:
        port = free_port()
        (tmp / "redis").mkdir()
        cmd = [
            REDIS_BINARY,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp / "redis"),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        super().__init__(cmd, port, tmp / "redis.log")

    def redis_url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def wait_ready(self, deadline: Deadline) -> None:
        end = time.monotonic() + deadline.left(START_TIMEOUT_S)
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"redis did not answer PING within {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")


class Registry(Service):
    """``docker-registry serve`` on a free loopback port, filesystem storage under ``tmp``."""

    name = "registry"
    ready_path = "/v2/"

    def __init__(self, tmp: Path) -> None:
        port = free_port()
        (tmp / "registry").mkdir()
        config = tmp / "registry.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {tmp / 'registry'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{port}\n  secret: x\n"
        )
        super().__init__([REGISTRY_BINARY, "serve", str(config)], port, tmp / "registry.log")


def _corral_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_HOST", "OLLAMA_MODELS", "PROMETHEUS_MULTIPROC_DIR")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "services"), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


class Router(Service):
    """``corral router`` (gunicorn + uvicorn, CORRAL_ROUTER_PROCESSES=1) on a free loopback port."""

    name = "router"

    def __init__(
        self, tmp: Path, label: str, redis_url: str, registry_url: str, extra_env: dict[str, str] | None = None
    ) -> None:
        port = free_port()
        home = tmp / label
        (home / "metrics").mkdir(parents=True)
        env = _corral_env(
            {
                "OLLAMA_HOST": f"127.0.0.1:{port}",
                "REDIS_URL": redis_url,
                "CORRAL_REGISTRY_URL": registry_url,
                "PROMETHEUS_MULTIPROC_DIR": str(home / "metrics"),
                "CORRAL_SPOOL_DIR": str(home / "spool"),
                "CORRAL_ROUTER_PROCESSES": "1",
                "OLLAMA_KEEP_ALIVE": "-1",
                "OLLAMA_CONTEXT_LENGTH": str(NUM_CTX),
                **(extra_env or {}),
            }
        )
        entry = Path(sys.executable).parent / "corral"
        cmd = [str(entry), "router"] if entry.exists() else [sys.executable, "-m", "corral.cli", "router"]
        self.command = " ".join(Path(cmd[0]).name if i == 0 else c for i, c in enumerate(cmd))
        super().__init__(cmd, port, tmp / f"{label}.log", env=env, cwd=ROOT)

    def worker_pid(self) -> int:
        """The gunicorn worker process (the one that serves requests), a child of the master."""
        end = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < end:
            kids = children(self.pid)
            if kids:
                return kids[0]
            time.sleep(0.1)
        raise RuntimeError(f"router {self.pid} has no gunicorn worker process")


class Nginx(Service):
    """nginx in front of the routers, configured as ``corral up`` configures it
    (``--split`` also puts one straight in front of the worker, with the same configuration)."""

    name = "nginx"

    def __init__(self, tmp: Path, router_ports: list[int], label: str = "nginx") -> None:
        port = free_port()
        prefix = tmp / label
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        conf = nginx_conf(
            router_ports, f"127.0.0.1:{port}", tmp / f"{label}-error.log", parse_size(DEFAULT_MAX_REQUEST_BODY)
        )
        (prefix / "nginx.conf").write_text(conf)
        super().__init__(
            [NGINX_BINARY, "-p", str(prefix), "-c", "nginx.conf", "-g", "daemon off;"], port, tmp / f"{label}.log"
        )


class FakeWorker(Service):
    """``loadtest/fake_worker.py``: the PACED FAKE WORKER (registers in Redis, answers at once)."""

    name = "fake worker"

    def __init__(self, tmp: Path, worker_id: str, redis_url: str, tokens: int, port: int | None = None) -> None:
        port = port or free_port()
        self.id = worker_id
        self.tokens = tokens
        cmd = [
            sys.executable,
            str(FAKE_WORKER),
            "--port",
            str(port),
            "--redis",
            redis_url,
            "--id",
            worker_id,
            "--tokens",
            str(tokens),
            "--pace-ms",
            "0",
        ]
        super().__init__(cmd, port, tmp / f"{worker_id}-{tokens}.log", env=_corral_env({}), cwd=ROOT)
