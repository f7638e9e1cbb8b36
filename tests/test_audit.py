"""`bloodmnist data audit`: planted exact and near duplicates are found, and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bloodmnist.data.audit import NEAR_RMS, audit
from bloodmnist.data.npz import load_npz
from conftest import describe, error_lines, run_cli


def _noisy(img: np.ndarray, amp: int, rng: np.random.Generator) -> np.ndarray:
    """A copy with uniform noise in [-amp, amp] (never identical to the original)."""
    out = img.astype(int) + rng.integers(-amp, amp + 1, img.shape)
    out[0, 0, 0] = (int(img[0, 0, 0]) + 1) % 256 if out[0, 0, 0] == img[0, 0, 0] else out[0, 0, 0]
    return np.clip(out, 0, 255).astype(np.uint8)


def _planted(path: Path, size: int = 28) -> Path:
    rng = np.random.default_rng(0)
    n = {"train": 40, "val": 12, "test": 16}
    images = {s: rng.integers(0, 256, (k, size, size, 3), dtype=np.uint8) for s, k in n.items()}
    labels = {s: (np.arange(k) % 3).astype(np.uint8)[:, None] for s, k in n.items()}
    images["train"][10] = images["train"][3]  # exact, within train, same label (0)
    labels["train"][10] = labels["train"][3]
    images["test"][2] = images["train"][5]  # exact, train-test leak, same label
    labels["test"][2] = labels["train"][5]
    images["val"][1] = images["train"][7]  # exact, train-val, labels 1 and 2
    labels["val"][1] = (labels["train"][7] + 1) % 3
    images["test"][4] = _noisy(images["train"][8], 3, rng)  # near (RMS ~2), same label
    labels["test"][4] = labels["train"][8]
    images["val"][3] = _noisy(images["train"][9], 3, rng)  # near, different label
    labels["val"][3] = (labels["train"][9] + 1) % 3
    images["test"][6] = _noisy(images["train"][12], 14, rng)  # RMS ~8: above the limit
    arrays = {f"{s}_images": images[s] for s in n} | {f"{s}_labels": labels[s] for s in n}
    np.savez_compressed(path, **arrays, class_names=np.array(["x", "y", "z"]))
    return path


def _pairs(result: dict, section: str) -> set[tuple[tuple[str, int], tuple[str, int]]]:
    if section == "exact":
        groups = [g["members"] for g in result["exact_duplicates"]["groups"]]
        return {tuple((m["split"], m["index"]) for m in g) for g in groups}  # type: ignore[misc]
    return {
        ((p["a"]["split"], p["a"]["index"]), (p["b"]["split"], p["b"]["index"]))
        for p in result[section]["pairs"]
    }


def test_audit_finds_exactly_the_planted_duplicates(tmp_path: Path) -> None:
    ds = load_npz(_planted(tmp_path / "p.npz"))
    result = audit(ds)
    assert _pairs(result, "exact") == {
        (("train", 3), ("train", 10)),
        (("train", 5), ("test", 2)),
        (("train", 7), ("val", 1)),
    }
    assert _pairs(result, "near_duplicates") == {
        (("train", 8), ("test", 4)),
        (("train", 9), ("val", 3)),
    }
    for p in result["near_duplicates"]["pairs"]:
        assert 1.0 < p["rms"] < 3.0
    assert _pairs(result, "cross_label") == {
        (("train", 7), ("val", 1)),
        (("train", 9), ("val", 3)),
    }
    assert {p["kind"] for p in result["cross_label"]["pairs"]} == {"exact", "near"}
    exact = result["exact_duplicates"]
    assert (exact["within_split_groups"], exact["cross_split_groups"]) == (1, 2)
    leak = result["leakage"]
    assert leak["test_in_train"]["images"] == 2  # test 2 (exact) and test 4 (near)
    assert (leak["test_in_train"]["exact_pairs"], leak["test_in_train"]["near_pairs"]) == (1, 1)
    assert leak["val_in_train"]["images"] == 2 and leak["test_in_val"]["images"] == 0
    assert result["balance"]["train"] == {"x": 15, "y": 12, "z": 13}  # train 10: 1 -> 0
    # The RMS ~8 copy is found once the limit is raised above it, and only then.
    loose = audit(ds, near_rms=12.0)
    assert (("train", 12), ("test", 6)) in _pairs(loose, "near_duplicates")
    assert NEAR_RMS == 6.0


def test_near_search_works_at_64_px(tmp_path: Path) -> None:
    ds = load_npz(_planted(tmp_path / "p64.npz", size=64))
    result = audit(ds)
    assert len(_pairs(result, "exact")) == 3 and len(_pairs(result, "near_duplicates")) == 2


def test_audit_cli_writes_json_and_html(tmp_path: Path) -> None:
    npz = _planted(tmp_path / "p.npz")
    out = tmp_path / "aud"
    result = run_cli(["data", "audit", str(npz), "--out", str(out)], cwd=tmp_path, timeout=120)
    assert result.returncode == 0, describe(result)
    summary = json.loads(result.stdout)
    assert summary["exact_duplicate_groups"] == 3 and summary["near_duplicate_pairs"] == 2
    saved = json.loads((out / "audit.json").read_text())
    assert saved["cross_label"]["n_pairs"] == 2 and saved["class_names"] == ["x", "y", "z"]
    page = (out / "audit.html").read_text()
    # Pairs side by side: 2 conflict pairs + 3 exact pairs + 2 near pairs, two images each.
    assert page.count('<img src="data:image/png;base64,') == 2 * (2 + 3 + 2)
    assert "train #7: y (1)" in page and "val #1: z (2)" in page
    again = run_cli(["data", "audit", str(npz), "--out", str(out)], cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in error_lines(again)[-1]
    (tmp_path / "p_audit").write_text("user notes")  # the default --out, taken by a file
    again = run_cli(["data", "audit", str(npz)], cwd=tmp_path)
    assert again.returncode == 2 and error_lines(again) == [
        f"bloodmnist data: error: {tmp_path / 'p_audit'} is a file, not a folder; choose "
        "another --out"
    ]
    assert (tmp_path / "p_audit").read_text() == "user notes"
    for bad in ("nan", "inf", "-1"):  # nan found nothing and called the file clean
        refused = run_cli(["data", "audit", str(npz), "--near-rms", bad], cwd=tmp_path)
        assert refused.returncode == 2 and error_lines(refused)[-1].endswith(
            f"argument --near-rms: expects a number from 0 to 255, got '{bad}'"
        )


def test_audit_of_shared_28px_file(shared_data: Path) -> None:
    """What docs/data.md reports: 17 identical-pixel pairs, one across two classes."""
    result = audit(load_npz(shared_data))
    exact = result["exact_duplicates"]
    assert (exact["n_groups"], exact["n_pairs"], exact["cross_split_groups"]) == (17, 17, 11)
    assert result["near_duplicates"]["n_pairs"] == 0
    (conflict,) = result["cross_label"]["pairs"]
    assert {conflict["a"]["class"], conflict["b"]["class"]} == {"eosinophil", "neutrophil"}
    leak = result["leakage"]
    assert [leak[k]["images"] for k in ("val_in_train", "test_in_train", "test_in_val")] == [
        2,
        6,
        3,
    ]
    assert sum(result["balance"]["train"].values()) == 11959


def _brute_force(path: Path) -> dict:
    """The counts by enumerating every pair of images (what the audit did before it grouped
    copies): exact and near member pairs, pairs with different labels, leaked images."""
    ds = load_npz(path)
    rows = [(s, i, int(lab), ds.split(s).images[i].astype(float)) for s in ("train", "val", "test")
            for i, lab in enumerate(ds.split(s).labels)]  # fmt: skip
    exact = near = conflicts = 0
    leaked: dict[str, set] = {"val_in_train": set(), "test_in_train": set(), "test_in_val": set()}
    crossing = {(key, kind): 0 for key in leaked for kind in ("exact", "near")}
    for k, (sa, ia, la, xa) in enumerate(rows):
        for sb, ib, lb, xb in rows[k + 1 :]:
            rms = float(np.sqrt(np.mean((xa - xb) ** 2)))
            if rms > NEAR_RMS:
                continue
            exact, near = exact + (rms == 0), near + (rms > 0)
            conflicts += la != lb
            for early, late in (("train", "val"), ("train", "test"), ("val", "test")):
                if {sa, sb} == {early, late}:
                    leaked[f"{late}_in_{early}"].add(ia if sa == late else ib)
                    crossing[(f"{late}_in_{early}", "near" if rms else "exact")] += 1
    return {
        "exact": exact, "near": near, "conflicts": conflicts, "leaked": leaked,
        "crossing": crossing,
    }  # fmt: skip


def test_many_copies_are_counted_exactly_and_listed_once(tmp_path: Path) -> None:
    """Hundreds of copies of two nearly identical images (blank tiles, say): the audit groups
    the copies (it listed every member pair: 10 M for 4,500 copies) and its counts equal a
    brute-force count over all pairs."""
    rng = np.random.default_rng(1)
    blank = np.full((28, 28, 3), 200, np.uint8)
    other = blank.copy()
    other[:4] += 3  # RMS ~1.1 from blank: a near pair
    parts = {  # split -> [(image, label, copies)]
        "train": [(blank, 0, 40), (other, 1, 25)],
        "val": [(blank, 1, 6)],
        "test": [(other, 1, 4), (blank, 0, 3)],
    }
    arrays = {}
    for split, items in parts.items():
        imgs = [img for img, _, n in items for _ in range(n)]
        labs = [lab for _, lab, n in items for _ in range(n)]
        imgs += list(rng.integers(0, 256, (5, 28, 28, 3), dtype=np.uint8))  # distinct others
        labs += [2] * 5
        arrays[f"{split}_images"] = np.stack(imgs)
        arrays[f"{split}_labels"] = np.array(labs, np.uint8)[:, None]
    path = tmp_path / "copies.npz"
    np.savez(path, **arrays, class_names=np.array(["a", "b", "c"]))
    result = audit(load_npz(path))
    want = _brute_force(path)
    assert result["exact_duplicates"]["n_groups"] == 2
    assert result["exact_duplicates"]["n_pairs"] == want["exact"]
    near = result["near_duplicates"]["pairs"]
    assert len(near) == 1 and sorted(near[0]["copies"]) == [29, 49]
    assert result["near_duplicates"]["n_pairs"] == want["near"] == 29 * 49
    assert result["cross_label"]["n_pairs"] == want["conflicts"]
    assert len(result["cross_label"]["pairs"]) <= 3  # one per relation and pair of labels
    for key, images in want["leaked"].items():
        assert result["leakage"][key]["images"] == len(images), key
        for kind in ("exact", "near"):
            assert result["leakage"][key][f"{kind}_pairs"] == want["crossing"][(key, kind)]
