"""The serve micro-batcher's scheduling: which requests share a pass, and work nobody waits for.

The engine here is a recording stand-in (what each pass was given, optionally held until the
test releases it); the real engines behind the batcher are exercised in test_serve.py.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from bloodmnist.serving.batching import Batcher


class RecordingEngine:
    """probs = the image's first pixel value in column 0 (so rows can be traced), per pass
    recording (batch size, tta); `hold` blocks every pass until it is set."""

    def __init__(self, hold: threading.Event | None = None):
        self.calls: list[tuple[int, bool]] = []
        self.hold = hold

    def probs(self, images: np.ndarray, tta: bool = False) -> np.ndarray:
        if self.hold is not None:
            self.hold.wait(timeout=30)
        self.calls.append((len(images), tta))
        out = np.zeros((len(images), 2), dtype=np.float32)
        out[:, 0] = images[:, 0, 0, 0]
        return out


def images(values: list[int]) -> np.ndarray:
    out = np.zeros((len(values), 4, 4, 3), dtype=np.uint8)
    out[:, 0, 0, 0] = values
    return out


def test_set_aside_jobs_share_one_pass_and_rows_go_home() -> None:
    """One plain request, then three TTA ones queued at once: two passes, not four."""
    engine = RecordingEngine()

    async def main() -> list[np.ndarray]:
        batcher = Batcher(engine, max_batch=64, wait_s=0.01)
        batcher.start()
        try:
            requests = [
                batcher.probs(images([1, 2]), tta=False),
                batcher.probs(images([3]), tta=True),
                batcher.probs(images([4, 5, 6]), tta=True),
                batcher.probs(images([7]), tta=True),
            ]
            return await asyncio.gather(*requests)
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    assert engine.calls == [(2, False), (5, True)]
    assert [r[:, 0].tolist() for r in results] == [[1, 2], [3], [4, 5, 6], [7]]


def test_a_timed_out_request_stops_its_pass_and_the_next_one_is_served() -> None:
    """A 3-chunk request times out during its first chunk: the other two chunks never run."""
    hold = threading.Event()
    engine = RecordingEngine(hold)

    async def main() -> tuple[bool, np.ndarray]:
        batcher = Batcher(engine, max_batch=4, wait_s=0)
        batcher.start()
        try:
            try:
                await asyncio.wait_for(batcher.probs(images(list(range(12)))), timeout=0.2)
                timed_out = False
            except TimeoutError:
                timed_out = True
            await asyncio.sleep(0)  # let the cancellation's done-callbacks run first
            hold.set()  # the first chunk finishes after its request has given up
            later = await asyncio.wait_for(batcher.probs(images([9])), timeout=10)
            return timed_out, later
        finally:
            await batcher.stop()

    timed_out, later = asyncio.run(main())
    assert timed_out
    assert engine.calls == [(4, False), (1, False)]  # chunks 2 and 3 were skipped
    assert later[:, 0].tolist() == [9]
