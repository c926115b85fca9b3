"""``corral router``: the router app under gunicorn with uvicorn workers.

Several processes share one port (``CORRAL_ROUTER_PROCESSES``); all state is in Redis, so
any process can serve any request. Prometheus counters are kept per process in
``PROMETHEUS_MULTIPROC_DIR`` (a fresh directory unless one is given) and summed on scrape.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from gunicorn.app.base import BaseApplication

from corral.router.settings import RouterSettings


class _RouterServer(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from corral.router.app import from_env

        return from_env()


def _child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def serve(settings: RouterSettings) -> None:
    own_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = tempfile.mkdtemp(prefix="corral-router-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
    listen = settings.listen
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    options = {
        "bind": f"{host}:{listen.port}",
        "workers": settings.CORRAL_ROUTER_PROCESSES,
        "worker_class": "uvicorn_worker.UvicornWorker",
        # Streams last minutes: gunicorn must not kill a worker for a long request.
        "timeout": 0,
        # On SIGTERM, streams in flight get this long to finish (then gunicorn stops its workers).
        "graceful_timeout": max(1, int(settings.drain_timeout_seconds)),
        "keepalive": 75,
        "child_exit": _child_exit,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "proc_name": "corral-router",
    }
    try:
        _RouterServer(options).run()
    finally:
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)
