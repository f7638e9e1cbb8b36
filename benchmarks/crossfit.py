"""Cross-fitted soft labels: every training image's teacher answer from a model that never saw it.

    python benchmarks/crossfit.py folds ../shared/data/bloodmnist_pbc_64.npz DIR --folds 2
    bloodmnist train --recipe fast --data DIR/fold-1.npz --out DIR/teacher-1   # one per fold
    bloodmnist train --recipe fast --data DIR/fold-2.npz --out DIR/teacher-2
    python benchmarks/crossfit.py assemble DIR DIR/teacher-1 DIR/teacher-2 --out soft64.npz
    bloodmnist train --recipe fast --data ../shared/data/bloodmnist_pbc_28.npz \
        --set train.teacher=soft64.npz --set train.distill_temperature=1

`folds` deals the source's training split into K class-stratified folds and writes one file per
fold: train = the other folds, val = the source's val, test = this fold (the held-out training
images, in their original order). A teacher trained on fold-k.npz therefore "tests" on images it
never trained on, and its run's predictions.npz holds their probabilities. `assemble` puts the
K held-out answers back into training-split order, calibrates each with its run's validation
temperature (fitted on the real val split), and writes a soft-label file for `train.teacher`
(training/soft_labels.py) with every split's labels, which the student checks row for row.

The source may be another file of the same images and split, e.g. the 64-px file for a 28-px
student: a teacher that sees more pixels teaches a model that ships at 28 px. No teacher ever
trains on a val or test image of the source. Neither command overwrites a file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
KINDS = ("images", "labels")
ARRAY_KEYS = tuple(f"{s}_{k}" for s in SPLITS for k in KINDS)
CLASS_NAMES = "class_names"  # stored by `bloodmnist data build`; carried into the fold files
FOLDS_FILE = "folds.npz"


def deal(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number (1..k) of every training row: per class a seeded shuffle cut into k runs of
    near-equal length (the earlier folds the shorter by at most one row)."""
    fold = np.zeros(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        cuts = [len(rows) * j // k for j in range(k + 1)]
        for j in range(k):
            fold[rows[cuts[j] : cuts[j + 1]]] = j + 1
    return fold


def fold_file(src: dict[str, np.ndarray], fold: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Train on the other folds, validate on the source's val, test on fold k (class names, when
    the source stores them, kept)."""
    keep, held = fold != k, fold == k
    out = {
        "train_images": src["train_images"][keep],
        "train_labels": src["train_labels"][keep],
        "val_images": src["val_images"],
        "val_labels": src["val_labels"],
        "test_images": src["train_images"][held],
        "test_labels": src["train_labels"][held],
    }
    return {**out, **{k: v for k, v in src.items() if k == CLASS_NAMES}}


def _source(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        missing = [f"{s}_{k}" for s in SPLITS for k in KINDS if f"{s}_{k}" not in f.files]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}; pass a MedMNIST-layout .npz")
        return {k: f[k] for k in f.files if k in (*ARRAY_KEYS, CLASS_NAMES)}


def folds(args: argparse.Namespace) -> int:
    out: Path = args.dir
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        return _error(f"{out} exists and is not an empty folder; choose a new folder")
    if not args.src.is_file():
        return _error(f"{args.src} not found; pass a MedMNIST-layout .npz")
    if args.folds < 2:
        return _error(f"--folds must be >= 2, got {args.folds}")
    try:
        src = _source(args.src)
    except (OSError, ValueError) as exc:
        return _error(str(exc).splitlines()[0])
    fold = deal(src["train_labels"].reshape(-1), args.folds, args.seed)
    out.mkdir(parents=True, exist_ok=True)
    labels = {f"{s}_labels": src[f"{s}_labels"].reshape(-1) for s in SPLITS}
    np.savez(out / FOLDS_FILE, fold=fold, source=str(args.src.resolve()), **labels)
    for k in range(1, args.folds + 1):
        np.savez_compressed(out / f"fold-{k}.npz", **fold_file(src, fold, k))
        held = int((fold == k).sum())
        print(f"{out / f'fold-{k}.npz'}: train {len(fold) - held}, held out {held}")
    return 0


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def held_out_logp(run: Path, fold_npz: Path, labels: np.ndarray) -> tuple[np.ndarray, dict]:
    """A teacher run's log-probabilities on its held-out rows (TTA when it ran TTA), calibrated
    with its validation temperature (none fitted: as they are), and what it was."""
    summary = json.loads((run / "summary.json").read_text())
    if summary.get("data_md5") != _md5(fold_npz):
        raise ValueError(f"{run} was not trained on {fold_npz} (its data MD5 differs)")
    tta = summary.get("test_acc_tta") is not None  # predictions.npz: plain probs under TTA's key
    t = summary.get("temperature_tta" if tta else "temperature")
    with np.load(run / "predictions.npz") as z:
        probs, seen = (
            z["test_probs_tta" if tta else "test_probs"].astype(np.float64),
            z["test_labels"],
        )
    if not np.array_equal(seen, labels):
        raise ValueError(f"{run} was not tested on this fold's held-out images")
    logp = np.log(np.clip(probs, 1e-12, None)) / (t or 1.0)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    acc = float((probs.argmax(1) == labels).mean())
    return logp, {
        "run": str(run),
        "held_out": len(labels),
        "held_out_acc": acc,
        "tta": tta,
        "temperature": t,
        "train_pflop": summary.get("train_pflop"),
    }


def assemble(args: argparse.Namespace) -> int:
    if args.out.suffix != ".npz":  # np.savez would add .npz and could replace another file
        return _error(f"--out {args.out} must end in .npz (train.teacher recognises it by that)")
    if args.out.exists():
        return _error(f"{args.out} exists; choose a new file name")
    with np.load(args.dir / FOLDS_FILE) as z:
        fold, labels = z["fold"], {f"{s}_labels": z[f"{s}_labels"] for s in SPLITS}
    k = int(fold.max())
    if len(args.runs) != k:
        return _error(f"{args.dir} has {k} folds; pass {k} teacher runs, fold 1 first")
    parts, teachers = [], []
    for i, run in enumerate(args.runs, start=1):
        try:
            held = labels["train_labels"][fold == i]
            part, info = held_out_logp(run, args.dir / f"fold-{i}.npz", held)
        except (OSError, ValueError, KeyError) as exc:
            return _error(f"fold {i}: {str(exc).splitlines()[0]}")
        parts.append(part)
        teachers.append(info)
    logp = np.zeros((len(fold), parts[0].shape[1]), dtype=np.float64)
    for i, part in enumerate(parts, start=1):
        logp[fold == i] = part
    acc = float((logp.argmax(1) == labels["train_labels"]).mean())
    meta = {"folds": k, "teachers": teachers, "held_out_acc": acc}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, soft_logp=logp.astype(np.float32), meta=json.dumps(meta), **labels)
    print(json.dumps({"out": str(args.out), **meta}, indent=2))
    return 0


def _error(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("folds", help="write one training file per fold")
    f.add_argument("src", type=Path)
    f.add_argument("dir", type=Path)
    f.add_argument("--folds", type=int, default=2)
    f.add_argument("--seed", type=int, default=0)
    a = sub.add_parser("assemble", help="held-out answers of the fold teachers -> soft labels")
    a.add_argument("dir", type=Path)
    a.add_argument("runs", type=Path, nargs="+")
    a.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    return folds(args) if args.cmd == "folds" else assemble(args)


if __name__ == "__main__":
    sys.exit(main())
