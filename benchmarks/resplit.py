"""Another split of the same images: does a recipe chosen on one split hold on another?

    python benchmarks/resplit.py ../shared/data/bloodmnist_pbc_28.npz DIR/resplit1_28.npz --seed 1
    python benchmarks/resplit.py ../shared/data/bloodmnist_pbc_28.npz DIR/fold1_28.npz --seed 1 \
        --keep-test
    python benchmarks/resplit.py ../shared/data/bloodmnist_pbc_28.npz DIR/less_28.npz --seed 1 \
        --train-keep 10247

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
without ever looking at the test split.

With --train-keep N nothing is drawn again: val and test are copied as they are and N training
images are kept, per class in proportion to the class's share of train. Such files give a
learning curve on the validation split, e.g. what 1,712 more training images (as many as val)
are worth before training on train + val. It never overwrites a file.
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
    return _with_extras(out, src), moved


def fewer_train(src: dict[str, np.ndarray], keep: int, seed: int) -> dict[str, np.ndarray]:
    """`keep` of the source's training images (per class in proportion, largest remainders
    first; order kept), val and test as they are."""
    labels = src["train_labels"][:, 0]
    if not 0 < keep <= len(labels):
        raise ValueError(f"--train-keep must be in 1..{len(labels)}, got {keep}")
    counts = np.bincount(labels)
    share = counts * keep / len(labels)
    take = np.floor(share).astype(int)
    for c in np.argsort(-(share - take), kind="stable")[: keep - int(take.sum())]:
        take[c] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == c), n, replace=False) for c, n in enumerate(take)]
    rows = np.sort(np.concatenate(picked))
    out = dict(src)
    out["train_images"], out["train_labels"] = src["train_images"][rows], src["train_labels"][rows]
    return _with_extras(out, src)


def _with_extras(out: dict[str, np.ndarray], src: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The six split arrays of `out`, then what in `src` is not a split (the class_names of a
    `bloodmnist data build` file) as it is."""
    arrays = {f"{s}_{k}": out[f"{s}_{k}"] for s in SPLITS for k in ("images", "labels")}
    prefixes = tuple(f"{s}_" for s in SPLITS)
    return arrays | {k: v for k, v in src.items() if not k.startswith(prefixes)}


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
    ap.add_argument(
        "--train-keep",
        type=int,
        metavar="N",
        help="draw nothing again: keep N training images (per class in proportion), val and test"
        " as they are (a learning curve)",
    )
    args = ap.parse_args()
    if args.train_keep is not None and args.keep_test:
        print("error: --train-keep keeps val and test already; drop --keep-test", file=sys.stderr)
        return 2
    if args.out.exists():
        print(f"error: {args.out} exists; choose a new file name", file=sys.stderr)
        return 2
    if not args.src.is_file():
        print(f"error: {args.src} not found; pass a MedMNIST-layout .npz", file=sys.stderr)
        return 2
    with np.load(args.src) as f:
        src = {k: f[k] for k in f.files}
    if args.train_keep is not None:
        try:
            out = fewer_train(src, args.train_keep, args.seed)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        done = f"{args.train_keep} of {len(src['train_labels'])} training images, val and test as"
    else:
        out, moved = resplit(src, args.seed, keep_test=args.keep_test)
        done = f"{moved} in another split than"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    total = sum(len(out[f"{s}_labels"]) for s in SPLITS)
    print(f"{args.out}: {total} images, {done} in {args.src.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
