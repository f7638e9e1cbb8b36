"""Progress while training: a live bar in a terminal, plain log lines everywhere else.

The terminal is a real pseudo-terminal (the `pty` module) around a real `bloodmnist train`
subprocess; the other run writes stderr to a real file, as `nohup` or `> log 2>&1` would.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from bloodmnist.progress import TrainProgress, format_seconds, make_bar, wants_bars

#: Bar characters tqdm draws (block elements) plus the carriage return it redraws with.
BAR_MARKS = ("\r", "█", "img/s", "ETA")
EPOCHS = 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_run_eta_from_the_current_rate_then_from_timed_epochs() -> None:
    clock, out = FakeClock(), io.StringIO()
    bar = TrainProgress(True, epochs=4, images_per_epoch=100, stream=out, clock=clock)
    bar.start_epoch(1)
    clock.now += 10
    bar.step(25)  # 2.5 img/s: 30 s left in this epoch, 3 more epochs of 40 s each
    assert bar.run_eta() == pytest.approx(30 + 3 * 40)
    clock.now += 30
    bar.step(75)
    clock.now += 10  # validation
    assert bar.end_epoch() == pytest.approx(50)
    bar.start_epoch(2)
    clock.now += 5
    bar.step(50)  # 10 img/s now: 5 s left, then 2 epochs at the timed mean of 50 s
    assert bar.run_eta() == pytest.approx(5 + 2 * 50)
    bar.validating()
    bar.end_epoch()
    text = out.getvalue()
    assert "epoch 1/4:" in text and "epoch 2/4:" in text and "epoch ETA" in text
    assert "validating, run ETA 01:45" in text  # drawn at once: 5 + 2 x 50 s
    assert format_seconds(3725) == "1:02:05"


def test_disabled_bars_write_nothing() -> None:
    out = io.StringIO()
    bar = TrainProgress(False, epochs=2, images_per_epoch=10, stream=out)
    bar.start_epoch(1)
    bar.step(10)
    bar.validating()
    bar.end_epoch()
    with make_bar(False, 10, "test", out) as eval_bar:
        eval_bar.update(10)
    assert out.getvalue() == ""


def test_bars_only_when_asked_and_on_a_terminal(tmp_path: Path) -> None:
    with open(tmp_path / "log.txt", "w") as log:
        assert not wants_bars(True, log)
    master, slave = pty.openpty()
    try:
        with os.fdopen(os.dup(slave), "w") as tty:
            assert wants_bars(True, tty)
            assert not wants_bars(False, tty)  # --quiet
    finally:
        os.close(master)
        os.close(slave)


def _train_args(data: Path, out: Path) -> list[str]:
    # No --quiet: only the terminal check decides. Tiny and fp32 on every CPU.
    return [
        "-m", "bloodmnist", "train", "--data", str(data), "--subset", "32",
        "--epochs", str(EPOCHS), "--pretrained", "none", "--precision", "fp32",
        "--out", str(out), "--set", "runtime.reports=false", "--set", "runtime.threads=1",
        "--set", "optim.batch_size=16",
    ]  # fmt: skip


def _run_in_pty(args: list[str], cwd: Path, timeout: float = 600) -> tuple[int, str]:
    """Run `python ARGS` with stdin/stdout/stderr on a 120x40 pseudo-terminal; (rc, output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=cwd, stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child side closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        rc = proc.wait(timeout=timeout)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return rc, b"".join(chunks).decode("utf-8", errors="replace")


def test_terminal_shows_live_bars(shared_data: Path, tmp_path: Path) -> None:
    rc, text = _run_in_pty(_train_args(shared_data, tmp_path / "run"), tmp_path)
    assert rc == 0, text[-3000:]
    for epoch in range(1, EPOCHS + 1):
        assert f"epoch {epoch}/{EPOCHS}:" in text, text[-3000:]  # the bar of each epoch
        assert f"epoch {epoch}/{EPOCHS}  train_loss" in text  # and its log line
    assert "img/s" in text and "epoch ETA" in text and "run ETA" in text
    assert "\r" in text and "█" in text
    assert "test:" in text and "test TTA:" in text  # the final test passes have bars too


def test_log_file_gets_lines_only(shared_data: Path, tmp_path: Path) -> None:
    log = tmp_path / "nohup.out"
    with log.open("w") as fh:  # stdout and stderr to one file, as `nohup` does
        proc = subprocess.run(
            [sys.executable, *_train_args(shared_data, tmp_path / "run")],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            timeout=600,
            check=False,
        )
    text = log.read_text(encoding="utf-8")
    assert proc.returncode == 0, text[-3000:]
    lines = [line for line in text.splitlines() if "train_loss" in line]
    assert len(lines) == EPOCHS, text  # one line per epoch, as before
    for mark in BAR_MARKS:
        assert mark not in text, (mark, text)
    train_log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert "\r" not in train_log and "█" not in train_log
