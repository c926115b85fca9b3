"""The server commands: ``corral worker`` (and its Ollama name, ``serve``), ``router`` and ``up``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

logger = logging.getLogger("corral")


def _settings_or_exit(cls: type):
    try:
        return cls()
    except ValidationError as exc:
        # A bad value stops start-up and names the variable.
        for error in exc.errors():
            name = ".".join(str(p) for p in error["loc"])
            print(f"corral: invalid {name}: {error['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def _exit_cleanly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def run_worker(_args: argparse.Namespace) -> None:
    import uvicorn

    from corral.worker.malloc import limit_arenas

    limit_arenas()  # before the imports below start threads that allocate
    from corral.logs import configure_logging
    from corral.worker.app import create_app
    from corral.worker.registration import WorkerServer
    from corral.worker.settings import WorkerSettings

    settings = _settings_or_exit(WorkerSettings)
    configure_logging(level=settings.log_level, fmt=settings.CORRAL_LOG_FORMAT)
    logger.info("worker configuration: %s", settings.redacted())
    listen = settings.listen
    logger.info("Listening on %s:%d", listen.host, listen.port)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=listen.host,
        port=listen.port,
        log_config=None,
        access_log=False,
        # Routers keep connections to workers open between requests (router/upstream.py).
        timeout_keep_alive=75,
        timeout_graceful_shutdown=settings.drain_timeout_seconds,
    )
    server = WorkerServer(config, app.state.registration)
    # uvicorn handles SIGTERM itself while it serves, and once it has shut down gracefully it
    # raises the signal again for the handler that was there before: this one. Requests have
    # drained and the worker has left the cluster by then, so SIGTERM ends it with status 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        server.run()
    except KeyboardInterrupt:  # SIGINT, raised again the same way (as uvicorn.run does)
        pass
    if not server.started:
        raise SystemExit(3)  # uvicorn's status for a failed start-up


def run_router(_args: argparse.Namespace) -> None:
    from corral.logs import configure_logging
    from corral.router.serve import serve
    from corral.router.settings import RouterSettings

    settings = _settings_or_exit(RouterSettings)
    configure_logging(level=settings.log_level, fmt=settings.CORRAL_LOG_FORMAT)
    logger.info("router configuration: %s", settings.redacted())
    serve(settings)


def run_up(args: argparse.Namespace) -> None:
    from corral.logs import configure_logging
    from corral.settings import parse_ollama_host
    from corral.up import UpError, run

    configure_logging(level=logging.INFO, fmt="text")
    host = parse_ollama_host(os.environ.get("OLLAMA_HOST", "")).host
    try:
        code = run(
            port=args.port,
            workers=args.workers,
            routers=args.routers,
            data_dir=Path(args.data_dir),
            host=host,
            redis_url=args.redis_url,
        )
    except UpError as exc:
        print(f"corral up: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(code)


def add_parsers(sub: Any) -> None:
    for name, text in (
        ("worker", "serve the Ollama API on OLLAMA_HOST from OLLAMA_MODELS"),
        ("serve", "start a worker, as 'ollama serve' starts a server (the same as 'corral worker')"),
    ):
        sub.add_parser(name, help=text).set_defaults(func=run_worker)
    router = sub.add_parser("router", help="serve the cluster's API on OLLAMA_HOST (REDIS_URL, CORRAL_REGISTRY_URL)")
    router.set_defaults(func=run_router)
    up = sub.add_parser("up", help="run a whole local cluster (Redis, registry, workers, routers, nginx)")
    up.add_argument("--port", type=int, default=11434, help="the endpoint's port (default 11434)")
    up.add_argument("--workers", type=int, default=1, help="inference workers (default 1)")
    up.add_argument("--routers", type=int, default=1, help="routers behind nginx (default 1)")
    up.add_argument("--data-dir", default="~/.corral", help="models, state and logs (default ~/.corral)")
    up.add_argument(
        "--redis-url", default="", help="use this Redis (redis://, redis+sentinel://) instead of starting one"
    )
    up.set_defaults(func=run_up)
