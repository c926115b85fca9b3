"""``corral up``: a whole cluster on this machine from installed binaries, until Ctrl-C.

    redis-server  ─ cluster state (append-only file under the data dir; or --redis-url: one of yours,
                    a Sentinel group included)
    docker-registry (or registry) ─ the model store (under the data dir)
    N × corral worker  ─ one shared blob cache under the data dir
    N × corral router  ─ gunicorn + uvicorn
    nginx ─ the endpoint, round-robin over the routers (corral/nginx/)

Every child inherits this environment, so ``OLLAMA_*``/``CORRAL_*`` reach the services, with
the wiring (ports, URLs, directories) set here. Workers are told never to unload on their
own (``OLLAMA_KEEP_ALIVE=-1``): in a cluster the routers own keep-alive, from the
``OLLAMA_KEEP_ALIVE`` given to ``corral up``. Ctrl-C (or SIGTERM) stops everything, front
to back: nginx, routers, workers (each drains its requests), registry, Redis.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from corral.api.errors import CorralError
from corral.cluster.redis_client import check_redis_url
from corral.settings import DEFAULT_MAX_REQUEST_BODY, parse_size
from corral.supervise import Child, ChildError, Probe, free_port

logger = logging.getLogger("corral.up")

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 40.0  # a draining worker may take its CORRAL_DRAIN_TIMEOUT
# Shipped in the package (package data), so an installed corral runs `corral up` too.
NGINX_DIR = Path(__file__).resolve().parent / "nginx"


def nginx_conf(
    router_ports: list[int], listen: str, error_log: Path, max_body: int, *, proxy_conf: Path | None = None
) -> str:
    """nginx's configuration in front of routers on these loopback ports (``corral up``, and the
    router benchmark, which measures what ``corral up`` runs)."""
    conf = (NGINX_DIR / "corral-up.conf").read_text()
    conf = conf.replace("@@ROUTERS@@", "\n".join(f"        server 127.0.0.1:{p};" for p in router_ports))
    conf = conf.replace("@@LISTEN@@", listen).replace(
        "@@PROXY_CONF@@", str(proxy_conf or NGINX_DIR / "corral-proxy.conf")
    )
    conf = conf.replace("@@DIRECT_CONF@@", str(NGINX_DIR / "corral-direct.conf"))
    conf = conf.replace("@@ERROR_LOG@@", str(error_log))
    return conf.replace("@@MAX_BODY@@", str(max_body))


class UpError(CorralError):
    """Something ``corral up`` cannot start; the message says what to do."""


def find_binary(*names: str) -> str:
    for name in names:
        for directory in (None, "/usr/sbin", "/usr/local/sbin"):
            found = shutil.which(name, path=directory)
            if found:
                return found
    raise UpError(f"{' or '.join(names)} not found: install it (Debian: apt-get install {names[0]})")


def plan(
    *, port: int, workers: int, routers: int, data_dir: Path, host: str = "127.0.0.1", redis_url: str = ""
) -> list[Child]:
    """Every child, in start order, with its ports, directories and environment. With
    ``redis_url`` the cluster uses that Redis (one, or a Sentinel group) instead of its own."""
    redis_bin = "" if redis_url else find_binary("redis-server")
    registry_bin = find_binary("docker-registry", "registry")
    nginx_bin = find_binary("nginx")
    proxy_conf = Path(os.environ.get("CORRAL_NGINX_PROXY_CONF", NGINX_DIR / "corral-proxy.conf"))
    try:  # nginx refuses what the routers would: their CORRAL_MAX_REQUEST_BODY
        max_body = parse_size(os.environ.get("CORRAL_MAX_REQUEST_BODY", "").strip("\"' ") or DEFAULT_MAX_REQUEST_BODY)
    except ValueError as exc:
        raise UpError(f"CORRAL_MAX_REQUEST_BODY: {exc}") from None
    template = NGINX_DIR / "corral-up.conf"
    if not proxy_conf.is_file() or not template.is_file():
        raise UpError(f"nginx configuration not found in {NGINX_DIR}: the corral package is incomplete")
    corral = [sys.executable, "-m", "corral.cli"]
    logs = data_dir / "logs"
    base = dict(os.environ)
    for key in ("OLLAMA_HOST", "OLLAMA_MODELS", "PROMETHEUS_MULTIPROC_DIR"):
        base.pop(key, None)  # per child below

    registry_port = free_port()
    registry_url = f"http://127.0.0.1:{registry_port}"
    children = []
    if not redis_url:
        redis_port = free_port()
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        (data_dir / "redis").mkdir(parents=True, exist_ok=True)
        children.append(
            Child(
                "redis",
                [
                    redis_bin,
                    "--port",
                    str(redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(data_dir / "redis"),
                    "--appendonly",
                    "yes",
                    "--save",
                    "",
                ],
                base,
                logs / "redis.log",
                None,
            )
        )
    children += [
        Child(
            "registry",
            [registry_bin, "serve", str(_registry_config(data_dir, registry_port))],
            base,
            logs / "registry.log",
            Probe("127.0.0.1", registry_port, "/v2/"),
        ),
    ]
    cluster = {**base, "REDIS_URL": redis_url, "CORRAL_REGISTRY_URL": registry_url}
    threads = os.environ.get("CORRAL_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // max(1, workers)))
    for i in range(workers):
        p = free_port()
        env = {
            **cluster,
            "OLLAMA_HOST": f"127.0.0.1:{p}",
            "OLLAMA_MODELS": str(data_dir / "cache"),
            "CORRAL_WORKER_ID": f"worker-{i + 1}",
            "CORRAL_WORKER_URL": f"http://127.0.0.1:{p}",
            "OLLAMA_KEEP_ALIVE": "-1",
            "CORRAL_NUM_THREADS": threads,
        }
        children.append(
            Child(f"worker-{i + 1}", [*corral, "worker"], env, logs / f"worker-{i + 1}.log", Probe("127.0.0.1", p))
        )
    router_ports = []
    for i in range(routers):
        p = free_port()
        router_ports.append(p)
        metrics_dir = data_dir / "routers" / f"router-{i + 1}" / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        env = {
            **cluster,
            "OLLAMA_HOST": f"127.0.0.1:{p}",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "CORRAL_SPOOL_DIR": str(data_dir / "routers" / f"router-{i + 1}" / "spool"),
        }
        children.append(
            Child(f"router-{i + 1}", [*corral, "router"], env, logs / f"router-{i + 1}.log", Probe("127.0.0.1", p))
        )
    nginx_dir = data_dir / "nginx"
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (nginx_dir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        # Started as root, nginx's workers run as nobody: they must be able to spool bodies here.
        os.chmod(nginx_dir / "tmp" / sub, 0o1777)
    conf = nginx_conf(router_ports, f"{host}:{port}", logs / "nginx-error.log", max_body, proxy_conf=proxy_conf)
    (nginx_dir / "nginx.conf").write_text(conf)
    children.append(
        Child(
            "nginx",
            [nginx_bin, "-p", str(nginx_dir), "-c", "nginx.conf", "-g", "daemon off;"],
            base,
            logs / "nginx.log",
            Probe(host if host not in ("0.0.0.0", "::") else "127.0.0.1", port),
            stop_signal=signal.SIGQUIT,
        )
    )
    return children


def run(*, port: int, workers: int, routers: int, data_dir: Path, host: str = "127.0.0.1", redis_url: str = "") -> int:
    data_dir = data_dir.expanduser().resolve()
    if _port_taken(host, port):
        raise UpError(f"port {port} is in use (an Ollama server?): stop it or pass --port")
    if redis_url:
        try:
            check_redis_url(redis_url)
        except ValueError as exc:
            raise UpError(f"--redis-url: {exc}") from None
    children = plan(port=port, workers=workers, routers=routers, data_dir=data_dir, host=host, redis_url=redis_url)
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started: list[Child] = []
    try:
        for child in children:
            child.start()
            started.append(child)
            try:
                child.wait_ready(READY_TIMEOUT_S)
            except ChildError as exc:
                raise UpError(str(exc)) from None
            logger.info("%s is up", child.name)
            if stopping:
                return 130
        endpoint = f"http://{host}:{port}"
        print(
            f"Corral is running at {endpoint}  ({_count(workers, 'worker')}, {_count(routers, 'router')}; "
            f"logs in {data_dir / 'logs'})",
            flush=True,
        )
        print(
            f"  export OLLAMA_HOST={endpoint}    # then: ollama run, ollama.chat(...), OpenAI(base_url=...)", flush=True
        )
        print(json.dumps({"endpoint": endpoint, "data_dir": str(data_dir)}), flush=True)
        while not stopping:
            for child in started:
                if not child.alive():
                    logger.error("%s exited (code %s); see %s", child.name, child.exit_code, child.log)
                    started.remove(child)
                    break
            time.sleep(0.5)
        return 0
    finally:
        print("stopping Corral...", flush=True)
        for child in reversed(started):
            child.stop(STOP_TIMEOUT_S)


def _registry_config(data_dir: Path, port: int) -> Path:
    path = data_dir / "registry" / "config.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "version": "0.1",
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(data_dir / "registry" / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": os.urandom(16).hex()},
    }
    path.write_text(json.dumps(config, indent=2))  # YAML is a superset of JSON
    return path


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
