"""`bloodmnist data audit`: class balance, exact and near duplicates, label conflicts, leakage.

- Exact duplicates: images with identical pixels, found by hashing each image's bytes (BLAKE2b)
  and grouping equal digests.
- Near duplicates: pairs that are not identical but whose RMS pixel difference (0-255 scale,
  over all pixels and channels) is at most `near_rms` (default 6.0). All pairs are searched, with
  no misses: a block-mean thumbnail (7x7 or 8x8 blocks) cannot be farther apart than the full
  images (Jensen), so thumbnails within the threshold are the only candidates, and each
  candidate is then measured at full resolution. On bloodmnist_pbc_28.npz the closest distinct
  pairs lie at 8.5 and 8.9 (docs/data.md), so 6.0 separates re-encoded or lightly edited copies
  from merely similar cells.
- Cross-label: a duplicate (exact or near) whose members carry different labels.
- Leakage: how many val/test images have a duplicate in train (and test in val).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bloodmnist.data.npz import SPLITS, Dataset, default_names

NEAR_RMS = 6.0
_CHUNK = 1024  # rows of the thumbnail distance matrix at a time (1024 x N float32)


@dataclass(frozen=True)
class Ref:
    """One image: its split, row index and label."""

    split: str
    index: int
    label: int


def _refs(ds: Dataset) -> tuple[np.ndarray, list[Ref]]:
    images = np.concatenate([ds.split(s).images for s in SPLITS])
    refs = [Ref(s, i, int(lab)) for s in SPLITS for i, lab in enumerate(ds.split(s).labels)]
    return images, refs


def exact_groups(images: np.ndarray) -> list[list[int]]:
    """Groups (sorted row lists) of two or more images with identical pixels."""
    by_hash: dict[bytes, list[int]] = defaultdict(list)
    for i, img in enumerate(images):
        by_hash[hashlib.blake2b(img.tobytes(), digest_size=16).digest()].append(i)
    return sorted((g for g in by_hash.values() if len(g) > 1), key=lambda g: g[0])


def _grid(size: int) -> int:
    """Blocks per side: 7 for 28/224 px, 8 for 64/128 px (block means over exact partitions)."""
    for g in (7, 8):
        if size % g == 0:
            return g
    return 1


def _thumbnails(images: np.ndarray) -> np.ndarray:
    n, size = images.shape[0], images.shape[1]
    g = _grid(size)
    b = size // g
    x = images[:, : g * b, : g * b].astype(np.float32)
    return x.reshape(n, g, b, g, b, 3).mean(axis=(2, 4)).reshape(n, -1)


def near_pairs(images: np.ndarray, near_rms: float = NEAR_RMS) -> list[tuple[int, int, float]]:
    """(i, j, rms) for i < j with 0 < RMS difference <= near_rms, closest first."""
    thumbs = _thumbnails(images)
    dims = thumbs.shape[1]
    sq = (thumbs**2).sum(axis=1)
    limit = near_rms**2 * dims * (1 + 1e-4) + 1e-3  # float32 rounding must not drop a pair
    found = []
    for start in range(0, len(thumbs), _CHUNK):
        block = thumbs[start : start + _CHUNK]
        d2 = sq[start : start + len(block), None] + sq[None, :] - 2 * block @ thumbs.T
        rows, cols = np.nonzero(d2 <= limit)
        keep = cols > rows + start  # each pair once, no self-pairs
        for i, j in zip(rows[keep] + start, cols[keep], strict=True):
            diff = images[i].astype(np.float32) - images[j].astype(np.float32)
            rms = float(np.sqrt(np.mean(diff**2)))
            if 0 < rms <= near_rms:
                found.append((int(i), int(j), round(rms, 3)))
    return sorted(found, key=lambda t: (t[2], t[0], t[1]))


def _ref_dict(r: Ref, names: tuple[str, ...]) -> dict:
    return {"split": r.split, "index": r.index, "label": r.label, "class": names[r.label]}


#: A duplicate relation between two sets of identical images (one set twice: an exact group;
#: two sets: a near pair of distinct contents) and its kind. Counting member pairs from the sets
#: keeps the audit linear in the copies: 4,500 copies of two blank images made 10 M pairs.
Relation = tuple[list[Ref], list[Ref], str]


def _member_pairs(a: list[Ref], b: list[Ref], same: bool, keep: Callable[[Ref], int | None]) -> int:
    """How many member pairs (x in a, y in b; unordered, x != y when a is b) have keys that
    differ, neither None (keep: a label, or a split's side)."""
    counts_a = Counter(keep(x) for x in a)
    counts_b = counts_a if same else Counter(keep(y) for y in b)
    total = 0
    for ka, na in counts_a.items():
        for kb, nb in counts_b.items():
            total += na * nb if ka is not None and kb is not None and ka != kb else 0
    return total // 2 if same else total


def _leakage(relations: list[Relation], ds: Dataset) -> dict:
    """Per split pair: how many images of the later split have a duplicate in the earlier one."""
    out = {}
    for early, late in (("train", "val"), ("train", "test"), ("val", "test")):
        hit: set[int] = set()
        pairs = {"exact": 0, "near": 0}
        side = {early: 0, late: 1}
        for a, b, kind in relations:
            for x, y in ((a, b), (b, a)) if a is not b else ((a, a),):
                if any(r.split == early for r in x):
                    hit |= {r.index for r in y if r.split == late}
            pairs[kind] += _member_pairs(a, b, a is b, lambda r, side=side: side.get(r.split))
        n = len(ds.split(late))
        out[f"{late}_in_{early}"] = {
            "images": len(hit),
            "of": n,
            "fraction": round(len(hit) / n, 6),
            "exact_pairs": pairs["exact"],
            "near_pairs": pairs["near"],
        }
    return out


def _conflicts(relations: list[Relation], names: tuple[str, ...]) -> tuple[list[dict], int]:
    """One listed pair per duplicate relation and pair of labels in it (the first member with
    each label), and the number of member pairs whose labels differ."""
    listed, total = [], 0
    for a, b, kind in relations:
        total += _member_pairs(a, b, a is b, lambda r: r.label)
        first_a = {r.label: r for r in reversed(a)}
        first_b = first_a if a is b else {r.label: r for r in reversed(b)}
        for la, ra in sorted(first_a.items()):
            for lb, rb in sorted(first_b.items()):
                if la != lb and (a is not b or la < lb):
                    listed.append(
                        {"kind": kind, "a": _ref_dict(ra, names), "b": _ref_dict(rb, names)}
                    )
    return listed, total


def audit(ds: Dataset, near_rms: float = NEAR_RMS) -> dict:
    """The audit as a JSON-ready dict (pairs name split, index, label and class of both images).
    The near search runs on distinct images (one per exact group); a near pair of images that
    have copies names the first of each and `copies` says how many each stands for."""
    names = ds.class_names or default_names(ds.num_classes)
    images, refs = _refs(ds)
    groups = exact_groups(images)
    members = {g[0]: [refs[i] for i in g] for g in groups}  # content (its first row) -> copies
    copies = {i for g in groups for i in g[1:]}
    distinct = np.array([i for i in range(len(refs)) if i not in copies], dtype=np.intp)
    relations: list[Relation] = [(m, m, "exact") for m in members.values()]
    exact = [
        {
            "members": [_ref_dict(m, names) for m in ms],
            "cross_split": len({m.split for m in ms}) > 1,
            "cross_label": len({m.label for m in ms}) > 1,
        }
        for ms in members.values()
    ]
    near = []
    for u, v, rms in near_pairs(images[distinct] if copies else images, near_rms):
        i, j = int(distinct[u]), int(distinct[v])
        ma, mb = members.get(i, [refs[i]]), members.get(j, [refs[j]])
        relations.append((ma, mb, "near"))
        near.append(
            {
                "a": _ref_dict(refs[i], names),
                "b": _ref_dict(refs[j], names),
                "rms": rms,
                "copies": [len(ma), len(mb)],
                "cross_split": len({r.split for r in ma + mb}) > 1,
                "cross_label": len({r.label for r in ma + mb}) > 1,
            }
        )
    conflicts, n_conflicts = _conflicts(relations, names)
    return {
        "path": str(ds.path),
        "image_size": ds.image_size,
        "class_names": list(names),
        "method": {
            "exact": "identical pixels (BLAKE2b digest of each image's bytes)",
            "near": f"0 < RMS pixel difference <= {near_rms} on 0-255, all pairs searched",
            "near_rms": near_rms,
        },
        "balance": {
            s: {n: int(c) for n, c in zip(names, _counts(ds, s), strict=True)} for s in SPLITS
        },
        "exact_duplicates": {
            "groups": exact,
            "n_groups": len(exact),
            "n_pairs": sum(len(m) * (len(m) - 1) // 2 for m in members.values()),
            "within_split_groups": sum(1 for e in exact if not e["cross_split"]),
            "cross_split_groups": sum(1 for e in exact if e["cross_split"]),
        },
        "near_duplicates": {
            "pairs": near,  # one per pair of distinct images
            "n_pairs": sum(a * b for a, b in (p["copies"] for p in near)),  # image pairs
        },
        "cross_label": {"pairs": conflicts, "n_pairs": n_conflicts},
        "leakage": _leakage(relations, ds),
    }


def _counts(ds: Dataset, split: str) -> np.ndarray:
    return np.bincount(ds.split(split).labels, minlength=ds.num_classes)
