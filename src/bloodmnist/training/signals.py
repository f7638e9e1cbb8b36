"""Graceful stop on SIGINT/SIGTERM: the first signal asks the loop to stop after the current
step; a second one exits at once. The last completed epoch's last.pt stays the resume point."""

from __future__ import annotations

import signal
import sys
from types import FrameType


class StopRequested(Exception):
    """Raised inside the training loop once a stop signal has arrived."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class GracefulStop:
    def __init__(self) -> None:
        self.signum: int | None = None
        self.note = "stopping after this step"  # what the first signal does; callers update it
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # second signal: leave now
            sys.stderr.write("bloodmnist: second signal, exiting immediately\n")
            raise SystemExit(128 + signum)
        self.signum = signum
        sys.stderr.write(
            f"bloodmnist: {signal.Signals(signum).name} received, {self.note} "
            "(send it again to exit at once)\n"
        )

    def check(self) -> None:
        if self.signum is not None:
            raise StopRequested(self.signum)

    def __enter__(self) -> GracefulStop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread (e.g. embedded use): no handler
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
