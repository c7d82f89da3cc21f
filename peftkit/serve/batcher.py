"""Dynamic batching: requests from the event loop, forward passes on one worker thread.

The event loop never runs a model: a request becomes a Job on a thread-safe queue and awaits its future. The worker
takes whatever is queued (up to max_batch_size texts), waits at most max_wait_ms for more when the batch is not
full, then runs the batch: jobs that can share a forward pass (same base model for classification heads, any mix
of adapters) are scored together, length-sorted and padded per pass. While a batch runs, new requests queue up
and form the next one, so under load batches fill without any waiting, and a lone request waits at most
max_wait_ms.

The queue is bounded (in texts): a request that would overflow it is refused at once (HTTP 503 + Retry-After)
instead of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Overloaded(Exception):
    """The queue is full; the client should retry later."""


class ShuttingDown(Exception):
    """The server is stopping and takes no new work."""


@dataclass
class Job:
    key: tuple
    """Jobs with the same key may share forward passes ("generate" jobs never do)."""
    payload: Any
    size: int
    """Texts in the job: what the queue bound and max_batch_size count."""
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future | None = None
    cancelled: bool = False
    queued_at: float = field(default_factory=time.monotonic)


_STOP = object()


class Batcher:
    """`run_batch(key, jobs) -> results` is called on the worker thread with jobs of one key, in arrival order."""

    def __init__(self, run_batch: Callable[[tuple, list[Job]], list[Any]], max_batch_size: int, max_wait_ms: float,
                 max_queue: int, on_depth: Callable[[int], None] = lambda n: None):
        self.run_batch = run_batch
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_depth = on_depth
        self._queue: queue.Queue = queue.Queue()
        self._waiting = 0  # texts queued and not yet taken by the worker
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="peftkit-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new jobs, finish the queued ones, end the worker."""
        with self._lock:
            self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def put(self, job: Job) -> None:
        """Queue a job (from the event loop); raises Overloaded or ShuttingDown at once, before any answer starts."""
        job.loop = asyncio.get_running_loop()
        job.future = job.loop.create_future()
        with self._lock:
            if self._closed:
                raise ShuttingDown()
            if self._waiting + job.size > self.max_queue:
                raise Overloaded()
            self._waiting += job.size
            self.on_depth(self._waiting)
        self._queue.put(job)

    async def result(self, job: Job, timeout: float) -> Any:
        """The job's result; raises TimeoutError or the job's own error."""
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            job.cancelled = True  # the worker skips it if it has not started, and generation checks it
            raise

    async def submit(self, job: Job, timeout: float) -> Any:
        self.put(job)
        return await self.result(job, timeout)

    # -- worker thread ------------------------------------------------------------------------------

    def _work(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stopping = self._gather(first)
            self._taken(batch)
            self._run(batch)

    def _gather(self, first: Job) -> tuple[list[Job], bool]:
        """`first` plus what is queued now, then what arrives within max_wait, up to max_batch_size texts.
        A generation job runs alone and at once: it cannot share a pass and must not wait."""
        batch, size = [first], first.size
        if first.key[0] == "generate":
            return batch, False
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch_size:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    job = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if job is _STOP:
                return batch, True
            if job.key[0] == "generate":
                self._queue.put(job)  # runs after this batch (order among generation jobs is kept: one at a time)
                break
            batch.append(job)
            size += job.size
        return batch, False

    def _taken(self, batch: list[Job]) -> None:
        with self._lock:
            self._waiting -= sum(j.size for j in batch)
            self.on_depth(self._waiting)

    def _run(self, batch: list[Job]) -> None:
        live = [j for j in batch if not j.cancelled]
        by_key: dict[tuple, list[Job]] = {}
        for job in live:
            by_key.setdefault(job.key, []).append(job)
        for key, jobs in by_key.items():
            try:
                results = self.run_batch(key, jobs)
            except BaseException as e:  # noqa: BLE001 - the error goes to the requests, the worker lives on
                for job in jobs:
                    _resolve(job, error=e)
                continue
            for job, result in zip(jobs, results):
                _resolve(job, result=result)


def _resolve(job: Job, result: Any = None, error: BaseException | None = None) -> None:
    def settle() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the event loop is gone (process ending): nobody is waiting
        pass
