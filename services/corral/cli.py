"""The ``corral`` command."""

from __future__ import annotations

import argparse
import logging
import sys

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


def run_worker(_args: argparse.Namespace) -> None:
    import uvicorn

    from corral.logs import configure_logging
    from corral.worker.app import create_app
    from corral.worker.settings import WorkerSettings

    settings = _settings_or_exit(WorkerSettings)
    configure_logging(level=settings.log_level, fmt=settings.CORRAL_LOG_FORMAT)
    logger.info("worker configuration: %s", settings.redacted())
    listen = settings.listen
    logger.info("Listening on %s:%d", listen.host, listen.port)
    uvicorn.run(
        create_app(settings),
        host=listen.host,
        port=listen.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="corral", description="An Ollama-compatible LLM serving cluster.")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="serve the Ollama API on OLLAMA_HOST from OLLAMA_MODELS")
    worker.set_defaults(func=run_worker)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":  # pragma: no cover
    main()
