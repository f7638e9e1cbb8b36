"""load_npz on the real shared file and on small hand-made broken files: one DataError each."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bloodmnist.data.npz import SPLITS, load_npz
from bloodmnist.errors import DataError

SIZES = {"train": 11959, "val": 1712, "test": 3421}


@pytest.fixture(scope="module")
def real(shared_data: Path):
    return load_npz(shared_data)


def test_real_file_sizes_dtypes_and_labels(real, shared_data: Path) -> None:
    assert real.path == shared_data
    assert real.num_classes == 8 and real.image_size == 28
    for name, n in SIZES.items():
        sp = real.split(name)
        assert len(sp) == n
        assert sp.images.shape == (n, 28, 28, 3) and sp.images.dtype == np.uint8
        assert sp.images.flags["C_CONTIGUOUS"]
        assert sp.labels.shape == (n,) and sp.labels.dtype == np.int64  # (N,1) uint8 on disk
        assert sp.labels.min() == 0 and sp.labels.max() == 7
        assert set(np.unique(sp.labels)) == set(range(8))  # every class in every split
        assert 50 < sp.images.mean() < 230  # real pixels, not a blank array


def test_subset_keeps_the_first_n_of_every_split(real, shared_data: Path) -> None:
    sub = load_npz(shared_data, subset=10)
    for name in SPLITS:
        assert len(sub.split(name)) == 10
        np.testing.assert_array_equal(sub.split(name).images, real.split(name).images[:10])
        np.testing.assert_array_equal(sub.split(name).labels, real.split(name).labels[:10])
    big = load_npz(shared_data, subset=5000)  # larger than val/test: those stay whole
    assert [len(big.split(s)) for s in SPLITS] == [5000, SIZES["val"], SIZES["test"]]


def _arrays(n: int = 6, size: int = 8, k: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for s in SPLITS:
        out[f"{s}_images"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        out[f"{s}_labels"] = (np.arange(n) % k).astype(np.uint8).reshape(n, 1)
    return out


def _write(tmp_path: Path, arrays: dict[str, np.ndarray], name: str = "bad.npz") -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_small_valid_file(tmp_path: Path) -> None:
    ds = load_npz(_write(tmp_path, _arrays(), "ok.npz"))
    assert ds.image_size == 8 and len(ds.train) == 6
    np.testing.assert_array_equal(ds.test.labels, np.arange(6))


def test_grayscale_is_expanded_to_rgb(tmp_path: Path) -> None:
    arrays = _arrays()
    gray = {s: arrays[f"{s}_images"][..., 0].copy() for s in SPLITS}
    arrays.update({f"{s}_images": g for s, g in gray.items()})
    ds = load_npz(_write(tmp_path, arrays, "gray.npz"))
    for s in SPLITS:
        sp = ds.split(s)
        assert sp.images.shape == (6, 8, 8, 3) and sp.images.dtype == np.uint8
        for c in range(3):
            np.testing.assert_array_equal(sp.images[..., c], gray[s])


def _set(key: str, value: np.ndarray) -> Callable[[dict], None]:
    def change(arrays: dict) -> None:
        arrays[key] = value

    return change


def _drop(key: str) -> Callable[[dict], None]:
    def change(arrays: dict) -> None:
        del arrays[key]

    return change


BROKEN = {
    "missing_key": (_drop("val_labels"), "val_labels", "missing key"),
    "rank_2": (_set("train_images", np.zeros((6, 64), np.uint8)), "train_images", "shape"),
    "rank_5": (_set("val_images", np.zeros((6, 8, 8, 3, 1), np.uint8)), "val_images", "shape"),
    "float_images": (
        _set("test_images", np.zeros((6, 8, 8, 3), np.float32)),
        "test_images",
        "float32",
    ),
    "rgba": (_set("train_images", np.zeros((6, 8, 8, 4), np.uint8)), "train_images", "4 channels"),
    "not_square": (_set("val_images", np.zeros((6, 8, 9, 3), np.uint8)), "val_images", "square"),
    "label_8": (
        _set("test_labels", np.array([0, 1, 2, 3, 4, 8], np.uint8)),
        "test_labels",
        "outside 0..7",
    ),
    "label_negative": (
        _set("val_labels", np.array([0, 1, -1, 3, 4, 5], np.int64)),
        "val_labels",
        "outside 0..7",
    ),
    "float_labels": (_set("train_labels", np.zeros(6, np.float32)), "train_labels", "integers"),
    "count_mismatch": (
        _set("train_labels", np.zeros(5, np.uint8)),
        "train_labels",
        "5 labels for 6 images",
    ),
    "empty_split": (_set("val_images", np.zeros((0, 8, 8, 3), np.uint8)), "val_images", "empty"),
    "size_mismatch": (
        _set("test_images", np.zeros((6, 16, 16, 3), np.uint8)),
        "different image shapes",
        "16",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_file_is_one_data_error_naming_file_and_key(tmp_path: Path, case: str) -> None:
    change, key, words = BROKEN[case]
    arrays = _arrays()
    change(arrays)
    path = _write(tmp_path, arrays)
    with pytest.raises(DataError) as info:
        load_npz(path)
    msg = str(info.value)
    assert str(path) in msg
    assert key in msg and words in msg, msg
    assert "\n" not in msg
    assert info.value.exit_code == 2


def _assert_unreadable(path: Path, words: str) -> None:
    with pytest.raises(DataError, match=re.escape(str(path))) as info:
        load_npz(path)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.npz"
    with pytest.raises(DataError, match=re.escape(str(path))) as info:
        load_npz(path)
    assert "not found" in str(info.value) and "--data" in str(info.value)


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "text.npz"
    path.write_text("this is not an npz archive\n")
    _assert_unreadable(path, "not a readable npz")


def test_truncated_npz(tmp_path: Path) -> None:
    whole = _write(tmp_path, _arrays(n=40), "whole.npz")
    data = whole.read_bytes()
    path = tmp_path / "half.npz"
    path.write_bytes(data[: len(data) // 2])
    _assert_unreadable(path, "not a readable npz")


@pytest.mark.parametrize("compressed", [False, True])
def test_corrupted_member(tmp_path: Path, compressed: bool) -> None:
    """Flipped bytes inside a member: a CRC error (stored) or a zlib error (deflated)."""
    path = tmp_path / "corrupt.npz"
    (np.savez_compressed if compressed else np.savez)(path, **_arrays(n=40))
    data = bytearray(path.read_bytes())
    for i in range(1000, 3000):
        data[i] ^= 0x55
    path.write_bytes(bytes(data))
    _assert_unreadable(path, "not a readable npz")


def test_a_header_claiming_petabytes_is_one_line(tmp_path: Path) -> None:
    """A damaged shape in an array header: numpy would allocate it before reading a byte."""
    import io
    import zipfile

    path = tmp_path / "huge.npz"
    np.savez(path, **_arrays())
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": "|u1", "fortran_order": False, "shape": (10**12, 28, 28, 3)}
    )
    with zipfile.ZipFile(path) as zin:
        members = {n: zin.read(n) for n in zin.namelist()}
    members["train_images.npy"] = head.getvalue() + b"\0" * 64
    with zipfile.ZipFile(path, "w") as zout:
        for name, data in members.items():
            zout.writestr(name, data)
    _assert_unreadable(path, "claims more memory than this machine has")


def test_single_npy_array_under_npz_name(tmp_path: Path) -> None:
    path = tmp_path / "array.npz"
    with path.open("wb") as fh:
        np.save(fh, np.zeros((4, 8, 8, 3), np.uint8))
    _assert_unreadable(path, "single array")


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["train_labels"] = np.array([{"a": 1}] * 6, dtype=object)
    path = tmp_path / "objects.npz"
    np.savez(path, **arrays)
    _assert_unreadable(path, "not a readable npz")


def test_image_size_must_match_data_size(tmp_path: Path) -> None:
    """A 28 px model evaluated on a 64 px file is refused (training follows the file)."""
    from bloodmnist.data.source import load_data

    path = _write(tmp_path, _arrays(size=64), "b64.npz")
    data, info = load_data(str(path), 64, 8, None, progress=False)
    assert data.image_size == 64 and info.user_file
    with pytest.raises(
        DataError,
        match=r"holds 64x64 images but data.size is 28, the size this model takes; "
        r"pass a 28 px file$",
    ):
        load_data(str(path), 28, 8, None, progress=False)
    assert load_data(str(path), 28, 8, None, progress=False, follow_file=True)[0].image_size == 64


def test_a_model_is_not_scored_against_a_file_naming_its_classes_otherwise(tmp_path: Path) -> None:
    """The same number of classes in another order would score every prediction against the
    wrong label: a model with names refuses a file whose names differ; equal names load."""
    from bloodmnist.config import ModelConfig
    from bloodmnist.data.source import load_data

    arrays = _arrays(size=28)
    names = [f"c{i}" for i in range(8)]
    path = _write(tmp_path, {**arrays, "class_names": np.array(names[::-1])}, "rev.npz")
    with pytest.raises(DataError, match=r"names its classes \['c7', .*the model \['c0', "):
        load_data(str(path), 28, 8, None, progress=False, model=ModelConfig(class_names=names))
    same = _write(tmp_path, {**arrays, "class_names": np.array(names)}, "same.npz")
    named = ModelConfig(class_names=names)
    assert load_data(str(same), 28, 8, None, progress=False, model=named)[0].class_names
    assert load_data(str(path), 28, 8, None, progress=False)[0].num_classes == 8  # no model
    # a model that stores no names (trained on an official-layout file) has BloodMNIST's: the
    # same names in another order are refused (they were scored silently), others only warn
    from bloodmnist import CLASS_NAMES

    reordered = {**arrays, "class_names": np.array(CLASS_NAMES[::-1])}
    with pytest.raises(DataError, match=r"names its classes \['platelet', .*the model \['baso"):
        load_data(str(_write(tmp_path, reordered, "r.npz")), 28, 8, None, model=ModelConfig())
