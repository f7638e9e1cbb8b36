"""`bloodmnist data build`: turn a folder of class folders (or a CSV) into a MedMNIST-layout npz.

Every image goes through `data.imageprep.load_image`, the function `predict` uses for served
images, so training data and served images are made by the same code. The output holds the six
MedMNIST keys (uint8 images (N,S,S,3), uint8 labels (N,1)) plus `class_names`; a provenance CSV
beside it lists split, index, source path, label and the source file's sha256 for every row.
Nothing in SRC is written; an existing OUT is refused, never overwritten.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bloodmnist.atomic import atomic_open, write_text_atomic
from bloodmnist.data.build_sources import (
    DEFAULT_FRACTIONS,
    SPLITS,
    Source,
    assign_splits,
    check_class_names,
    from_csv,
    from_folder,
)
from bloodmnist.data.imageprep import ImageReadError, load_image
from bloodmnist.errors import DataError

log = logging.getLogger("bloodmnist")

SIZES = (28, 64, 128, 224)
BUILD_METHODS = ("medmnist", "resize")


@dataclass
class BuildResult:
    out: Path
    provenance: Path
    class_names: list[str]
    counts: dict[str, dict[str, int]]  # split -> class name -> rows
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def as_dict(self) -> dict:
        return {
            "out": str(self.out),
            "provenance": str(self.provenance),
            "class_names": self.class_names,
            "splits": {s: {"n": sum(c.values()), "per_class": c} for s, c in self.counts.items()},
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


def provenance_path(out: Path) -> Path:
    """OUT.npz -> OUT_provenance.csv (the shared bloodmnist_pbc_28 files use the same rule)."""
    return out.with_name(f"{out.stem}_provenance.csv")


@dataclass
class _Loaded:
    source: Source
    pixels: np.ndarray | None
    sha256: str
    error: str | None


def _load_one(source: Source, size: int, method: str) -> _Loaded:
    try:
        data = source.path.read_bytes()
    except OSError as exc:
        return _Loaded(source, None, "", f"cannot read ({exc.strerror or exc})")
    digest = hashlib.sha256(data).hexdigest()
    try:
        pixels = load_image(source.path, size, method).pixels
    except ImageReadError as exc:
        return _Loaded(source, None, digest, str(exc))
    return _Loaded(source, pixels, digest, None)


def _check_paths(src: Path, out: Path, size: int, method: str) -> None:
    if size not in SIZES:
        raise DataError(f"--size {size} is not supported; choose one of {SIZES}")
    if method not in BUILD_METHODS:
        raise DataError(f"--preprocess {method!r}: choose one of {', '.join(BUILD_METHODS)}")
    if not src.exists():
        raise DataError(f"SRC {src} does not exist; pass a folder of class folders or a CSV")
    if out.suffix != ".npz":
        raise DataError(f"OUT {out} must end in .npz")
    for target in (out, provenance_path(out)):
        if target.exists():
            raise DataError(f"{target} already exists; choose another OUT or delete it first")
    if src.is_dir() and out.resolve().is_relative_to(src.resolve()):
        raise DataError(f"OUT {out} lies inside SRC {src}; SRC is never written to")
    if not out.parent.is_dir():
        raise DataError(f"folder {out.parent} does not exist; create it first")


def build_dataset(
    src: str | Path,
    out: str | Path,
    size: int = 28,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    labels: list[str] | None = None,
    strict: bool = False,
    method: str = "medmnist",
    threads: int = 0,
) -> BuildResult:
    """Read, preprocess, split and write; returns what was written and what was skipped."""
    src, out = Path(src).expanduser(), Path(out).expanduser()
    _check_paths(src, out, size, method)
    sources, names = from_folder(src, labels) if src.is_dir() else from_csv(src, labels)
    check_class_names(src, names)
    workers = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow decodes without the GIL
        loaded = list(pool.map(lambda s: _load_one(s, size, method), sources))
    skipped = [(str(x.source.path), x.error) for x in loaded if x.error is not None]
    if skipped and strict:
        path, reason = skipped[0]
        raise DataError(
            f"{len(skipped)} file(s) cannot be used (first: {path}: {reason}); fix or remove "
            "them, or build without --strict to skip them"
        )
    for path, reason in skipped:
        log.warning("skipped %s: %s", path, reason)
    good = {id(x.source): x for x in loaded if x.error is None}
    empty = [n for i, n in enumerate(names) if not any(x.source.label == i for x in good.values())]
    if empty:
        raise DataError(f"no readable image for class(es) {empty}; add images or fix the files")
    splits = assign_splits([x.source for x in good.values()], fractions, seed)
    arrays: dict[str, np.ndarray] = {}
    counts: dict[str, dict[str, int]] = {}
    rows = []
    for name in SPLITS:
        items = [good[id(s)] for s in splits[name]]
        arrays[f"{name}_images"] = np.stack([x.pixels for x in items]).astype(np.uint8)
        labels_arr = np.array([[x.source.label] for x in items], dtype=np.uint8)
        arrays[f"{name}_labels"] = labels_arr
        binc = np.bincount(labels_arr[:, 0], minlength=len(names))
        counts[name] = {n: int(c) for n, c in zip(names, binc, strict=True)}
        rows.extend(
            (name, i, _shown(x.source.path, src), x.source.label, names[x.source.label], x.sha256)
            for i, x in enumerate(items)
        )
    arrays["class_names"] = np.array(names, dtype=str)
    _warn_about_splits(rows, counts, out)
    prov = provenance_path(out)
    _write_new(out, prov, arrays, _provenance_text(rows))
    return BuildResult(out, prov, list(names), counts, skipped)


def _warn_about_splits(rows: list[tuple], counts: dict[str, dict[str, int]], out: Path) -> None:
    """What the seeded split cannot fix but the user can: a class without training (or
    validation) images, and identical files on both sides of a split (scores inflated)."""
    for split in ("train", "val"):
        empty = [n for n, c in counts[split].items() if c == 0]
        if empty:
            log.warning(
                "%s has no %s image of class(es) %s (too few images of them); add images",
                out,
                split,
                empty,
            )
    splits_of: dict[str, set[str]] = {}
    first: dict[str, str] = {}
    for split, _, path, *_rest, digest in rows:
        splits_of.setdefault(digest, set()).add(split)
        first.setdefault(digest, path)
    shared = [d for d, s in splits_of.items() if len(s) > 1]
    if shared:
        log.warning(
            "%d file(s) are byte-identical to a file in another split (e.g. %s): those scores "
            "count images the model trained on; remove the copies (bloodmnist data audit %s "
            "lists them)",
            len(shared),
            first[shared[0]],
            out,
        )


def _write_new(out: Path, prov: Path, arrays: dict[str, np.ndarray], provenance: str) -> None:
    """Write OUT and its provenance, never over a file: either may have been created by another
    process since `_check_paths` looked (the build takes minutes)."""
    try:
        with atomic_open(out, exclusive=True) as fh:
            np.savez_compressed(fh, **arrays)
        try:
            write_text_atomic(prov, provenance, exclusive=True)
        except FileExistsError:
            out.unlink()  # the npz this call has just written: no data without its provenance
            raise
    except FileExistsError as exc:
        raise DataError(f"{exc} (made while the dataset was built); choose another OUT") from None


def _shown(path: Path, src: Path) -> str:
    """Source path as the provenance records it: relative to a SRC folder, else as listed."""
    if src.is_dir():
        try:
            return path.relative_to(src).as_posix()
        except ValueError:
            pass
    return str(path)


def _provenance_text(rows: list[tuple]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["split", "index", "source_path", "label", "class_name", "sha256"])
    writer.writerows(rows)
    return buf.getvalue()
