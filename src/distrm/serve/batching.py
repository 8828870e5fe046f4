"""Dynamic batching: items from requests that arrive together share one model call.

Why: a backbone forward pass on CPU (or GPU) costs nearly the same for 1 text as for
dozens, so scoring each HTTP request on its own wastes most of the machine under
concurrent load (an RL trainer's rollout workers all ask at once). The batcher queues
*items* (not requests), so a large request is split across batches and small ones are
packed together.

Policy: the worker takes the oldest waiting item and then waits for more until either
``max_batch`` items are collected or ``max_wait_s`` has passed *since that oldest item was
queued*. Under load the queue is already full when the worker comes back, so no waiting
is added; an idle server adds at most ``max_wait_s`` of latency to a lone request.

The model runs in exactly one worker thread: the asyncio event loop never blocks on it,
and the model (not thread-safe in general) is never entered twice at once.

Time slices: a batch, once handed to the model, cannot be interrupted, so a client that
hangs up while its items are in a batch would keep the CPU busy until the batch ends --
seconds on a CPU at ``max_batch`` 64 with long texts. The worker therefore runs a taken
batch as consecutive model calls of at most ``slice_s`` seconds each, sized from the
measured seconds per item, and drops items whose request was abandoned between calls.
Where the model is fast (a GPU, short texts) a slice holds the whole batch and nothing
changes; where it is slow, batching loses little (a CPU forward costs roughly per token),
and an abandoned request stops costing model time within about one slice.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Sequence, TypeVar

I = TypeVar("I")
R = TypeVar("R")

log = logging.getLogger("distrm.serve")


class Overloaded(Exception):
    """The queue is full: the caller should answer 503 and let the client retry."""


class ItemFailed(Exception):
    """The model raised on this item even when scored alone (its batch-mates were fine)."""


@dataclass(eq=False)
class _Job:
    n: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    queued_at: float
    results: list[Any] = field(default_factory=list)
    remaining: int = 0
    cancelled: bool = False


class DynamicBatcher(Generic[I, R]):
    """Run ``fn(items) -> results`` (same length, same order) in one worker thread, batching
    items across concurrent :meth:`submit` calls.

    Args:
        fn: the batched function (e.g. feature extraction + heads). If it raises on a batch,
            the batch is re-run item by item so one poisonous item only fails itself
            (its result becomes an :class:`ItemFailed`).
        max_batch: most items per call of ``fn``; 1 turns batching off.
        max_wait_s: longest an item waits for batch-mates.
        max_queue_items: most items waiting; :meth:`submit` raises :class:`Overloaded` beyond.
        on_start: called once in the worker thread before the first batch (e.g. to load the
            model and set torch threads in the thread that will use them).
        slice_s: longest one call of ``fn`` should run, judged from the measured seconds per
            item; a batch is split into such calls and abandoned items are dropped between
            them (``None``: one call per batch).
    """

    def __init__(
        self,
        fn: Callable[[list[I]], Sequence[R]],
        max_batch: int = 64,
        max_wait_s: float = 0.005,
        max_queue_items: int = 4096,
        on_start: Callable[[], None] | None = None,
        slice_s: float | None = 0.25,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if slice_s is not None and not slice_s > 0:
            raise ValueError("slice_s must be > 0 or None")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue_items = max_queue_items
        self._on_start = on_start
        self.slice_s = slice_s
        self._s_per_item: float | None = None  # running estimate; None until the first call
        self._cv = threading.Condition()
        self._pending: deque[tuple[_Job, int, I]] = deque()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        # counters for /health and the benchmark (read without the lock: approximate is fine)
        self.batches = 0
        self.items_scored = 0
        self.largest_batch = 0
        self.item_failures = 0
        self.items_dropped = 0  # queued items removed because their request was abandoned
        self.calls = 0  # calls of fn (a batch takes several when sliced)

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float | None = None) -> None:
        """Start the worker and wait until ``on_start`` finished (re-raises its error)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="distrm-batcher", daemon=True)
        self._thread.start()
        self._ready.wait(timeout)
        if self._start_error is not None:
            raise self._start_error

    def stop(self, timeout: float | None = 10.0) -> None:
        """Finish the queued items, then end the worker."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def queue_items(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------ client side
    async def submit(self, items: Sequence[I]) -> list[R | ItemFailed]:
        """Queue ``items`` and wait for their results (in order).

        Cancelling the awaiting task (e.g. ``asyncio.wait_for`` timing out) marks the
        items dropped: the worker skips them instead of spending model time on a
        request nobody waits for."""
        loop = asyncio.get_running_loop()
        if not items:
            return []
        job = _Job(n=len(items), loop=loop, future=loop.create_future(), queued_at=time.monotonic())
        job.results = [None] * len(items)
        job.remaining = len(items)
        with self._cv:
            if self._closed or self._thread is None:
                raise RuntimeError("the batcher is not running")
            if len(self._pending) + len(items) > self.max_queue_items:
                raise Overloaded(f"{len(self._pending)} items already queued (limit {self.max_queue_items})")
            for i, it in enumerate(items):
                self._pending.append((job, i, it))
            self._cv.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            self.drop(job)
            raise

    def drop(self, job: _Job) -> int:
        """Remove ``job``'s still-queued items (its client is gone or timed out); items already
        in a running batch finish. Returns how many were removed."""
        job.cancelled = True
        with self._cv:
            before = len(self._pending)
            if before:
                self._pending = deque(e for e in self._pending if e[0] is not job)
            n = before - len(self._pending)
        self.items_dropped += n
        return n

    # ------------------------------------------------------------------ worker side
    def _take(self, batch: list[tuple[_Job, int, I]]) -> None:
        """Move live items from the queue into ``batch`` (lock held)."""
        while self._pending and len(batch) < self.max_batch:
            entry = self._pending.popleft()
            if not entry[0].cancelled:
                batch.append(entry)

    def _run(self) -> None:
        try:
            if self._on_start is not None:
                self._on_start()
        except BaseException as e:  # surfaced by start()
            self._start_error = e
            self._ready.set()
            return
        self._ready.set()
        while True:
            batch: list[tuple[_Job, int, I]] = []
            with self._cv:
                while not batch:
                    while not self._pending and not self._closed:
                        self._cv.wait()
                    if not self._pending and self._closed:
                        return
                    self._take(batch)
                # wait for batch-mates, counted from when the oldest item was queued
                deadline = batch[0][0].queued_at + self.max_wait_s
                while len(batch) < self.max_batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    if not self._pending:
                        self._cv.wait(left)
                    self._take(batch)
            self._process(batch)

    def _slice_size(self, n: int) -> int:
        if self.slice_s is None:
            return n
        if self._s_per_item is None:  # nothing measured yet: a single item measures it
            return 1
        return max(1, min(n, int(self.slice_s / max(self._s_per_item, 1e-9))))

    def _process(self, batch: list[tuple[_Job, int, I]]) -> None:
        """Score ``batch`` in time slices (see the module docstring), dropping the items of
        abandoned requests between slices."""
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        rest = batch
        while rest:
            live = [e for e in rest if not e[0].cancelled]
            self.items_dropped += len(rest) - len(live)
            if not live:
                return
            k = self._slice_size(len(live))
            self._call(live[:k])
            rest = live[k:]

    def _call(self, chunk: list[tuple[_Job, int, I]]) -> None:
        items = [it for _, _, it in chunk]
        t0 = time.perf_counter()
        try:
            results: list[Any] = list(self.fn(items))
            if len(results) != len(items):
                raise RuntimeError(f"batched function returned {len(results)} results for {len(items)} items")
            per_item = (time.perf_counter() - t0) / len(items)
            # a fast-moving estimate: text lengths change from request to request
            self._s_per_item = per_item if self._s_per_item is None else 0.5 * (self._s_per_item + per_item)
        except Exception as e:  # isolate the culprit: re-run one by one
            log.warning("batch of %d failed (%s: %s); scoring its items one by one", len(items), type(e).__name__, e)
            results = []
            for (job, _, it) in chunk:
                if job.cancelled:  # nobody waits for it: do not spend the model on it again
                    results.append(ItemFailed("dropped: the request was abandoned"))
                    continue
                try:
                    results.append(list(self.fn([it]))[0])
                except Exception as e1:
                    self.item_failures += 1
                    results.append(ItemFailed(f"{type(e1).__name__}: {e1}"))
        self.calls += 1
        self.items_scored += len(items)
        for (job, i, _), res in zip(chunk, results):
            job.results[i] = res
            job.remaining -= 1
            if job.remaining == 0:
                try:
                    job.loop.call_soon_threadsafe(_resolve, job.future, job.results)
                except RuntimeError:  # that request's event loop is gone; nobody to answer
                    pass


def _resolve(fut: asyncio.Future, results: list[Any]) -> None:
    if not fut.done():  # the waiter may have timed out meanwhile
        fut.set_result(results)
