"""Headless Chromium screenshots for report tests (Debian package `chromium`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SIZE = (1280, 2000)


def chromium() -> str | None:
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def distinct_colours(img: Image.Image) -> tuple[int, float]:
    """(number of distinct RGB colours, share of the most common one)."""
    rgb = np.asarray(img.convert("RGB")).reshape(-1, 3).astype(np.int64)
    packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]  # 1-D unique is far faster
    counts = np.bincount(np.unique(packed, return_inverse=True)[1])
    return len(counts), counts.max() / counts.sum()


def assert_renders(html: Path, workdir: Path, timeout: int = 120) -> None:
    """Screenshot `html` in headless Chromium and check the picture is not blank."""
    browser = chromium()
    if browser is None:
        pytest.skip("chromium not installed (apt-get install chromium) - cannot render report.html")
    shot = workdir / "report.png"
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={workdir / 'profile'}",
        f"--window-size={SIZE[0]},{SIZE[1]}",
        f"--screenshot={shot}",
        html.resolve().as_uri(),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert shot.is_file(), f"no screenshot (rc={result.returncode}): {result.stderr[-2000:]}"
    with Image.open(shot) as img:
        assert img.size == SIZE
        n_colours, top = distinct_colours(img)
    assert n_colours > 50, n_colours
    assert top < 0.9, f"screenshot is {top:.0%} one colour"
