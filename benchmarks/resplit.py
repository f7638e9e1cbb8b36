"""Another split of the same images: does a recipe chosen on one split hold on another?

    python benchmarks/resplit.py ../shared/data/bloodmnist_pbc_28.npz DIR/resplit1_28.npz --seed 1
    python benchmarks/resplit.py ../shared/data/bloodmnist_pbc_28.npz DIR/fold1_28.npz --seed 1 \
        --keep-test

Pools a MedMNIST-layout npz's train, val and test images and draws them again, per class, into
splits of the source's own per-class sizes (for the shared file, MedMNIST's rule: train
floor(0.7 n), val floor(0.8 n) - floor(0.7 n), test the rest), with a seeded permutation. Same
sizes, class counts and images; other membership. The issue (#13) checks recipes on a second
split we do not have; this makes such splits from the file we do, for runs whose choices were
made on the first.

With --keep-test only train and val are pooled and drawn again; the test split is copied as it
is, so no test image reaches a model's training or validation. Such files are for *choosing*:
1,712 validation images resolve about 5 images between settings, and the same choice judged on
several draws of train/val (the shared file plus --keep-test files) is judged on more images
without ever looking at the test split. It never overwrites a file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


def resplit(
    src: dict[str, np.ndarray], seed: int, keep_test: bool = False
) -> tuple[dict[str, np.ndarray], int]:
    """The source's images drawn again into splits with the source's per-class counts, and how
    many of them now sit in another split than before (`keep_test`: test copied as it is)."""
    pooled = SPLITS[:2] if keep_test else SPLITS
    images = np.concatenate([src[f"{s}_images"] for s in pooled])
    labels = np.concatenate([src[f"{s}_labels"] for s in pooled])
    origin = np.concatenate([np.full(len(src[f"{s}_labels"]), i) for i, s in enumerate(pooled)])
    rng = np.random.default_rng(seed)
    picked: dict[str, list[np.ndarray]] = {s: [] for s in pooled}
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels[:, 0] == c))
        start = 0
        for s in pooled:
            n = int((src[f"{s}_labels"][:, 0] == c).sum())
            picked[s].append(rows[start : start + n])
            start += n
    out, moved = {}, 0
    if keep_test:
        out["test_images"], out["test_labels"] = src["test_images"], src["test_labels"]
    for i, s in enumerate(pooled):
        rows = rng.permutation(np.concatenate(picked[s]))  # classes interleaved, as in the source
        out[f"{s}_images"], out[f"{s}_labels"] = images[rows], labels[rows]
        moved += int((origin[rows] != i).sum())
    return {f"{s}_{k}": out[f"{s}_{k}"] for s in SPLITS for k in ("images", "labels")}, moved


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--keep-test",
        action="store_true",
        help="draw only train and val again; copy the test split unchanged (files for choosing)",
    )
    args = ap.parse_args()
    if args.out.exists():
        print(f"error: {args.out} exists; choose a new file name", file=sys.stderr)
        return 2
    if not args.src.is_file():
        print(f"error: {args.src} not found; pass a MedMNIST-layout .npz", file=sys.stderr)
        return 2
    with np.load(args.src) as f:
        src = {k: f[k] for k in f.files}
    out, moved = resplit(src, args.seed, keep_test=args.keep_test)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    total = sum(len(out[f"{s}_labels"]) for s in SPLITS)
    print(f"{args.out}: {total} images, {moved} in another split than in {args.src.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
