"""Prometheus metrics, one registry per app so that several apps (tests) never share counters: ours prefixed
simclr_, beside the standard process, platform and garbage-collector collectors.

With several worker processes (python -m service --workers N), prometheus_client's multiprocess mode: each
worker's counters, histograms and queue depth live in files of one folder, and /metrics, whichever worker
answers it, sums every worker's, those of a worker that was killed and replaced included (counters never go back).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from prometheus_client import (GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Counter,
                               Gauge, Histogram, generate_latest)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.index import SearchIndexError

if TYPE_CHECKING:
    from service.indexes import Index
    from service.model import Model

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


# prometheus_client's own variable, read when it is imported: set before worker processes start.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db")


class ServiceMetrics:
    def __init__(self) -> None:
        self.shared = os.environ.get(MULTIPROCESS_DIR)  # the multiprocess folder, or None in one process
        self.registry = CollectorRegistry()
        if self.shared is None:  # a worker's own memory and CPU would describe a random one of several
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):  # stateless: shared safely
                self.registry.register(collector)
        else:
            _forget_dead_workers(self.shared)
        self.requests = Counter("simclr_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("simclr_http_request_duration_seconds", "HTTP request latency by route", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("simclr_inference_batch_size", "images per inference batch",
                                    buckets=_BATCH_BUCKETS, registry=self.registry)
        self.inference = Histogram("simclr_inference_seconds", "model time per inference batch",
                                   buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("simclr_inference_queue_depth", "images waiting for an inference batch",
                                 multiprocess_mode="livesum", registry=self.registry)
        self.shed = Counter("simclr_requests_shed", "requests refused with 503 because the service was overloaded",
                            ["reason"], registry=self.registry)
        self.search = Histogram("simclr_search_seconds", "FAISS time per search call", buckets=_LATENCY_BUCKETS,
                                registry=self.registry)
        self.index_changes = Histogram("simclr_index_change_seconds", "time per durable index change (SQLite "
                                       "commit and FAISS update)", buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.served = _Served()
        self.registry.register(self.served)
        # What /metrics shows: this registry, or every worker's files summed beside this worker's model and index.
        self.exposed = self.registry
        if self.shared is not None:
            self.exposed = CollectorRegistry()
            MultiProcessCollector(self.exposed, path=self.shared)
            self.exposed.register(self.served)

    def watch(self, model: Callable[[], Model | None], index: Callable[[], Index | None]) -> None:
        """Describe the served model and index as they are at each scrape (model() and index() return them)."""
        self.served.model, self.served.index = model, index

    def exposition(self) -> bytes:
        """/metrics' text (with workers, the model and index are the answering worker's: the same in every one)."""
        return generate_latest(self.exposed)

    def close(self) -> None:
        """A worker ending: its queue depth leaves the sum (its counters stay in it)."""
        if self.shared is not None:
            mark_process_dead(os.getpid(), self.shared)


class _Served(Collector):
    """simclr_model_info, an info metric (constant 1, facts in its labels: dashboards join on it to tell which
    model answered), and the index's size and vector length. Read at each scrape rather than set at each change:
    they cannot miss one, however it came (the API, a reload, another process's additions)."""

    def __init__(self) -> None:
        self.model: Callable[[], Model | None] = lambda: None
        self.index: Callable[[], Index | None] = lambda: None

    def collect(self) -> Iterator[GaugeMetricFamily | InfoMetricFamily]:
        model, index = self.model(), self.index()
        if model is not None:
            yield InfoMetricFamily("simclr_model", "the model served (bundle name and fingerprint, backbone, "
                                   "runtime, device) and its index's FAISS type (none until one is loaded)",
                                   value={"model": model.bundle.name, "bundle_fingerprint": model.bundle.fingerprint,
                                          "backbone": model.bundle.manifest.architecture.backbone,
                                          "runtime": model.runtime, "device": str(model.device),
                                          "index_type": index.factory if index else "none"})
        yield GaugeMetricFamily("simclr_index_images", "images in the similar-image index (0 until one is loaded)",
                                value=_read(index, "count"))
        yield GaugeMetricFamily("simclr_index_dimension", "numbers per indexed vector (0 until an index is loaded)",
                                value=_read(index, "dim"))


@contextmanager
def shared_between_workers() -> Iterator[Path]:
    """For the lifetime of several worker processes: the multiprocess folder, PROMETHEUS_MULTIPROC_DIR where it is
    set (emptied of an earlier run's files, as prometheus_client asks), else a temporary one removed at the end."""
    if named := os.environ.get(MULTIPROCESS_DIR):
        folder = Path(named)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.db"):
            old.unlink()
        yield folder
        return
    folder = Path(tempfile.mkdtemp(prefix="simclr-metrics-"))
    os.environ[MULTIPROCESS_DIR] = str(folder)
    try:
        yield folder
    finally:
        del os.environ[MULTIPROCESS_DIR]
        shutil.rmtree(folder, ignore_errors=True)


def _forget_dead_workers(folder: str) -> None:
    """Take the live gauges of workers that died without ending (SIGKILL, out of memory) out of the sum: a worker
    starting is often the one replacing them."""
    for path in Path(folder).glob("gauge_live*.db"):
        if (match := _LIVE_GAUGE_FILE.fullmatch(path.name)) and not _alive(pid := int(match[1])):
            mark_process_dead(pid, folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        pass
    return True


def _read(served: Index | None, what: str) -> float:
    """A number of the served index: 0 without one, NaN when its backend does not answer (a Milvus server down:
    the scrape still succeeds, and says so)."""
    if served is None:
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
