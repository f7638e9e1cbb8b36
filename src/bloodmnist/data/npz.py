"""Load and validate BloodMNIST-format npz files (official or user-supplied)."""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bloodmnist.errors import DataError

SPLITS = ("train", "val", "test")
REQUIRED_KEYS = tuple(f"{s}_{k}" for s in SPLITS for k in ("images", "labels"))
#: Optional key written by `bloodmnist data build`: the class names, label 0 first.
CLASS_NAMES_KEY = "class_names"
#: Image sizes the model, augmentation and export support (the MedMNIST and MedMNIST+ sizes).
SIZES = (28, 64, 128, 224)
FIX = "use the official bloodmnist.npz (bloodmnist data download) or fix the file"


@dataclass
class Split:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    path: Path
    num_classes: int
    class_names: tuple[str, ...] | None = None  # stored in the file (data build); else None

    def split(self, name: str) -> Split:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[1])

    def with_val_in_train(self) -> Dataset:
        """The same data with the validation images appended to the training split (train
        rows first, in file order); val itself stays, for numbers that are not held out."""
        train = Split(
            np.concatenate([self.train.images, self.val.images]),
            np.concatenate([self.train.labels, self.val.labels]),
        )
        return replace(self, train=train)


def _fail(path: Path, what: str) -> DataError:
    return DataError(f"{path}: {what}; {FIX}")


def require_file(path: Path) -> None:
    """The one-line error for a missing data file (commands call it before their heavy imports)."""
    if not path.is_file():
        raise DataError(
            f"data file not found: {path}; pass --data FILE.npz or run 'bloodmnist data download'"
        )


def require_data_path(path: str | None) -> None:
    """`require_file` for a config's data.path; None (the official file, downloaded into the
    cache) passes. train, study and tune call it before they write anything."""
    if path is not None:
        require_file(Path(path).expanduser())


