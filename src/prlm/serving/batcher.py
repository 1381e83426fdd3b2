"""Generation requests batched across users.

Requests wait in a small queue; the worker takes the first one, waits up to
`window_s` for others to join (or until `max_batch`), and runs the batch in
one generation call on a single worker thread. Requests that arrive while a
batch runs form the next batch at once, so batches grow with concurrency and
so does throughput.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

log = logging.getLogger("prlm.serve")


class QueueFull(Exception):
    """More requests wait than the queue allows (the API answers 429)."""


@dataclass
class _Job:
    payload: Any
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchInfo:
    batch_size: int
    queue_ms: float
    batch_ms: float


class Batcher:
    """`await submit(payload)` -> (result, BatchInfo); `run_batch(payloads) -> results` runs on one thread."""

    def __init__(self, run_batch: Callable[[Sequence[Any]], list[Any]], max_batch: int = 8, window_s: float = 0.02,
                 max_queue: int = 256, on_batch: Callable[[int, float], None] | None = None):
        self.run_batch, self.max_batch, self.window_s, self.max_queue = run_batch, max_batch, window_s, max_queue
        self.on_batch = on_batch
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
        return self._queue.qsize() if self._queue is not None else 0

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

    async def submit(self, payload: Any) -> tuple[Any, BatchInfo]:
        if not self.running:
            raise RuntimeError("the batcher is not running")
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"{self._queue.qsize()} generation requests are waiting; retry later")
        job = _Job(payload, asyncio.get_running_loop().create_future())
        await self._queue.put(job)
        return await job.future

    async def _collect(self) -> list[_Job]:
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.window_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            # A client that went away cancelled its future: do not generate for it.
            batch = [job for job in batch if not job.future.done()]
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
