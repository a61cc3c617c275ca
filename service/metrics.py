"""Prometheus metrics, one registry per app so that several apps (tests) never share counters: ours prefixed
simclr_, beside the standard process, platform and garbage-collector collectors."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Callable

from prometheus_client import (GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Counter,
                               Gauge, Histogram, Info)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.index import SearchIndexError

if TYPE_CHECKING:
    from service.indexes import Index
    from service.model import Model

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):  # stateless: shared safely
            self.registry.register(collector)
        self.requests = Counter("simclr_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("simclr_http_request_duration_seconds", "HTTP request latency by route", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("simclr_inference_batch_size", "images per inference batch",
                                    buckets=_BATCH_BUCKETS, registry=self.registry)
        self.inference = Histogram("simclr_inference_seconds", "model time per inference batch",
                                   buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("simclr_inference_queue_depth", "images waiting for an inference batch",
                                 registry=self.registry)
        self.shed = Counter("simclr_requests_shed", "requests refused with 503 because the service was overloaded",
                            ["reason"], registry=self.registry)
        self.search = Histogram("simclr_search_seconds", "FAISS time per search call", buckets=_LATENCY_BUCKETS,
                                registry=self.registry)
        self.index_changes = Histogram("simclr_index_change_seconds", "time per durable index change (SQLite "
                                       "commit and FAISS update)", buckets=_LATENCY_BUCKETS, registry=self.registry)
        # An info metric (constant 1, facts in its labels): dashboards join on it to tell which model answered.
        self.model_info = Info("simclr_model", "the model served (bundle name and fingerprint, backbone, runtime, "
                               "device) and its index's FAISS type (none until one is loaded)", registry=self.registry)
        self.index_images = Gauge("simclr_index_images", "images in the similar-image index (0 until one is loaded)",
                                  registry=self.registry)
        self.index_dimension = Gauge("simclr_index_dimension", "numbers per indexed vector (0 until an index is "
                                     "loaded)", registry=self.registry)

    def describe(self, model: Model, index: Index | None) -> None:
        """Set simclr_model_info: when the model loads, and again when its index does (it may be built later)."""
        self.model_info.info({"model": model.bundle.name, "bundle_fingerprint": model.bundle.fingerprint,
                              "backbone": model.bundle.manifest.architecture.backbone, "runtime": model.runtime,
                              "device": str(model.device), "index_type": index.factory if index else "none"})

    def watch_index(self, index: Callable[[], Index | None]) -> None:
        """The index gauges read the served index (index() returns it) at each scrape rather than being set at
        each change: they cannot miss one, however it came (the API, a reload, another process's additions)."""
        self.index_images.set_function(lambda: _read(index, "count"))
        self.index_dimension.set_function(lambda: _read(index, "dim"))


def _read(index: Callable[[], Index | None], what: str) -> float:
    """A number of the served index: 0 without one, NaN when its backend does not answer (a Milvus server down:
    the scrape still succeeds, and says so)."""
    if (served := index()) is None:
        return 0
    try:
        return getattr(served, what)
    except SearchIndexError:
        return math.nan


class MetricsMiddleware:
    """ASGI middleware: count and time every HTTP request by its route template (not its raw path, so that
    ids and junk URLs cannot blow up the number of series)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500
        started = time.perf_counter()

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
