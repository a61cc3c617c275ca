"""Dynamic batching: concurrent requests' images are coalesced into one inference call.

Requests wait in a queue; one worker takes up to max_batch_size images, first waiting at most max_wait for
more to arrive, and runs the model in its own thread so the event loop keeps accepting requests. While a
batch runs, the next one fills up, so under load batches grow by themselves. The wait is only for requests
already being read (announced with incoming()): a lone request does not wait for company that is not coming.

Overload is refused, not queued: past max_queue images waiting, or when the images waiting would take longer
than ADMIT_SHARE of max_queue_wait_s at the pace the queue drains, a submission fails at once with Overloaded;
one that has still waited max_queue_wait_s without being taken into a batch fails then. The pace is measured
from one batch's end to the next's while the queue never ran dry, so it counts what else shares the cores (the
event loop decoding uploads, other service processes), and the share left over is a margin for its noise: the
requests admitted are rarely the ones that time out. A request then waits for the model at most the deadline,
and a refused client learns at once when to retry.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Generic, Iterable, Iterator, Protocol, TypeVar

import torch
from torch import Tensor

from service.metrics import ServiceMetrics

ADMIT_SHARE = 0.75  # of max_queue_wait_s, the longest expected wait admitted; the rest is the estimate's margin


class Sliceable(Protocol):
    def __getitem__(self, rows: slice) -> "Sliceable": ...


T = TypeVar("T", bound=Sliceable)


class BatcherStopped(RuntimeError):
    """The batcher was stopped (the service is shutting down): the request will not be answered by it."""


class Overloaded(RuntimeError):
    """The queue is full, or the request waited past its deadline: retry after retry_after_s seconds."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Batcher(Generic[T]):
    """submit(images) -> fn(images) rows, with fn called on batches of many submissions in one thread."""

    def __init__(self, fn: Callable[[Tensor], T], max_batch_size: int, max_wait_s: float,
                 metrics: ServiceMetrics | None = None, executor: ThreadPoolExecutor | None = None,
                 max_queue: int | None = None, max_queue_wait_s: float | None = None):
        """fn runs in executor's one thread (default: a thread of the batcher's own); stop() shuts it down.
        max_queue (images) and max_queue_wait_s bound the queue (None: unbounded)."""
        self.fn, self.max_batch_size, self.max_wait_s, self.metrics = fn, max_batch_size, max_wait_s, metrics
        self.max_queue, self.max_queue_wait_s = max_queue, max_queue_wait_s
        self._pending: deque[tuple[Tensor, asyncio.Future, float]] = deque()
        self._seconds_per_image = 0.0  # a moving average of the queue's drain time, for admission and Retry-After
        self._last_done = float("-inf")  # when the last batch ended
        self._rows = 0
        self._incoming = 0
        self._wake = asyncio.Event()
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._worker: asyncio.Task | None = None
        self._stopped = False

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        """End the worker; whoever still waits gets BatcherStopped rather than waiting forever."""
        self._stopped = True
        if self._worker:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._fail(((x, f) for x, f, _ in self._pending), BatcherStopped("the service is shutting down"))
        self._pending.clear()
        self._add_rows(-self._rows)
        self._executor.shutdown(wait=True)

    @contextmanager
    def incoming(self) -> Iterator[None]:
        """Around reading and decoding a request that will then submit. Refused at once (Overloaded) when one
        more image would not fit, before the request is read and decoded rather than after; while one is read,
        a batch may wait for it."""
        self.check_capacity()
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1

    def check_capacity(self, rows: int = 1) -> None:
        """Raise Overloaded if rows more images would overfill the queue, or, behind images already waiting,
        would wait past ADMIT_SHARE of max_queue_wait_s at the pace the queue has drained: a request is refused at
        once, before it is read and decoded, rather than after waiting out its deadline."""
        if self.max_queue is not None and self._rows + rows > self.max_queue:
            self._shed("queue full")
            raise Overloaded(f"the service is overloaded: {self._rows} images are waiting (at most "
                             f"{self.max_queue})", self._retry_after())
        wait = (self._rows + rows) * self._seconds_per_image
        # Only behind others: a request alone is taken however slow the pace, or on a slow or busy machine every
        # request would be refused for good (the pace is measured on the batches that run).
        if self._rows and self.max_queue_wait_s is not None and wait > ADMIT_SHARE * self.max_queue_wait_s:
            self._shed("expected wait")
            raise Overloaded(f"the service is overloaded: the images waiting would take {wait:.1f} s, too close to "
                             f"the {self.max_queue_wait_s:g} s a request may wait", self._retry_after())

    def _shed(self, reason: str) -> None:
        if self.metrics:
            self.metrics.shed.labels(reason).inc()

    async def submit(self, images: Tensor) -> T:
        """fn's output for images (N, ...), computed in a batch with whatever else is waiting."""
        if self._stopped:
            raise BatcherStopped("the service is shutting down")
        self.check_capacity(len(images))
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((images, future, loop.time()))
        self._add_rows(len(images))
        self._wake.set()
        return await future

    def _retry_after(self) -> float:
        """Seconds until the queue now waiting has drained, at least one."""
        return max(1.0, self._rows * self._seconds_per_image)

    def _add_rows(self, n: int) -> None:
        self._rows += n
        if self.metrics:
            self.metrics.queue_depth.set(self._rows)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            deadline = loop.time() + self.max_wait_s
            while self._rows < self.max_batch_size and self._incoming and (left := deadline - loop.time()) > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except TimeoutError:
                    break
            batch = self._take()
            if not self._pending:
                self._wake.clear()
            # Drained since the last batch ended, or, if the queue ran dry meanwhile, since this batch's first
            # request came: the pace counts the gaps between batches as well as the batches.
            since = max(self._last_done, min((queued for _, _, queued in batch), default=0.0))
            batch = [(x, f) for x, f, _ in batch if not f.done()]  # drop requests whose client went away
            if not batch:
                continue
            started = loop.time()
            try:
                out = await loop.run_in_executor(self._executor, self._call, [x for x, _ in batch])
            except asyncio.CancelledError:  # stopped mid-batch: its requests fail as the queued ones do
                self._fail(batch, BatcherStopped("the service is shutting down"))
                raise
            except Exception as e:  # the requests fail, the worker lives on
                self._fail(batch, e)
                self._last_done = loop.time()
                continue
            self._last_done = loop.time()
            rows, seconds = sum(len(x) for x, _ in batch), self._last_done - started
            pace = (self._last_done - since) / rows
            self._seconds_per_image = 0.8 * self._seconds_per_image + 0.2 * pace if self._seconds_per_image \
                else pace
            if self.metrics:
                self.metrics.batch_size.observe(rows)
                self.metrics.inference.observe(seconds)
            start = 0
            for x, future in batch:
                if not future.done():
                    future.set_result(out[start:start + len(x)])
                start += len(x)

    def _call(self, inputs: list[Tensor]) -> T:
        # Concatenated here, in the executor's thread, not on the event loop: see service.state.
        return self.fn(inputs[0] if len(inputs) == 1 else torch.cat(inputs))

    @staticmethod
    def _fail(batch: Iterable[tuple[Tensor, asyncio.Future]], error: BaseException) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(error)

    def _take(self) -> list[tuple[Tensor, asyncio.Future, float]]:
        """Submissions from the front of the queue, up to max_batch_size images (at least one submission);
        those that waited past max_queue_wait_s fail with Overloaded instead."""
        batch, rows, now = [], 0, asyncio.get_running_loop().time()
        while self._pending and (not batch or rows + len(self._pending[0][0]) <= self.max_batch_size):
            x, future, queued = self._pending.popleft()
            self._add_rows(-len(x))
            if self.max_queue_wait_s is not None and now - queued > self.max_queue_wait_s:
                if not future.done():
                    future.set_exception(Overloaded(f"the service is overloaded: the request waited "
                                                    f"{now - queued:.1f} s for the model", self._retry_after()))
                    self._shed("deadline")
                continue
            batch.append((x, future, queued))
            rows += len(x)
        return batch

