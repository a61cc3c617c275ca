"""Prometheus metrics, one registry per app so that several apps (tests) never share counters: ours prefixed
simclr_, beside the standard process, platform and garbage-collector collectors."""

from __future__ import annotations

import time

from prometheus_client import (GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Counter,
                               Gauge, Histogram)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
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


class MetricsMiddleware:
    """ASGI middleware: count and time every HTTP request by its route template (not its raw path, so that
    ids and junk URLs cannot blow up the number of series)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
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
