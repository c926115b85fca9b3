"""Everything the worker's routes reach, created and owned by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from corral.store.cache import blob_usage
from corral.store.model_store import ModelStore
from corral.store.pull import Registries
from corral.worker.inference import Inference
from corral.worker.metrics import WorkerMetrics
from corral.worker.scheduler import Scheduler
from corral.worker.settings import WorkerSettings


@dataclass
class WorkerState:
    settings: WorkerSettings
    store: ModelStore  # the API's: the LocalStore, or in a cluster the RegistryStore
    scheduler: Scheduler
    inference: Inference
    metrics: WorkerMetrics
    registries: Registries

    def refresh_gauges(self) -> None:
        """Point-in-time gauges, read from the scheduler when Prometheus scrapes."""
        runners = self.scheduler.runners()
        m = self.metrics
        m.models_loaded.set(len(runners))
        m.queue_depth.set(self.scheduler.waiting())
        blobs, size = blob_usage(self.settings.OLLAMA_MODELS / "blobs")
        m.cache_blobs.set(blobs)
        m.cache_bytes.set(size)
        m.slots_busy.clear()
        m.slots_total.clear()
        for runner in runners:
            m.slots_busy.labels(runner.name).set(runner.in_flight)
            m.slots_total.labels(runner.name).set(runner.options.n_parallel)
