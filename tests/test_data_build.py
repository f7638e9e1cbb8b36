"""`bloodmnist data build`: folder trees and CSVs of real image files -> MedMNIST-layout npz."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bloodmnist.data.build import build_dataset, provenance_path
from bloodmnist.data.build_sources import split_counts
from bloodmnist.data.npz import load_npz
from bloodmnist.errors import DataError
from bloodmnist.inference.preprocess import load_image
from conftest import SHARED_DATA, describe, error_lines, run_cli

PBC = SHARED_DATA / "pbc_sample"
KEYS = ["train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels"]


def _noise(h: int, w: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (h, w) if mode == "L" else (h, w, 4 if mode == "RGBA" else 3)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def _tree(root: Path) -> Path:
    """Three classes of real files: odd sizes, grey, RGBA, PNG/JPEG/TIFF, one corrupt JPEG and
    one text file; 10 usable images per class."""
    src = root / "cells"
    for c, name in enumerate(("alpha", "beta", "gamma")):
        (src / name).mkdir(parents=True)
        for k in range(10):
            seed = 100 * c + k
            kind = k % 4
            if kind == 0:
                _noise(37 + k, 53, seed).save(src / name / f"{k}.png")
            elif kind == 1:
                _noise(90, 61 + k, seed, "L").save(src / name / f"{k}.jpg", quality=90)
            elif kind == 2:
                _noise(64, 64, seed).save(src / name / f"{k}.tif")
            else:
                _noise(120 + k, 97, seed, "RGBA").save(src / name / f"{k}.png")
    good = src / "gamma" / "0.png"
    jpeg = (src / "beta" / "1.jpg").read_bytes()
    (src / "beta" / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 3])  # truncated JPEG
    (src / "alpha" / "notes.txt").write_text("not an image\n")
    assert good.is_file()
    return src


def _digest_tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_build_from_folder_tree_cli(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    before = _digest_tree(src)
    out = tmp_path / "mine.npz"
    args = ["data", "build", str(src), str(out), "--size", "28", "--seed", "3"]
    result = run_cli(args, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, describe(result)
    report = json.loads(result.stdout)
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"broken.jpg", "notes.txt"}
    assert "damaged or incomplete" in skipped["broken.jpg"]
    assert "not an image" in skipped["notes.txt"]
    assert any("broken.jpg" in line for line in error_lines(result))
    assert _digest_tree(src) == before  # nothing in SRC was touched
    with np.load(out) as z:
        assert z.files == [*KEYS, "class_names"]
        assert list(z["class_names"]) == ["alpha", "beta", "gamma"]
        for s in ("train", "val", "test"):
            assert z[f"{s}_images"].dtype == np.uint8 and z[f"{s}_images"].shape[1:] == (28, 28, 3)
            assert z[f"{s}_labels"].dtype == np.uint8 and z[f"{s}_labels"].shape[1] == 1
        # 10 readable images per class: 7 / 1 / 2 (BloodMNIST's floor rule).
        for s, n in (("train", 7), ("val", 1), ("test", 2)):
            assert np.bincount(z[f"{s}_labels"][:, 0], minlength=3).tolist() == [n, n, n]
        arrays = {k: z[k] for k in KEYS}
    rows = list(csv.DictReader(provenance_path(out).open()))
    for row in rows:  # every row is exactly what predict's preprocessing makes of its file
        expected = load_image(src / row["source_path"], 28, "medmnist").pixels
        assert np.array_equal(arrays[f"{row['split']}_images"][int(row["index"])], expected)
    assert len(rows) == 30 and rows[0].keys() == {
        "split",
        "index",
        "source_path",
        "label",
        "class_name",
        "sha256",
    }
    for row in rows:
        assert row["sha256"] == before[row["source_path"]]
        assert row["class_name"] == ["alpha", "beta", "gamma"][int(row["label"])]
        assert row["source_path"].startswith(row["class_name"] + "/")
    ds = load_npz(out)
    assert ds.num_classes == 3 and ds.class_names == ("alpha", "beta", "gamma")


def test_grey_image_becomes_equal_rgb_channels(tmp_path: Path) -> None:
    src = tmp_path / "s"
    for name in ("a", "b"):
        (src / name).mkdir(parents=True)
        for k in range(5):
            _noise(40, 40, k, "L").save(src / name / f"{k}.png")
    res = build_dataset(
        src, tmp_path / "g.npz", size=28, method="resize", fractions=(0.6, 0.2, 0.2)
    )
    with np.load(res.out) as z:
        img = z["train_images"]
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])


def test_strict_refuses_and_writes_nothing(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    out = tmp_path / "strict.npz"
    result = run_cli(["data", "build", str(src), str(out), "--strict"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2, describe(result)
    lines = error_lines(result)
    assert len(lines) == 1 and "2 file(s) cannot be used" in lines[0] and "--strict" in lines[0]
    assert not out.exists() and not provenance_path(out).exists()


def test_empty_class_folder_is_a_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "s"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    _noise(30, 30, 0).save(src / "a" / "x.png")
    with pytest.raises(DataError, match=r"class folder .*b holds no files"):
        build_dataset(src, tmp_path / "x.npz")
    result = run_cli(["data", "build", str(src), str(tmp_path / "x.npz")], cwd=tmp_path)
    assert result.returncode == 2 and len(error_lines(result)) == 1, describe(result)
    assert not (tmp_path / "x.npz").exists()


def test_classes_a_built_file_could_not_hold_are_refused_before_reading(tmp_path: Path) -> None:
    """One class, a blank label, more than 256 classes: refused with one line (they used to
    build a file that loading then refused, or end in an OverflowError)."""
    one = tmp_path / "one"
    (one / "a").mkdir(parents=True)
    _noise(30, 30, 0).save(one / "a" / "x.png")
    with pytest.raises(DataError, match=r"only class \['a'\]; a classifier needs two or more"):
        build_dataset(one, tmp_path / "x.npz")
    table = tmp_path / "list.csv"
    table.write_text("one/a/x.png,a\none/a/x.png,\n")
    with pytest.raises(DataError, match=r"list.csv row 2: no label; expected path,label"):
        build_dataset(table, tmp_path / "x.npz")  # (said as "a class has an empty name" before)
    many = tmp_path / "many"
    for k in range(257):
        (many / f"c{k:03d}").mkdir(parents=True)
        (many / f"c{k:03d}" / "x.png").write_bytes(b"")  # never read: refused first
    result = run_cli(["data", "build", str(many), str(tmp_path / "m.npz")], cwd=tmp_path)
    assert result.returncode == 2, describe(result)
    assert error_lines(result)[0].endswith("257 classes; a built file holds at most 256")
    assert not list(tmp_path.glob("*.npz"))


def test_csv_errors_name_the_file_line_and_headers_are_recognised(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    table = tmp_path / "list.csv"
    ext = {1: "jpg", 2: "tif"}
    rows = ["file,class", ""]  # a header other than path,label, and blank lines
    for name in ("alpha", "beta"):
        rows += [f"{src.name}/{name}/{k}.{ext.get(k % 4, 'png')},{name}" for k in range(10)]
        rows.append("")
    table.write_text("\n".join(rows) + "\n")
    assert build_dataset(table, tmp_path / "x.npz").class_names == ["alpha", "beta"]
    numbered = [r.replace(",alpha", ",10").replace(",beta", ",2") for r in rows]  # numbers
    table.write_text("\n".join(numbered) + "\n")  # sorted as numbers: 2 before 10
    assert build_dataset(table, tmp_path / "n.npz").class_names == ["2", "10"]
    rows[14] += ",later"  # file line 15
    table.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"list.csv row 15: split 'later' is not one of"):
        build_dataset(table, tmp_path / "y.npz")
    rows[14] = rows[14].split(",")[0] + ",  "  # a row without its label: said with its line
    table.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"list.csv row 15: no label; expected path,label"):
        build_dataset(table, tmp_path / "y.npz")


def test_existing_out_and_bad_options_refused(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    out = tmp_path / "taken.npz"
    out.write_bytes(b"user data")
    with pytest.raises(DataError, match="already exists"):
        build_dataset(src, out)
    assert out.read_bytes() == b"user data"
    with pytest.raises(DataError, match="inside SRC"):
        build_dataset(src, src / "x.npz")
    with pytest.raises(DataError, match="not supported"):
        build_dataset(src, tmp_path / "y.npz", size=100)
    with pytest.raises(DataError, match="not in --labels"):
        build_dataset(src, tmp_path / "y.npz", labels=["alpha", "beta"])
    bad = run_cli(
        ["data", "build", str(src), str(tmp_path / "z.npz"), "--split", "0.5,0.5"], tmp_path
    )
    assert bad.returncode == 2 and "--split expects three fractions" in bad.stderr


def test_split_is_stratified_and_seeded(tmp_path: Path) -> None:
    assert split_counts(10, (0.7, 0.1, 0.2)) == (7, 1, 2)  # 0.7+0.1 floors to 8, not 7
    assert split_counts(1218, (0.7, 0.1, 0.2)) == (852, 122, 244)  # BloodMNIST's basophils
    src = _tree(tmp_path)
    a = build_dataset(src, tmp_path / "a.npz", seed=1, labels=["gamma", "alpha", "beta"])
    b = build_dataset(src, tmp_path / "b.npz", seed=1, labels=["gamma", "alpha", "beta"])
    c = build_dataset(src, tmp_path / "c.npz", seed=2, labels=["gamma", "alpha", "beta"])
    assert a.class_names == ["gamma", "alpha", "beta"]
    with np.load(a.out) as za, np.load(b.out) as zb, np.load(c.out) as zc:
        for key in KEYS:
            assert np.array_equal(za[key], zb[key])
        assert not np.array_equal(za["train_images"], zc["train_images"])
    assert a.provenance.read_text() == b.provenance.read_text()


def test_csv_source_split_column_wins(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    lines = ["path,label,split"]
    for name in ("alpha", "beta"):
        for k in range(10):
            split = "test" if k < 5 else ("val" if k == 5 else "")
            ext = {1: "jpg", 2: "tif"}.get(k % 4, "png")
            lines.append(f"cells/{name}/{k}.{ext},{name},{split}")
    table = tmp_path / "list.csv"
    table.write_text("\n".join(lines) + "\n")
    res = build_dataset(table, tmp_path / "csv.npz", seed=0)
    assert res.class_names == ["alpha", "beta"]
    # 5 fixed test + 1 fixed val per class; the 4 free ones split 0.7/0.1/0.2 -> 2/1/1.
    assert res.counts["test"] == {"alpha": 6, "beta": 6}
    assert res.counts["val"] == {"alpha": 2, "beta": 2}
    assert res.counts["train"] == {"alpha": 2, "beta": 2}
    rows = list(csv.DictReader(res.provenance.open()))
    fixed = {r["source_path"] for r in rows if r["split"] == "test"}
    assert str(src / "alpha" / "0.png") in fixed and str(src / "beta" / "4.png") in fixed


def test_pbc_sample_reproduces_shared_npz_rows(shared_data: Path, tmp_path: Path) -> None:
    """Built at 28 px with the predict preprocessing, the 128 raw PBC JPEGs give the shared
    file's test rows (labels.csv maps each file to its row)."""
    res = build_dataset(PBC, tmp_path / "pbc.npz", size=28)
    assert res.skipped == [] and res.class_names[0] == "basophil"
    index = {
        r["file"]: int(r["npz_test_index"]) for r in csv.DictReader((PBC / "labels.csv").open())
    }
    label = {r["file"]: int(r["label"]) for r in csv.DictReader((PBC / "labels.csv").open())}
    with np.load(shared_data) as ref, np.load(res.out) as built:
        ref_test = ref["test_images"]
        ours, theirs = [], []
        for row in csv.DictReader(res.provenance.open()):
            ours.append(built[f"{row['split']}_images"][int(row["index"])])
            theirs.append(ref_test[index[row["source_path"]]])
            assert int(row["label"]) == label[row["source_path"]]
    ours_arr, theirs_arr = np.stack(ours).astype(int), np.stack(theirs).astype(int)
    assert len(ours_arr) == 128
    identical = float(np.mean(ours_arr == theirs_arr))
    mad = float(np.mean(np.abs(ours_arr - theirs_arr)))
    # The shared README: 98% identical, mean abs. difference 0.09/255 (measured here: 100%, 0).
    assert identical >= 0.98 and mad <= 0.1, (identical, mad)


