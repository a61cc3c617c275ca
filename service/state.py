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
import fcntl
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Callable, TypeVar

import faiss
import torch

from contract.bundle import BundleError, load_bundle
from contract.device import pick_device
from service.batching import Batcher
from service.build_index import BuildError, BuildOptions, build
from service.index import SearchIndexError
from service.indexes import Index, create_index, exists, location_of, open_index
from service.metrics import ServiceMetrics
from service.model import Model, Outputs, pick_runtime
from service.settings import Settings

log = logging.getLogger("service")
R = TypeVar("R")


class Progress:
    """The index build's progress, in /readyz's search_detail and in the log (a line every 10 s at most)."""

    def __init__(self, state: ServiceState, every_s: float = 10.0):
        self.state, self.every_s = state, every_s
        self.started = self.logged = time.monotonic()
        self.detail = state.search_detail

    def __call__(self, done: int, total: int) -> None:
        rate = done / max(time.monotonic() - self.started, 1e-9)
        self.state.search_detail = f"{self.detail}: {done} of {total} images embedded ({rate:.0f} images/s)"
        if time.monotonic() - self.logged >= self.every_s or done == total:
            self.logged = time.monotonic()
            log.info("search: %s", self.state.search_detail)


class ServiceState:
    def __init__(self, settings: Settings, metrics: ServiceMetrics):
        self.settings, self.metrics = settings, metrics
        self.model: Model | None = None
        self.index: Index | None = None
        self.batcher: Batcher[Outputs] | None = None
        self.error: str | None = None
        self.search = "loading"  # loading, building, ready or off
        self.search_detail: str | None = None
        self.batch_size = settings.max_batch_size or 64  # until the device is known (see _load)
        self._search: ThreadPoolExecutor | None = None
        self._inference: ThreadPoolExecutor | None = None
        metrics.watch(lambda: self.model, lambda: self.index)

    @property
    def ready(self) -> bool:
        """Embeddings and classes can be served (and search too when an --index was named: it must load)."""
        return self.batcher is not None and (self.settings.index is None or self.index is not None)

    async def load(self) -> None:
        """Load everything off the event loop; a failure is kept in .error for /readyz and logged. Without an
        --index, the index of the bundle is then loaded from --index-root, or built there in the background
        while embeddings and classes are already served."""
        self._inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._search = ThreadPoolExecutor(max_workers=1, thread_name_prefix="search",
                                          initializer=faiss.omp_set_num_threads,
                                          initargs=(self.settings.faiss_threads,))
        loop = asyncio.get_running_loop()
        try:
            model, index = await loop.run_in_executor(self._inference, self._load)
        except Exception as e:  # said in /readyz whatever it is, never left "loading" for good
            expected = isinstance(e, (BundleError, SearchIndexError))  # a bad bundle or index: its message says it
            self._inference.shutdown(wait=False)
            self.error = str(e) if expected else f"{type(e).__name__}: {e} (the log has the details)"
            self.search, self.search_detail = "off", "the model could not be loaded"
            log.error("error: %s", self.error, exc_info=not expected)
            return
        self.model, self.index = model, index
        batcher = Batcher(model.infer, self.batch_size, self.settings.max_wait_ms / 1000, self.metrics,
                          executor=self._inference, max_queue=self.settings.max_queue_images,
                          max_queue_wait_s=self.settings.max_queue_wait_ms / 1000)
        batcher.start()
        self.batcher = batcher  # set last: ready from here on
        log.info("ready: %s%s", model.bundle.name, f", index of {index.count} images" if index else "")
        if index is not None:
            self.search = "ready"
            self._check_runtime(index, model)
        else:
            await self._find_or_build_index(model)

    def _load(self) -> tuple[Model, Index | None]:
        torch.set_num_threads(self.settings.torch_threads)
        device = pick_device(self.settings.device, BundleError)
        # A GPU takes larger batches at little cost in latency; a CPU's time grows with every image.
        self.batch_size = self.settings.max_batch_size or (256 if device.type == "cuda" else 64)
        bundle = load_bundle(self.settings.bundle)
        model = Model(bundle, device=device)
        model.infer(torch.zeros(1, 3, model.size, model.size, dtype=torch.uint8))  # warm-up: first calls allocate
        runtime, why = pick_runtime(model, self.settings.runtime)
        log.info("inference: %s on %s (%s), batches of %d at most, %d threads", runtime, device, why, self.batch_size,
                 torch.get_num_threads())
        index = open_index(self.settings.index, bundle.fingerprint, mmap=self.settings.index_mmap) \
            if self.settings.index else None
        return model, index

    async def _find_or_build_index(self, model: Model) -> None:
        """The bundle's index in --index-root (one folder per bundle) or --index-uri (Milvus), built there from
        --data-dir when missing (or made empty, for images added through the API, when there is no --data-dir).
        The build runs in a thread of its own and sends its batches to the inference thread, between requests'.
        Of several processes (--workers), one builds while the others wait for it."""
        settings, fingerprint = self.settings, model.bundle.fingerprint
        where = settings.index_uri or str(settings.index_root / fingerprint[:16])
        location = location_of(where, fingerprint)
        try:
            async with self._one_builder(fingerprint[:16]):
                if not await self.run_search(exists, location):
                    if settings.data_dir is None:
                        await self.run_search(lambda: create_index(
                            location, dim=model.bundle.manifest.architecture.representation_dim, bundle=fingerprint,
                            bundle_name=model.bundle.name, runtime=model.runtime,
                            thumbnail_size=settings.thumbnail_size).close())
                        log.info("search: an empty index %s was made (no --data-dir): POST /index/images fills it",
                                 location)
                    else:
                        self.search = "building"
                        self.search_detail = f"building the index {location} from {settings.data_dir}"
                        log.info("search: %s (embeddings and classes are served meanwhile)", self.search_detail)
                        if not await self._build(model, where):
                            return
            self.index = await self.run_search(open_index, location, fingerprint)
        except SearchIndexError as e:
            self._search_off(str(e))
            return
        except Exception as e:  # not a bad index but a bug or the system (a full disk): its traceback logged
            log.exception("the index could not be opened")
            self._search_off(f"the index could not be opened ({type(e).__name__}: {e}); the log has the details")
            return
        self.search, self.search_detail = "ready", None
        log.info("search: ready, index %s of %d images", location, self.index.count)
        self._check_runtime(self.index, model)

    @asynccontextmanager
    async def _one_builder(self, name: str) -> AsyncIterator[None]:
        """An exclusive lock on --index-root/.NAME.lock: of the processes on this host, one at a time looks for
        the index and builds it."""
        self.settings.index_root.mkdir(parents=True, exist_ok=True)
        with open(self.settings.index_root / f".{name}.lock", "a") as file:
            await asyncio.get_running_loop().run_in_executor(None, fcntl.flock, file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(file, fcntl.LOCK_UN)

    async def _build(self, model: Model, where: str) -> bool:
        settings = self.settings

        def infer(batch: torch.Tensor) -> Outputs:
            return self._inference.submit(model.infer, batch).result()

        try:
            options = BuildOptions(download=settings.download, batch_size=self.batch_size,
                                   max_pixels=settings.max_image_pixels, thumbnail_size=settings.thumbnail_size)
            await asyncio.get_running_loop().run_in_executor(None, lambda: build(
                model.bundle.path, [str(settings.data_dir)], where, options, model=model, infer=infer,
                progress=Progress(self)))
        except (BuildError, OSError) as e:
            self._search_off(f"the index could not be built: {e}")
            return False
        except Exception as e:  # a bug, not bad data: logged with its traceback, and search says so
            log.exception("the index build failed")
            self._search_off(f"the index build failed ({type(e).__name__}: {e}); the log has the details")
            return False
        return True

    @staticmethod
    def _check_runtime(index: Index, model: Model) -> None:
        built = index.info.runtime
        if built.split("-")[1] != model.runtime.split("-")[1]:  # its own indexed copy then scores ~0.999, not 1
            log.warning("the index was embedded with %s but queries run on %s: give --runtime %s to match",
                        built, model.runtime, built)

    def _search_off(self, why: str) -> None:
        self.search, self.search_detail = "off", why
        log.warning("search is off: %s; /embed and /classify are served", why)

    async def run_search(self, fn: Callable[..., R], *args) -> R:
        """fn(*args) in the search thread."""
        return await asyncio.get_running_loop().run_in_executor(self._search, fn, *args)

    async def close(self) -> None:
        batcher, self.batcher = self.batcher, None  # not ready from here on: new requests get a 503
        if batcher:
            await batcher.stop()
        if self._search:
            if self.index is not None:  # its snapshot, so that the next start need not catch up
                await self.run_search(self.index.close)
            self._search.shutdown(wait=True)
        self.metrics.close()
