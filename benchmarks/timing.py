"""Wall and CPU time of a piece of work, children and running worker processes included.

Used by throughput.py (roofline.py and inference.py time best-of and percentile loops of their
own). CPU seconds are the per-core cost, which background load on the machine does not inflate,
so ratios of them stay comparable when the box is busy.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (DataLoader
    workers): the per-core cost, which background load on the machine does not inflate."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def proc_cpu_seconds(pids: list[int]) -> float:
    """utime + stime of running processes (the reference's DataLoader workers), from /proc."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def timed(fn: Callable[[], object], pids: list[int] | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of fn(); CPU includes the running processes `pids`."""
    pids = pids or []
    wall, cpu = time.perf_counter(), cpu_seconds() + proc_cpu_seconds(pids)
    fn()
    cpu_end = cpu_seconds() + proc_cpu_seconds(pids)
    return time.perf_counter() - wall, cpu_end - cpu


def ratio(num: list[float], den: list[float]) -> float:
    """Median of the per-rep ratios (pairs measured back to back)."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory of this process and of its largest finished child, in MiB."""
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"peak_rss_mb": self_kb / 1024, "peak_rss_workers_mb": child_kb / 1024}
