"""Generation requests batched across users.

Requests wait in a small queue; the worker takes the first one, waits up to
`window_s` for others to join (or until `max_batch`), and runs the batch in
one generation call on a single worker thread. Requests that arrive while a
batch runs form the next batch at once, so batches grow with concurrency and
so does throughput.

The queue is bounded twice: `max_queue` requests in all and `max_per_owner`
per user, counting only requests still waiting for an answer. A request whose
client left is cancelled by the API (its future is done) and is dropped before
generation; it stops counting at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("prlm.serve")


class QueueFull(Exception):
    """More requests wait than the queue allows (the API answers 429)."""


@dataclass
class _Job:
    payload: Any
    future: asyncio.Future
    owner: str | None = None
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchInfo:
    batch_size: int
    queue_ms: float
    batch_ms: float


class Batcher:
    """`await submit(payload)` -> (result, BatchInfo); `run_batch(payloads) -> results` runs on one thread."""

    def __init__(self, run_batch: Callable[[Sequence[Any]], list[Any]], max_batch: int = 8, window_s: float = 0.02,
                 max_queue: int = 256, on_batch: Callable[[int, float], None] | None = None,
                 max_per_owner: int | None = None, on_drop: Callable[[int], None] | None = None):
        self.run_batch, self.max_batch, self.window_s, self.max_queue = run_batch, max_batch, window_s, max_queue
        self.max_per_owner = max_per_owner
        self.on_batch, self.on_drop = on_batch, on_drop
        self._live = 0  # submitted and not yet answered or cancelled
        self._per_owner: dict[str, int] = {}
        self.dropped = 0
        self.batch_sizes: deque[int] = deque(maxlen=10_000)
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        # One thread: the model and its tokenizer are used by one batch at a time.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prlm-generate")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def waiting(self) -> int:
        """Requests waiting for an answer (queued or in the running batch); cancelled ones do not count."""
        return self._live

    def waiting_for(self, owner: str) -> int:
        return self._per_owner.get(owner, 0)

    async def start(self) -> None:
        if self.running:  # a queue belongs to one event loop: one app, one server
            raise RuntimeError("the batcher is already running")
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._worker(), name="prlm-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass  # the cancellation we asked for
        self._executor.shutdown(wait=True)

    async def submit(self, payload: Any, owner: str | None = None) -> tuple[Any, BatchInfo]:
        """Queue one request and wait for its result; cancelling the caller drops the request."""
        if not self.running:
            raise RuntimeError("the batcher is not running")
        if self._live >= self.max_queue:
            raise QueueFull(f"{self._live} generation requests are waiting; retry later")
        if owner is not None and self.max_per_owner is not None and self.waiting_for(owner) >= self.max_per_owner:
            raise QueueFull(f"this user already has {self.waiting_for(owner)} generation requests waiting "
                            f"(at most {self.max_per_owner}); wait for their answers")
        job = _Job(payload, asyncio.get_running_loop().create_future(), owner)
        self._count(job, +1)
        job.future.add_done_callback(lambda _: self._count(job, -1))
        self._queue.put_nowait(job)
        return await job.future

    def _count(self, job: _Job, step: int) -> None:
        self._live += step
        if job.owner is not None:
            left = self._per_owner.get(job.owner, 0) + step
            if left > 0:
                self._per_owner[job.owner] = left
            else:
                self._per_owner.pop(job.owner, None)

    async def _collect(self) -> list[_Job]:
        """The next batch of live jobs; jobs whose client left (future done) are dropped here, unrun."""
        batch = []
        while not batch:
            self._keep_if_live(await self._queue.get(), batch)
        deadline = time.perf_counter() + self.window_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                self._keep_if_live(self._queue.get_nowait(), batch)
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                self._keep_if_live(await asyncio.wait_for(self._queue.get(), remaining), batch)
            except TimeoutError:
                break
        return batch

    def _keep_if_live(self, job: _Job, batch: list[_Job]) -> None:
        if not job.future.done():
            batch.append(job)
            return
        self.dropped += 1
        if self.on_drop is not None:
            self.on_drop(1)

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            # A client may have left while the batch was collected: do not generate for it either.
            live = [job for job in batch if not job.future.done()]
            for job in batch:
                if job.future.done():
                    self._keep_if_live(job, [])
            batch = live
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, [j.payload for j in batch])
            except Exception as err:  # handed to every waiting request, which answers 500 and logs it
                log.exception("generation batch of %d failed", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            batch_ms = (time.perf_counter() - started) * 1000
            self.batch_sizes.append(len(batch))
            if self.on_batch is not None:
                self.on_batch(len(batch), batch_ms / 1000)
            for job, result in zip(batch, results):
                if not job.future.done():
                    info = BatchInfo(len(batch), (started - job.enqueued) * 1000, batch_ms)
                    job.future.set_result((result, info))
