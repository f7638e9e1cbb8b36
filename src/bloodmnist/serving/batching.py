"""Micro-batching: images from concurrent requests share one forward pass.

Requests put their (already decoded) images on a queue; one worker takes what is waiting, up to
`max_batch` images, runs the engine once on a single inference thread and hands each request its
rows back. Under load many small requests cost one pass; alone, a request waits at most
`wait_s` for company. The single thread also keeps the engine (not thread-safe in general) and
Grad-CAM from running at the same time.
"""

from __future__ import annotations

import asyncio
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

    async def _collect(self, first: _Job) -> tuple[list[_Job], list[_Job]]:
        """Jobs to run with `first` (same tta flag, up to max_batch images) and the rest."""
        assert self.queue is not None
        jobs, others, count = [first], [], len(first.images)
        if self.wait_s > 0 and self.queue.empty():
            await asyncio.sleep(self.wait_s)  # give concurrent requests a moment to arrive
        while not self.queue.empty() and count < self.max_batch:
            job = self.queue.get_nowait()
            if job.tta == first.tta and count + len(job.images) <= self.max_batch:
                jobs.append(job)
                count += len(job.images)
            else:
                others.append(job)
        return jobs, others

    async def _worker(self) -> None:
        assert self.queue is not None
        pending: list[_Job] = []
        while True:
            first = pending.pop(0) if pending else await self.queue.get()
            jobs, others = await self._collect(first)
            pending.extend(others)
            jobs = [j for j in jobs if not j.future.done()]  # timed-out requests are dropped
            if not jobs:
                continue
            try:
                probs = await self.run(self._forward, [j.images for j in jobs], first.tta)
            except Exception as exc:  # noqa: BLE001 - handed to the waiting requests
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            start = 0
            for job in jobs:
                end = start + len(job.images)
                if not job.future.done():
                    job.future.set_result(probs[start:end])
                start = end

    def _forward(self, parts: list[np.ndarray], tta: bool) -> np.ndarray:
        """One pass per max_batch images (a single large request is split)."""
        images = np.concatenate(parts)
        out = []
        for i in range(0, len(images), self.max_batch):
            out.append(self.engine.probs(images[i : i + self.max_batch], tta=tta))
            self.passes += 1
        return np.concatenate(out)
