"""Micro-batching: images from concurrent requests share one forward pass.

Requests put their (already decoded) images on a queue; one worker takes what is waiting, up to
`max_batch` images, runs the engine once on a single inference thread and hands each request its
rows back. Under load many small requests cost one pass; alone, a request waits at most
`wait_s` for company. The single thread also keeps the engine (not thread-safe in general) and
Grad-CAM from running at the same time. Jobs set aside for the other TTA flag are batched
together on the next pass, and a pass whose requests have all timed out stops between chunks
instead of finishing work nobody waits for.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from bloodmnist.inference.engines import Engine

T = TypeVar("T")


@dataclass
class _Job:
    images: np.ndarray
    tta: bool
    future: asyncio.Future


class Batcher:
    """Queue + one worker task; start() inside the event loop, stop() on shutdown."""

    def __init__(self, engine: Engine, max_batch: int = 64, wait_s: float = 0.002):
        self.engine = engine
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bloodmnist-infer")
        self.queue: asyncio.Queue[_Job] | None = None
        self.task: asyncio.Task | None = None
        self.passes = 0  # forward passes run (the tests read it through /healthz)

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the inference thread (Grad-CAM uses it)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def probs(self, images: np.ndarray, tta: bool = False) -> np.ndarray:
        """Probabilities for (N, s, s, 3) uint8 images, computed in a shared batch."""
        assert self.queue is not None, "Batcher.start() was not called"
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(images, tta, future))
        return await future

    async def _collect(self, first: _Job, pending: list[_Job]) -> list[_Job]:
        """Jobs to run with `first` (same tta flag, up to max_batch images): the set-aside
        `pending` ones first (they are older), then the queue's; the rest go to `pending`."""
        assert self.queue is not None
        jobs, count = [first], len(first.images)
        if self.wait_s > 0 and self.queue.empty() and not pending:
            await asyncio.sleep(self.wait_s)  # give concurrent requests a moment to arrive
        waiting = list(pending)
        pending.clear()
        while not self.queue.empty():
            waiting.append(self.queue.get_nowait())
        for job in waiting:
            if job.future.done():  # timed out while waiting: takes no room in the pass
                continue
            if job.tta == first.tta and count + len(job.images) <= self.max_batch:
                jobs.append(job)
                count += len(job.images)
            else:
                pending.append(job)
        return jobs

    async def _worker(self) -> None:
        assert self.queue is not None
        pending: list[_Job] = []
        while True:
            first = pending.pop(0) if pending else await self.queue.get()
            jobs = await self._collect(first, pending)
            jobs = [j for j in jobs if not j.future.done()]  # timed-out requests are dropped
            if not jobs:
                continue
            abandoned = _when_all_done([j.future for j in jobs])
            try:
                args = ([j.images for j in jobs], first.tta, abandoned)
                probs = await self.run(self._forward, *args)
            except Exception as exc:  # noqa: BLE001 - handed to the waiting requests
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            if probs is None:  # every request of the pass timed out: nothing to hand back
                continue
            start = 0
            for job in jobs:
                end = start + len(job.images)
                if not job.future.done():
                    job.future.set_result(probs[start:end])
                start = end

    def _forward(
        self, parts: list[np.ndarray], tta: bool, abandoned: threading.Event
    ) -> np.ndarray | None:
        """One pass per max_batch images (a single large request is split); None when every
        request stopped waiting (timed out) before the last chunk."""
        images = np.concatenate(parts)
        out = []
        for i in range(0, len(images), self.max_batch):
            if abandoned.is_set():
                return None
            out.append(self.engine.probs(images[i : i + self.max_batch], tta=tta))
            self.passes += 1
        return np.concatenate(out)


def _when_all_done(futures: list[asyncio.Future]) -> threading.Event:
    """An event the inference thread can read, set once every future is done (answered,
    failed or cancelled by the request's timeout); callbacks run on the event loop."""
    event, left = threading.Event(), [len(futures)]

    def one_done(_: asyncio.Future) -> None:
        left[0] -= 1
        if left[0] == 0:
            event.set()

    for future in futures:
        future.add_done_callback(one_done)
    return event
