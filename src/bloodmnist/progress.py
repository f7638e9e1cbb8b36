"""Live progress bars (tqdm) for training epochs and evaluation passes, only in a terminal.

In a terminal (stderr is a TTY and --quiet is off) each epoch shows a bar with images/s, the
epoch's ETA and the whole run's ETA; evaluation passes (final test, TTA) show one too. Anywhere
else (a log file, a pipe, nohup, --quiet) nothing is drawn: the one log line per epoch is all,
and no carriage returns or bar characters reach the logs.

The bars only count images the host already knows about (batch sizes): updating them never
reads a device value, so the training loop stays free of host-device syncs. A module of its own
(top-level, like runtime.py) because both training and evaluation use it.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

#: tqdm's own counters, rate and ETA; `postfix` carries the run ETA (tqdm prefixes ", ").
BAR_FORMAT = (
    "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} img "
    "[{rate_fmt}, <eta> {remaining}{postfix}]"
)


def wants_bars(requested: bool, stream: TextIO | None = None) -> bool:
    """Bars only when asked for (not --quiet) and `stream` (stderr) is a terminal."""
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return bool(requested and isatty is not None and isatty())


def format_seconds(seconds: float) -> str:
    """H:MM:SS (or M:SS under an hour), as tqdm prints its own ETA."""
    return tqdm.format_interval(max(0.0, seconds))


def make_bar(
    enabled: bool, total: int, desc: str, stream: TextIO | None = None, eta: str = "ETA"
) -> tqdm:
    """A transient bar (erased when closed, so the log lines stay clean); a no-op if disabled.

    `eta` labels tqdm's time left (of this bar: "epoch ETA" for a training epoch)."""
    return tqdm(
        total=total,
        desc=desc,
        unit="img",
        bar_format=BAR_FORMAT.replace("<eta>", eta),
        leave=False,
        dynamic_ncols=True,
        disable=not enabled,
        file=stream if stream is not None else sys.stderr,
    )


class TrainProgress:
    """One bar per epoch; the run ETA comes from the epochs this process has timed.

    Until one epoch has finished, the run ETA extrapolates the current epoch's training rate
    (validation not yet included); afterwards it is the mean epoch time (training plus
    validation) times the epochs left. Early stopping can end the run sooner than it says.
    """

    def __init__(
        self,
        enabled: bool,
        epochs: int,
        images_per_epoch: int,
        stream: TextIO | None = None,
        clock=time.perf_counter,
    ) -> None:
        self.enabled = enabled
        self.epochs = epochs
        self.images_per_epoch = images_per_epoch
        self.stream = stream
        self.clock = clock
        self.epoch_seconds: list[float] = []
        self._bar: tqdm | None = None
        self._epoch = 0
        self._t0 = 0.0
        self._done = 0
        self._last_postfix = 0.0

    def start_epoch(self, epoch: int) -> None:
        self.close()
        self._epoch, self._done, self._t0 = epoch, 0, self.clock()
        desc = f"epoch {epoch}/{self.epochs}"
        self._bar = make_bar(self.enabled, self.images_per_epoch, desc, self.stream, "epoch ETA")

    def step(self, images: int) -> None:
        """Count `images` trained (host-side batch size only: no device sync)."""
        self._done += images
        if self._bar is None or not self.enabled:
            return
        now = self.clock()
        if now - self._last_postfix >= 0.5:  # the ETA text changes slowly; tqdm redraws often
            self._last_postfix = now
            self._bar.set_postfix_str(self._run_text(now), refresh=False)
        self._bar.update(images)

    def validating(self) -> None:
        if self._bar is not None and self.enabled:
            self._bar.set_postfix_str(f"validating, {self._run_text()}", refresh=True)

    def _run_text(self, now: float | None = None) -> str:
        return f"run ETA {format_seconds(self.run_eta(now))}"

    def end_epoch(self) -> float:
        """Close the epoch's bar and return its seconds (for the next ETAs)."""
        seconds = self.clock() - self._t0
        self.epoch_seconds.append(seconds)
        self.close()
        return seconds

    def run_eta(self, now: float | None = None) -> float:
        """Seconds until the last epoch ends, if no early stopping intervenes."""
        now = self.clock() if now is None else now
        elapsed = now - self._t0
        rate = self._done / elapsed if elapsed > 0 else 0.0
        this_left = (self.images_per_epoch - self._done) / rate if rate > 0 else 0.0
        if self.epoch_seconds:
            per_epoch = sum(self.epoch_seconds) / len(self.epoch_seconds)
        else:
            per_epoch = self.images_per_epoch / rate if rate > 0 else 0.0
        return this_left + per_epoch * max(0, self.epochs - self._epoch)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
