"""Resolve where the data comes from (user file or verified official download) and load it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from bloodmnist.data.download import fetch_dataset, file_md5, official_md5
from bloodmnist.data.npz import Dataset, load_npz
from bloodmnist.errors import DataError

log = logging.getLogger("bloodmnist")


@dataclass
class DataInfo:
    path: str
    md5: str
    official_md5: str
    official: bool
    user_file: bool

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def resolve_data(path: str | None, size: int, progress: bool = True) -> DataInfo:
    """A `--data` file is used as is (read only); otherwise fetch/verify the official file."""
    expected = official_md5(size)
    if path is None:
        # imported here: runtime pulls in torch, which `bloodmnist data verify FILE` never needs
        from bloodmnist.runtime import home_dir, mirror_url

        p = fetch_dataset(size, cache_dir=home_dir(), base_url=mirror_url(), progress=progress)
        return DataInfo(str(p), expected, expected, True, False)
    p = Path(path).expanduser()
    md5 = file_md5(p) if p.is_file() else ""
    info = DataInfo(str(p), md5, expected, md5 == expected, True)
    if p.is_file() and not info.official:
        log.warning(
            "%s is not the official BloodMNIST file (MD5 %s, official %s); continuing, and the "
            "manifest records it",
            p,
            md5,
            expected,
        )
    return info


def load_data(
    path: str | None, size: int, num_classes: int, subset: int | None, progress: bool = True
) -> tuple[Dataset, DataInfo]:
    info = resolve_data(path, size, progress)
    data = load_npz(info.path, num_classes=num_classes, subset=subset)
    if data.image_size != size:  # the model, export and predict all take data.size as truth
        raise DataError(
            f"{info.path} holds {data.image_size}x{data.image_size} images but data.size is "
            f"{size}; pass --set data.size={data.image_size} (or a {size} px file)"
        )
    return data, info