def header_image_size(path: Path) -> int | None:
    """The image side stored in `path`'s test_images header (nothing decoded), or None when
    the file cannot tell (loading it then says why)."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("test_images.npy") as fh:
            fmt = np.lib.format
            version = fmt.read_magic(fh)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape = read(fh)[0]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return int(shape[1]) if len(shape) >= 3 else None


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    require_file(path)
    try:
        obj = np.load(path, allow_pickle=False)
        if not isinstance(obj, np.lib.npyio.NpzFile):  # a bare .npy array under an .npz name
            raise _fail(path, "holds a single array, not an npz archive of train/val/test keys")
        with obj as npz:
            missing = [k for k in REQUIRED_KEYS if k not in npz.files]
            if missing:
                raise _fail(path, f"missing key '{missing[0]}' (needs {', '.join(REQUIRED_KEYS)})")
            keys = [*REQUIRED_KEYS, *([CLASS_NAMES_KEY] if CLASS_NAMES_KEY in npz.files else [])]
            return {k: npz[k] for k in keys}
    except DataError:
        raise
    except MemoryError:  # numpy allocates what a (damaged) array header claims before reading
        raise _fail(
            path,
            "not a readable npz archive (an array's header claims more memory "
            "than this machine has; a damaged file?)",
        ) from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not zipfile.is_zipfile(path):  # numpy's own reason ("pickled data") misleads here
            reason = "no zip archive found; truncated or another format"
        raise _fail(path, f"not a readable npz archive ({reason})") from None


def _check_split(path: Path, name: str, images: np.ndarray, labels: np.ndarray, k: int) -> Split:
    key = f"{name}_images"
    if images.dtype != np.uint8:
        raise _fail(path, f"key '{key}' has dtype {images.dtype}, expected uint8 pixels 0..255")
    if images.ndim == 3:  # grayscale (N,H,W): replicate to RGB so one model fits all
        images = np.repeat(images[..., None], 3, axis=-1)
    if images.ndim != 4:
        raise _fail(path, f"key '{key}' has shape {images.shape}, expected (N,H,W,3) or (N,H,W)")
    if images.shape[-1] != 3:
        raise _fail(path, f"key '{key}' has {images.shape[-1]} channels, expected 3 (RGB)")
    if images.shape[1] != images.shape[2]:
        raise _fail(path, f"key '{key}' images are {images.shape[1]}x{images.shape[2]}, not square")
    if len(images) == 0:
        raise _fail(path, f"split '{name}' is empty (key '{key}' has 0 images)")
    lab = np.asarray(labels)
    if lab.ndim == 2 and lab.shape[1] == 1:
        lab = lab[:, 0]
    if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer):
        raise _fail(
            path,
            f"key '{name}_labels' must be integers of shape (N,) or (N,1), "
            f"got {lab.dtype} {labels.shape}",
        )
    if len(lab) != len(images):
        raise _fail(path, f"key '{name}_labels' has {len(lab)} labels for {len(images)} images")
    if lab.min() < 0 or lab.max() >= k:
        raise _fail(
            path,
            f"key '{name}_labels' has labels outside 0..{k - 1} (min {lab.min()}, max {lab.max()})",
        )
    return Split(images=np.ascontiguousarray(images), labels=lab.astype(np.int64))


def _class_names(path: Path, arrays: dict[str, np.ndarray]) -> tuple[str, ...] | None:
    if CLASS_NAMES_KEY not in arrays:
        return None
    raw = arrays[CLASS_NAMES_KEY]
    if raw.ndim != 1 or raw.dtype.kind != "U" or len(raw) < 2:
        raise _fail(path, f"key '{CLASS_NAMES_KEY}' must be a 1-D array of two or more strings")
    names = tuple(str(n) for n in raw)
    if len(set(names)) != len(names) or not all(n.strip() for n in names):
        raise _fail(path, f"key '{CLASS_NAMES_KEY}' has empty or repeated names {list(names)}")
    return names


def load_npz(
    path: str | Path,
    num_classes: int = 8,
    subset: int | None = None,
    classes_from_file: bool = True,
) -> Dataset:
    """Read and validate every split; `subset` keeps the first N samples of each split.

    A file with a `class_names` key (from `bloodmnist data build`) sets the number of classes
    itself when `classes_from_file`; otherwise it must hold `num_classes` names (a trained
    model's head). Raises DataError with one line naming the file and the offending key.
    """
    p = Path(path)
    arrays = _read_arrays(p)
    names = _class_names(p, arrays)
    if names is not None and not classes_from_file and len(names) != num_classes:
        raise _fail(p, f"holds {len(names)} class names but the model has {num_classes} classes")
    if names is not None:
        num_classes = len(names)
    splits = {
        s: _check_split(p, s, arrays[f"{s}_images"], arrays[f"{s}_labels"], num_classes)
        for s in SPLITS
    }
    sizes = {s.images.shape[1:] for s in splits.values()}
    if len(sizes) != 1:
        raise _fail(p, f"splits have different image shapes {sorted(sizes)}")
    if subset is not None:
        splits = {k: Split(v.images[:subset], v.labels[:subset]) for k, v in splits.items()}
    return Dataset(path=p, num_classes=num_classes, class_names=names, **splits)


def describe(ds: Dataset, class_names: tuple[str, ...] | None = None) -> dict:
    """Per-split sizes and class counts, for `bloodmnist data info` and the log; the names are
    the file's own when it stores them."""
    class_names = ds.class_names or class_names or default_names(ds.num_classes)
    out: dict = {
        "path": str(ds.path),
        "image_size": ds.image_size,
        "class_names": list(class_names),
        "splits": {},
    }
    for name in SPLITS:
        sp = ds.split(name)
        counts = np.bincount(sp.labels, minlength=ds.num_classes)
        out["splits"][name] = {
            "n": len(sp),
            "per_class": {c: int(n) for c, n in zip(class_names, counts, strict=False)},
        }
    return out


def default_names(num_classes: int) -> tuple[str, ...]:
    """BloodMNIST's names for files that store none (index names past the eighth class)."""
    from bloodmnist import CLASS_NAMES

    return tuple(
        CLASS_NAMES[i] if i < len(CLASS_NAMES) else f"class_{i}" for i in range(num_classes)
    )
