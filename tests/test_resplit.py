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


def test_train_keep_drops_training_images_in_proportion(shared_data: Path) -> None:
    """--train-keep: a learning-curve file; val and test are the source's, train a subset."""
    with np.load(shared_data) as f:
        src = {k: f[k] for k in f.files}
    out = _resplit().fewer_train(src, keep=10247, seed=1)
    assert list(out) == [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
    for s in ("val", "test"):
        assert out[f"{s}_images"] is src[f"{s}_images"]
    counts = np.bincount(src["train_labels"][:, 0], minlength=8)
    kept = np.bincount(out["train_labels"][:, 0], minlength=8)
    assert kept.sum() == 10247 and len(out["train_images"]) == 10247
    assert np.all(np.abs(kept - counts * 10247 / 11959) < 1)  # each class within one image
    assert (_pairs(out, ("train",)) - _pairs(src, ("train",))).total() == 0  # a subset
    again = _resplit().fewer_train(src, keep=10247, seed=1)
    other = _resplit().fewer_train(src, keep=10247, seed=2)
    assert np.array_equal(again["train_images"], out["train_images"])
    assert not np.array_equal(other["train_images"], out["train_images"])


def test_train_keep_refuses_bad_counts(shared_data: Path, tmp_path: Path) -> None:
    for bad, args in (("11960", []), ("0", []), ("100", ["--keep-test"])):
        target = tmp_path / f"less{bad}.npz"
        proc = subprocess.run(
            [sys.executable, str(BENCH), str(shared_data), str(target), "--train-keep", bad, *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert ("1..11959" in proc.stderr) if not args else ("drop --keep-test" in proc.stderr)
        assert not target.exists()


def test_the_class_names_of_a_built_file_are_kept(shared_data: Path, tmp_path: Path) -> None:
    """A `bloodmnist data build` file names its classes; every kind of output keeps them."""
    with np.load(shared_data) as f:
        src = {k: f[k][:400] for k in f.files}
    names = np.array([f"cell type {i}" for i in range(8)])
    np.savez(tmp_path / "built.npz", **src, class_names=names)
    for i, args in enumerate((["--keep-test"], [], ["--train-keep", "300"])):
        target = tmp_path / f"out{i}.npz"
        proc = subprocess.run(
            [sys.executable, str(BENCH), str(tmp_path / "built.npz"), str(target), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        with np.load(target) as f:
            assert np.array_equal(f["class_names"], names)
            assert len(f["train_labels"]) == (300 if "--train-keep" in args else 400)
