"""The ``corral`` command."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from corral import keys

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


def run_pull(args: argparse.Namespace) -> None:
    from corral.preload import endpoint_from_env, run

    models = [m for arg in args.models for m in arg.replace(",", " ").split()]
    endpoint = args.host or endpoint_from_env(os.environ.get("OLLAMA_HOST", ""))
    raise SystemExit(run(models, endpoint=endpoint, wait_s=args.wait, insecure=args.insecure))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="corral", description="An Ollama-compatible LLM serving cluster.")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="serve the Ollama API on OLLAMA_HOST from OLLAMA_MODELS")
    worker.set_defaults(func=run_worker)
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
    pull = sub.add_parser("pull", help="pull models through a running endpoint (OLLAMA_HOST), e.g. to preload them")
    pull.add_argument("models", nargs="+", help="model names (a comma- or space-separated list also works)")
    pull.add_argument("--host", default="", help="endpoint URL (default from OLLAMA_HOST, else 127.0.0.1:11434)")
    pull.add_argument("--wait", type=float, default=0, help="seconds to wait for the endpoint to answer first")
    pull.add_argument("--insecure", action="store_true", help="allow insecure connections to the registry")
    pull.set_defaults(func=run_pull)
    keys.add_parser(sub)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":  # pragma: no cover
    main()
