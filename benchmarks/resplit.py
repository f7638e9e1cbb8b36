"""Another split of the same images: does a recipe chosen on one split hold on another?

    python benchmarks/resplit.py ../shared/data/bloodmnist_pbc_28.npz DIR/resplit1_28.npz --seed 1

Pools a MedMNIST-layout npz's train, val and test images and draws them again, per class, into
splits of the source's own per-class sizes (for the shared file, MedMNIST's rule: train
floor(0.7 n), val floor(0.8 n) - floor(0.7 n), test the rest), with a seeded permutation. Same
sizes, class counts and images; other membership. The issue (#13) checks recipes on a second
split we do not have; this makes such splits from the file we do, for runs whose choices were
made on the first. It never overwrites a file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


def resplit(src: dict[str, np.ndarray], seed: int) -> tuple[dict[str, np.ndarray], int]:
    """The source's images drawn again into splits with the source's per-class counts, and how
    many of them now sit in another split than before."""
    images = np.concatenate([src[f"{s}_images"] for s in SPLITS])
    labels = np.concatenate([src[f"{s}_labels"] for s in SPLITS])
    origin = np.concatenate([np.full(len(src[f"{s}_labels"]), i) for i, s in enumerate(SPLITS)])
    rng = np.random.default_rng(seed)
    picked: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels[:, 0] == c))
        start = 0
        for s in SPLITS:
            n = int((src[f"{s}_labels"][:, 0] == c).sum())
            picked[s].append(rows[start : start + n])
            start += n
    out, moved = {}, 0
    for i, s in enumerate(SPLITS):
        rows = rng.permutation(np.concatenate(picked[s]))  # classes interleaved, as in the source
        out[f"{s}_images"], out[f"{s}_labels"] = images[rows], labels[rows]
        moved += int((origin[rows] != i).sum())
    return out, moved


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.out.exists():
        print(f"error: {args.out} exists; choose a new file name", file=sys.stderr)
        return 2
    if not args.src.is_file():
        print(f"error: {args.src} not found; pass a MedMNIST-layout .npz", file=sys.stderr)
        return 2
    with np.load(args.src) as f:
        src = {k: f[k] for k in f.files}
    out, moved = resplit(src, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    total = sum(len(out[f"{s}_labels"]) for s in SPLITS)
    print(f"{args.out}: {total} images, {moved} in another split than in {args.src.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
