"""The worker's Prometheus metrics, on a registry owned by the app (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

# Latency buckets sized for LLM serving: first tokens in ms, whole requests in minutes.
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_REQUEST_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# A decode step: ~1 ms on a GPU, tens of ms on a CPU, seconds for a long prompt's chunk.
_STEP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "corral_worker_requests_total", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "corral_worker_request_seconds", "HTTP request duration", ["route"], buckets=_REQUEST_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "corral_worker_time_to_first_token_seconds",
            "From request arrival to the first generated token",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.tokens_in = Counter("corral_worker_prompt_tokens_total", "Prompt tokens processed", ["model"], registry=r)
        self.tokens_out = Counter("corral_worker_generated_tokens_total", "Tokens generated", ["model"], registry=r)
        # With API keys on (CORRAL_AUTH=keys on the routers): each key's tokens, by its name.
        self.key_tokens = Counter(
            "corral_worker_key_tokens_total",
            "Tokens of requests made with an API key, by key name, model and kind (prompt, generated)",
            ["key", "model", "kind"],
            registry=r,
        )
        self.slots_busy = Gauge("corral_worker_slots_busy", "Requests running per model", ["model"], registry=r)
        self.slots_total = Gauge("corral_worker_slots", "Parallel slots per loaded model", ["model"], registry=r)
        self.queue_depth = Gauge("corral_worker_queue_depth", "Requests waiting for a slot or a load", registry=r)
        self.models_loaded = Gauge("corral_worker_models_loaded", "Models loaded", registry=r)
        # What separates the engine from llama.cpp's own speed: per step, the time inside
        # llama_decode and the time around it (sampling, handing tokens over, the next batch).
        self.step_seconds = Histogram(
            "corral_worker_engine_step_seconds",
            "Per decode step: time inside llama_decode (phase=decode) and between two decodes (phase=host)",
            ["model", "phase"],
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.load_seconds = Histogram(
            "corral_worker_model_load_seconds", "Time to load a model", buckets=_LOAD_BUCKETS, registry=r
        )
        self.rejections = Counter(
            "corral_worker_rejected_total", "Requests refused because the queue was full", registry=r
        )
        self.memory_bytes = Gauge(
            "corral_worker_memory_bytes", "Memory offered for models (CORRAL_WORKER_MEMORY or detected)", registry=r
        )
        self.cache_bytes = Gauge("corral_worker_cache_bytes", "Bytes of finished blobs under OLLAMA_MODELS", registry=r)
        self.cache_blobs = Gauge("corral_worker_cache_blobs", "Finished blobs under OLLAMA_MODELS", registry=r)
        # process_resident_memory_bytes, CPU seconds and open files of this worker process.
        ProcessCollector(registry=r)
