"""The API's Prometheus metrics, on an injected registry (tests build a fresh one).

Named `tickcast_api_*`, so a dashboard summing the stream's `tickcast_forecasts_total` over
every job never counts an HTTP answer as a published forecast. With several server processes
(`serve.workers`), each answers /metrics with its own counts (Prometheus sums them per instance
only if each process is scraped; run one process per container to keep that simple).
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from stream import version
from stream.metrics import PREFIX

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class ServeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        api = f"{PREFIX}_api"
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.build_info = Gauge(
            f"{PREFIX}_build_info",
            "The running tickcast's version (value 1)",
            ("version",),
            registry=registry,
        )
        self.build_info.labels(version=version()).set(1)
        self.model_info = Gauge(
            f"{PREFIX}_model_info",
            "The served model's version (value 1)",
            ("version",),
            registry=registry,
        )
        self.requests = Counter(
            f"{api}_requests",
            "HTTP requests by route and status code",
            ("route", "code"),
            registry=registry,
        )
        self.request_seconds = Histogram(
            f"{api}_request_seconds",
            "Time from the request's arrival to its response, by route",
            ("route",),
            registry=registry,
            buckets=_LATENCY,
        )
        self.forecasts = Counter(
            f"{api}_forecasts",
            "Forecasts answered, by whether the cache held them",
            ("cached",),
            registry=registry,
        )
        self.cache_requests = Counter(
            f"{api}_cache_requests",
            "Result cache lookups by result (hit, miss)",
            ("result",),
            registry=registry,
        )
        self.inference_batch_size = Histogram(
            f"{api}_inference_batch_size",
            "Windows per model call (the distinct cache misses)",
            registry=registry,
            buckets=_SIZES,
        )
        self.inference_seconds = Histogram(
            f"{api}_inference_seconds",
            "Time of one model call",
            registry=registry,
            buckets=_LATENCY,
        )
        self.not_finite = Counter(
            f"{api}_not_finite",
            "Windows whose model output was not finite (no forecast)",
            registry=registry,
        )
        self.model_reloads = Counter(
            f"{PREFIX}_model_reloads",
            "Models swapped in without a restart (a new CURRENT, or SIGHUP)",
            registry=registry,
        )
        self.redis_errors = Counter(
            f"{api}_redis_errors",
            "Redis calls that failed or passed their deadline (a forecast is then answered by"
            " the model alone, a latest forecast is 503)",
            registry=registry,
        )

    def set_model(self, model_version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version=model_version).set(1)
