"""benchmarks/resplit.py: the real file's images, drawn again with its per-class split sizes."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import numpy as np

from conftest import load_bench

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "resplit.py"
SPLITS = ("train", "val", "test")


def _resplit() -> ModuleType:
    return load_bench("resplit")


def _pairs(d: dict[str, np.ndarray], splits: tuple[str, ...] = SPLITS) -> Counter:
    """Every (image, label) of the splits, counted: the file holds a few duplicate images."""
    return Counter(
        (im.tobytes(), int(y))
        for s in splits
        for im, y in zip(d[f"{s}_images"], d[f"{s}_labels"][:, 0], strict=True)
    )


def test_same_images_and_class_counts_other_membership(shared_data: Path) -> None:
    with np.load(shared_data) as f:
        src = {k: f[k] for k in f.files}
    out, moved = _resplit().resplit(src, seed=1)
    again, _ = _resplit().resplit(src, seed=1)
    assert all(np.array_equal(out[k], again[k]) for k in out)  # seeded
    for s in SPLITS:
        a, b = src[f"{s}_labels"][:, 0], out[f"{s}_labels"][:, 0]
        assert out[f"{s}_images"].shape == src[f"{s}_images"].shape
        assert np.array_equal(np.bincount(a, minlength=8), np.bincount(b, minlength=8))
    # the same (image, label) pairs, none lost, repeated or relabelled
    assert _pairs(out) == _pairs(src)
    # each image stays in its split with probability 0.7^2 + 0.1^2 + 0.2^2 = 0.54
    assert 0.40 < moved / 17092 < 0.52
    stayed = sum((_pairs(out, (s,)) & _pairs(src, (s,))).total() for s in SPLITS)
    assert abs(17092 - moved - stayed) <= 17  # the duplicates can be counted either way
    other, _ = _resplit().resplit(src, seed=2)
    assert not np.array_equal(other["val_labels"], out["val_labels"])


def test_the_script_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "mine.npz"
    target.write_bytes(b"user data")
    proc = subprocess.run(
        [sys.executable, str(BENCH), str(tmp_path / "missing.npz"), str(target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "exists" in proc.stderr
    assert target.read_bytes() == b"user data"
    proc = subprocess.run(
        [sys.executable, str(BENCH), str(tmp_path / "missing.npz"), str(tmp_path / "new.npz")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not found" in proc.stderr
    assert not (tmp_path / "new.npz").exists()


def test_keep_test_draws_only_train_and_val(shared_data: Path, tmp_path: Path) -> None:
    """--keep-test: files for choosing; the test split is the source's, byte for byte."""
    target = tmp_path / "fold1.npz"
    proc = subprocess.run(
        [sys.executable, str(BENCH), str(shared_data), str(target), "--seed", "1", "--keep-test"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    with np.load(shared_data) as f:
        src = {k: f[k] for k in f.files}
    with np.load(target) as f:
        out = {k: f[k] for k in f.files}
    assert list(out) == [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
    assert np.array_equal(out["test_images"], src["test_images"])
    assert np.array_equal(out["test_labels"], src["test_labels"])
    for s in ("train", "val"):
        assert out[f"{s}_images"].shape == src[f"{s}_images"].shape
        a, b = src[f"{s}_labels"][:, 0], out[f"{s}_labels"][:, 0]
        assert np.array_equal(np.bincount(a, minlength=8), np.bincount(b, minlength=8))
    assert _pairs(out, ("train", "val")) == _pairs(src, ("train", "val"))
    assert not np.array_equal(out["val_labels"], src["val_labels"])
    # of the 13,671 train+val images, each stays put with probability (7/8)^2 + (1/8)^2 = 0.78
    moved = int(proc.stdout.split(": ")[1].split()[2])
    assert 0.17 < moved / 13671 < 0.27, proc.stdout
