"""What the service has loaded (bundle, model, index, batcher), loaded in the background after start-up so
that /healthz answers at once and /readyz says when the rest can be used.

Threads: every torch kernel runs in one inference thread (loading, warm-up, batches), and every FAISS search
in one search thread. Each thread that enters an OpenMP parallel region gets a team of worker threads of its
own; once a process has more of them than cores, libgomp's workers stop spinning between regions and sleep,
and every layer then pays a wake-up: measured here, ResNet-18 at batch 1 went from 13 to 19.5 ms as soon as a
second thread had run a parallel torch kernel. FAISS's thread count is per thread too (omp_set_num_threads),
so it is set in the thread that searches.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import faiss
import torch

from contract.bundle import BundleError, load_bundle
from service.batching import Batcher
from service.index import SearchIndex, SearchIndexError
from service.metrics import Metrics
from service.model import Model, Outputs
from service.settings import Settings

log = logging.getLogger("service")
R = TypeVar("R")


class ServiceState:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings, self.metrics = settings, metrics
        self.model: Model | None = None
        self.index: SearchIndex | None = None
        self.batcher: Batcher[Outputs] | None = None
        self.error: str | None = None
        self._search: ThreadPoolExecutor | None = None

    @property
    def ready(self) -> bool:
        return self.batcher is not None and (self.settings.index is None or self.index is not None)

    async def load(self) -> None:
        """Load everything off the event loop; a failure is kept in .error for /readyz and logged."""
        inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._search = ThreadPoolExecutor(max_workers=1, thread_name_prefix="search",
                                          initializer=faiss.omp_set_num_threads,
                                          initargs=(self.settings.faiss_threads,))
        try:
            model, index = await asyncio.get_running_loop().run_in_executor(inference, self._load)
        except (BundleError, SearchIndexError) as e:
            inference.shutdown(wait=False)
            self.error = str(e)
            log.error("error: %s", e)
            return
        self.model, self.index = model, index
        batcher = Batcher(model.infer, self.settings.max_batch_size, self.settings.max_wait_ms / 1000, self.metrics,
                          executor=inference)
        batcher.start()
        self.batcher = batcher  # set last: ready from here on
        log.info("ready: %s%s", model.bundle.name, f", index of {index.count} images" if index else ", no index")

    def _load(self) -> tuple[Model, SearchIndex | None]:
        torch.set_num_threads(self.settings.torch_threads)
        bundle = load_bundle(self.settings.bundle)
        model = Model(bundle)
        model.infer(torch.zeros(1, 3, model.size, model.size, dtype=torch.uint8))  # warm-up: first calls allocate
        index = SearchIndex(self.settings.index, bundle.fingerprint) if self.settings.index else None
        return model, index

    async def run_search(self, fn: Callable[..., R], *args) -> R:
        """fn(*args) in the search thread."""
        return await asyncio.get_running_loop().run_in_executor(self._search, fn, *args)

    async def close(self) -> None:
        batcher, self.batcher = self.batcher, None  # not ready from here on: new requests get a 503
        if batcher:
            await batcher.stop()
        if self._search:
            self._search.shutdown(wait=True)