def test_class_names_key_is_validated(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for s in ("train", "val", "test"):
        arrays[f"{s}_images"] = rng.integers(0, 256, (6, 28, 28, 3), dtype=np.uint8)
        arrays[f"{s}_labels"] = (np.arange(6) % 3).astype(np.uint8)[:, None]
    good = tmp_path / "good.npz"
    np.savez(good, **arrays, class_names=np.array(["a", "b", "c"]))
    ds = load_npz(good)
    assert (ds.num_classes, ds.class_names) == (3, ("a", "b", "c"))
    with pytest.raises(DataError, match="holds 3 class names but the model has 8 classes"):
        load_npz(good, num_classes=8, classes_from_file=False)
    for bad, why in (
        (np.array(["a", "a", "c"]), "empty or repeated"),
        (np.array([1, 2, 3]), "1-D array of two or more strings"),
        (np.array(["a", "b"]), "labels outside 0..1"),
    ):
        path = tmp_path / "bad.npz"
        np.savez(path, **arrays, class_names=bad)
        with pytest.raises(DataError, match=why):
            load_npz(path)
    plain = tmp_path / "plain.npz"
    np.savez(plain, **arrays)
    assert load_npz(plain).class_names is None and load_npz(plain).num_classes == 8


def test_out_created_during_the_build_is_never_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process creates OUT (or its provenance) after the up-front check: the build
    fails in one line, their file is untouched, and no half of the pair is left behind."""
    import bloodmnist.data.build as build

    src = _tree(tmp_path)
    check = build._check_paths
    for victim in ("first.npz", "second_provenance.csv"):
        out = tmp_path / (victim if victim.endswith(".npz") else "second.npz")

        def check_then_race(*args, _v=tmp_path / victim) -> None:
            check(*args)  # the real check passes; then the other process writes
            _v.write_bytes(b"theirs")

        monkeypatch.setattr(build, "_check_paths", check_then_race)
        with pytest.raises(DataError, match="already exists; nothing was overwritten") as err:
            build_dataset(src, out)
        assert "\n" not in str(err.value)
        assert (tmp_path / victim).read_bytes() == b"theirs"
        others = {out, build.provenance_path(out)} - {tmp_path / victim}
        assert not any(p.exists() for p in others), "no npz without provenance or vice versa"
        assert not list(tmp_path.glob(".*.tmp")), "no temp file left"


def test_exclusive_atomic_write_refuses_an_existing_target(tmp_path: Path) -> None:
    from bloodmnist.atomic import atomic_open, write_text_atomic

    target = tmp_path / "t.txt"
    write_text_atomic(target, "new", exclusive=True)
    assert target.read_text() == "new"
    with pytest.raises(FileExistsError), atomic_open(target, exclusive=True) as fh:
        fh.write(b"other")
    assert target.read_text() == "new" and not list(tmp_path.glob(".*.tmp"))
    write_text_atomic(target, "replaced")  # the default still replaces (run-folder files)
    assert target.read_text() == "replaced"


def test_exclusive_write_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a filesystem that refuses hard links the write checks, then renames: same contract."""
    import errno
    import os

    from bloodmnist.atomic import write_text_atomic

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "t.txt"
    write_text_atomic(target, "first", exclusive=True)
    with pytest.raises(FileExistsError, match="nothing was overwritten"):
        write_text_atomic(target, "second", exclusive=True)
    assert target.read_text() == "first" and not list(tmp_path.glob(".*.tmp"))


def test_copies_across_splits_and_a_class_without_training_images_are_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Byte-identical copies that land on both sides of the split would inflate validation
    and test scores; a class with one image gets none in train: both built silently before."""
    src = _tree(tmp_path)
    for k in range(6):  # six copies of one file: the seeded split spreads them
        (src / "alpha" / f"copy{k}.png").write_bytes((src / "alpha" / "0.png").read_bytes())
    (src / "delta").mkdir()
    _noise(40, 40, 999).save(src / "delta" / "only.png")
    with caplog.at_level("WARNING", logger="bloodmnist.data.build"):
        result = build_dataset(src, tmp_path / "d.npz", seed=1)
    assert result.counts["train"]["delta"] == 0
    text = caplog.text
    assert "has no train image of class(es) ['delta']" in text
    assert "byte-identical to a file in another split" in text and "data audit" in text
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    caplog.clear()
    with caplog.at_level("WARNING", logger="bloodmnist.data.build"):
        build_dataset(_tree(quiet), quiet / "q.npz", seed=1)
    assert "byte-identical" not in caplog.text and "has no" not in caplog.text
