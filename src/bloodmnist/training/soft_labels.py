"""A teacher that is a file: one probability vector per training image (`train.teacher=FILE.npz`).

For teachers that cannot answer inside the step: models trained on other views of the same
images (a higher-resolution file of the same split), or cross-fitted models whose answers
for an image come from a model that never trained on it (`benchmarks/crossfit.py` writes such
a file). The file holds log-probabilities (`soft_logp`, one row per training image, in the
training split's order) and the labels of every split, which must equal the student's: the same
images in the same order, so no validation or test image can be behind a training row.
"""

from __future__ import annotations

import zipfile
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from bloodmnist.data.npz import Dataset
from bloodmnist.errors import BloodMNISTError

#: The keys a soft-label file must hold.
KEYS = ("soft_logp", "train_labels", "val_labels", "test_labels")


def is_soft_label_file(path: str | Path) -> bool:
    """`train.teacher` names a soft-label file (rather than a run or ensemble folder)."""
    return Path(path).expanduser().suffix.lower() == ".npz"


def _read(path: Path) -> dict[str, np.ndarray]:
    """The file's arrays, read once per version of the file: a run checks the file before it
    builds anything and then loads it in the Trainer; the (size, mtime) stamp sees a rewrite."""
    if not path.is_file():
        raise BloodMNISTError(f"teacher soft-label file {path} does not exist")
    st = path.stat()
    return _read_stamped(path.resolve(), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=1)
def _read_stamped(path: Path, size: int, mtime_ns: int) -> dict[str, np.ndarray]:
    try:
        obj = np.load(path, allow_pickle=False)
        if not isinstance(obj, np.lib.npyio.NpzFile):  # a bare .npy array under an .npz name
            raise BloodMNISTError(f"teacher {path} holds one array, not an npz archive")
        with obj as z:
            missing = [k for k in KEYS if k not in z.files]
            arrays = {k: z[k] for k in KEYS if k in z.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not zipfile.is_zipfile(path):  # numpy's own reason ("pickled data") misleads here
            reason = "no zip archive found; truncated or another format"
        raise BloodMNISTError(f"teacher {path} is not a readable .npz file ({reason})") from None
    if missing:
        raise BloodMNISTError(
            f"teacher {path} lacks {', '.join(missing)}; a soft-label file holds {', '.join(KEYS)}"
        )
    for a in arrays.values():  # shared by every caller of the cache
        a.setflags(write=False)
    return arrays


def _check_rows(
    path: Path, arrays: dict[str, np.ndarray], data: Dataset, subset: int | None
) -> None:
    """Same images in the same order: every split's labels equal the student's (a `--subset`
    student, which keeps each split's first rows, checks the file's first rows)."""
    logp = arrays["soft_logp"]
    if logp.ndim != 2 or logp.shape != (len(arrays["train_labels"]), data.num_classes):
        raise BloodMNISTError(
            f"teacher {path}: soft_logp has shape {logp.shape}, expected (training images, "
            f"{data.num_classes} classes)"
        )
    if not np.isfinite(logp).all():
        raise BloodMNISTError(f"teacher {path}: soft_logp holds NaN or infinite values")
    for split in ("train", "val", "test"):
        theirs = arrays[f"{split}_labels"].reshape(-1)
        ours = getattr(data, split).labels.reshape(-1)
        if subset is not None:
            theirs = theirs[: len(ours)]
        if not np.array_equal(theirs, ours):
            raise BloodMNISTError(
                f"teacher {path} was made for other {split} images (its {split} labels differ "
                "from this data file's); soft labels must come from the same split, row for row"
            )


def check_soft_labels(path: str | Path, data: Dataset, subset: int | None) -> None:
    """Refuse, before any training, a soft-label file made for other rows than `data`'s."""
    p = Path(path).expanduser()
    _check_rows(p, _read(p), data, subset)


class SoftLabels:
    """The file's probabilities on the device; `probs` looks a batch's rows up by index."""

    def __init__(self, path: str | Path, data: Dataset, device: torch.device, subset: int | None):
        self.path = Path(path).expanduser()
        arrays = _read(self.path)
        _check_rows(self.path, arrays, data, subset)
        n = len(data.train.labels)
        self.logp = torch.from_numpy(arrays["soft_logp"][:n].astype(np.float32)).to(device)
        self.models: list[torch.nn.Module] = []  # no teacher forwards for train_pflop to count

    def probs(self, idx: torch.Tensor, temperature: float) -> torch.Tensor:
        """softmax(log p / T) of the rows `idx` (T = 1: the file's probabilities)."""
        return torch.softmax(self.logp.index_select(0, idx) / temperature, dim=1)
