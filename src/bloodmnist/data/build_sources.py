"""Where `bloodmnist data build` finds its images: a folder of class folders or a CSV, and how the
files are split into train/val/test (stratified per class, seeded; a CSV split column wins)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bloodmnist.errors import DataError

SPLITS = ("train", "val", "test")
#: BloodMNIST's split: per class train = floor(0.7 n), val = floor(0.8 n) - train, test = rest.
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


@dataclass
class Source:
    """One input file, its class index and (from a CSV split column) its split, if fixed."""

    path: Path
    label: int
    split: str | None = None


def parse_fractions(text: str) -> tuple[float, float, float]:
    """'0.7,0.1,0.2' -> (0.7, 0.1, 0.2); three non-negative numbers summing to 1."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 0 or not math.isclose(sum(parts), 1.0, abs_tol=1e-6):
        raise DataError(
            f"--split expects three fractions train,val,test summing to 1, got {text!r}"
        )
    return parts  # type: ignore[return-value]


def parse_labels(text: str | None) -> list[str] | None:
    """'a,b,c' -> ['a','b','c'] (the class order: label 0 is 'a'); names must be unique."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")]
    if any(not n for n in names) or len(set(names)) != len(names) or len(names) < 2:
        raise DataError(f"--labels expects two or more unique comma-separated names, got {text!r}")
    return names


def _visible_files(folder: Path) -> list[Path]:
    # Hidden files (.DS_Store, "._x.jpg" resource forks) are never images; everything else is
    # tried, so that a non-image file is reported rather than silently ignored.
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


#: A first row whose label cell is one of these is a header, not an image.
HEADERS = ("label", "labels", "class", "class_name", "category")


def check_class_names(src: Path, names: list[str]) -> None:
    """The classes a built file can hold (what loading it accepts): two or more, each named, at
    most 256 (labels are uint8, as in MedMNIST's files)."""
    if len(names) < 2:
        raise DataError(f"{src}: only class {names}; a classifier needs two or more classes")
    if any(not n.strip() for n in names):
        raise DataError(f"{src}: a class has an empty name (a row without a label?); name it")
    if len(names) > 256:
        raise DataError(f"{src}: {len(names)} classes; a built file holds at most 256")


def from_folder(src: Path, labels: list[str] | None) -> tuple[list[Source], list[str]]:
    """One sub-folder per class; class order is --labels, else the sorted folder names (as
    numbers when all are whole numbers)."""
    folders = _class_order({p.name for p in src.iterdir() if p.is_dir() and p.name[0] != "."})
    if not folders:
        raise DataError(f"{src} has no class sub-folders; expect SRC/<class name>/<images>")
    names = labels or folders
    missing = [n for n in names if n not in folders]
    extra = [n for n in folders if n not in names]
    if missing or extra:
        what = f"no folder for {missing}" if missing else f"folders {extra} not in --labels"
        raise DataError(f"{src}: {what}; class folders are {folders}")
    sources: list[Source] = []
    for index, name in enumerate(names):
        files = _visible_files(src / name)
        if not files:
            raise DataError(f"class folder {src / name} holds no files; add images or remove it")
        sources.extend(Source(f, index) for f in files)
    return sources, names


def _class_order(names: set[str]) -> list[str]:
    """Sorted; numerically when every label is a whole number (0-11: 2 before 10, so that
    label 5 stays class 5 where the labels run 0..n-1)."""
    if names and all(n.isdecimal() for n in names):  # not isdigit: int("²") fails
        return sorted(names, key=lambda n: (int(n), n))  # ties ("1", "01") by text
    return sorted(names)


def from_csv(src: Path, labels: list[str] | None) -> tuple[list[Source], list[str]]:
    """Rows `path,label[,split]` (a header row is allowed); paths relative to the CSV's folder."""
    try:
        rows = list(csv.reader(src.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {src} ({exc})") from None
    # (file line, cells): errors name the line an editor shows, blank lines included
    numbered = [(i, r) for i, r in enumerate(rows, start=1) if r and any(c.strip() for c in r)]
    if numbered and len(numbered[0][1]) > 1 and numbered[0][1][1].strip().lower() in HEADERS:
        numbered = numbered[1:]  # a header row: path,label / file,label / image,class ...
    if not numbered:
        raise DataError(f"{src} lists no images; expect rows path,label[,split]")
    for line, row in numbered:  # before the classes are gathered: name the row
        if len(row) < 2 or not row[1].strip():
            raise DataError(f"{src} row {line}: no label; expected path,label[,split]")
    names = labels or _class_order({r[1].strip() for _, r in numbered if len(r) > 1})
    index = {n: i for i, n in enumerate(names)}
    sources = []
    for line, row in numbered:
        cells = [c.strip() for c in row]
        if len(cells) < 2 or cells[1] not in index:
            raise DataError(
                f"{src} row {line}: expected path,label[,split] with a label in {names}"
            )
        split = cells[2] if len(cells) > 2 and cells[2] else None
        if split is not None and split not in SPLITS:
            raise DataError(f"{src} row {line}: split {split!r} is not one of {', '.join(SPLITS)}")
        path = Path(cells[0]).expanduser()
        sources.append(
            Source(path if path.is_absolute() else src.parent / path, index[cells[1]], split)
        )
    empty = [n for n in names if not any(s.label == index[n] for s in sources)]
    if empty:
        raise DataError(
            f"{src}: no rows for class(es) {empty}; add images or drop them from --labels"
        )
    return sources, names


def split_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """BloodMNIST's rule generalised: cumulative floors (train, val, test) for n items."""
    # The epsilon keeps 0.7 + 0.1 = 0.7999... from flooring 8 items down to 7.
    n_train = math.floor(fractions[0] * n + 1e-9)
    n_trval = math.floor((fractions[0] + fractions[1]) * n + 1e-9)
    return n_train, n_trval - n_train, n - n_trval


def assign_splits(
    sources: list[Source], fractions: tuple[float, float, float], seed: int
) -> dict[str, list[Source]]:
    """Stratified per-class split, deterministic for a seed; fixed (CSV) splits are kept.

    Within each split the rows are shuffled with the same seed, so classes are mixed and
    `--subset N` (the first N rows) sees every class.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[Source]] = {s: [] for s in SPLITS}
    for s in sources:
        if s.split is not None:
            out[s.split].append(s)
    for label in sorted({s.label for s in sources}):
        free = [s for s in sources if s.label == label and s.split is None]
        order = rng.permutation(len(free))
        counts = split_counts(len(free), fractions)
        start = 0
        for name, count in zip(SPLITS, counts, strict=True):
            out[name].extend(free[i] for i in order[start : start + count])
            start += count
    for name in SPLITS:
        if not out[name]:
            raise DataError(
                f"split '{name}' would be empty ({len(sources)} images); add images or change "
                "--split"
            )
        out[name] = [out[name][i] for i in rng.permutation(len(out[name]))]
    return out
