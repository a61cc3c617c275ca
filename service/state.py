"""What the service has loaded (bundle, model, index, batcher), loaded in the background after start-up so
that /healthz answers at once and /readyz says when the rest can be used."""

from __future__ import annotations

import asyncio
import logging

import faiss
import torch

from service.batching import Batcher
from service.bundle import BundleError, load_bundle
from service.index import SearchIndex, SearchIndexError
from service.metrics import Metrics
from service.model import Model, Outputs
from service.settings import Settings

log = logging.getLogger("service")


class ServiceState:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings, self.metrics = settings, metrics
        self.model: Model | None = None
        self.index: SearchIndex | None = None
        self.batcher: Batcher[Outputs] | None = None
        self.error: str | None = None

    @property
    def ready(self) -> bool:
        return self.batcher is not None and (self.settings.index is None or self.index is not None)

    async def load(self) -> None:
        """Load everything off the event loop; a failure is kept in .error for /readyz and logged."""
        try:
            model, index = await asyncio.to_thread(self._load)
        except (BundleError, SearchIndexError) as e:
            self.error = str(e)
            log.error("error: %s", e)
            return
        self.model, self.index = model, index
        batcher = Batcher(model.infer, self.settings.max_batch_size, self.settings.max_wait_ms / 1000, self.metrics)
        batcher.start()
        self.batcher = batcher  # set last: ready from here on
        log.info("ready: %s%s", model.bundle.name, f", index of {index.count} images" if index else ", no index")

    def _load(self) -> tuple[Model, SearchIndex | None]:
        torch.set_num_threads(self.settings.torch_threads)
        faiss.omp_set_num_threads(self.settings.faiss_threads)
        bundle = load_bundle(self.settings.bundle)
        model = Model(bundle)
        model.infer(torch.zeros(1, 3, model.size, model.size, dtype=torch.uint8))  # warm-up: first calls allocate
        index = SearchIndex(self.settings.index, bundle.fingerprint) if self.settings.index else None
        return model, index

    async def close(self) -> None:
        batcher, self.batcher = self.batcher, None  # not ready from here on: new requests get a 503
        if batcher:
            await batcher.stop()
