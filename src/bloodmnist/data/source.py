"""Resolve where the data comes from (user file or verified official download) and load it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from bloodmnist.config import Config, ModelConfig
from bloodmnist.data.download import fetch_dataset, file_md5, official_md5
from bloodmnist.data.npz import SIZES, Dataset, header_image_size, load_npz
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
    stored = header_image_size(p) if p.is_file() else None
    if stored in SIZES:  # a 64-px file is compared with the official 64-px file, whatever size
        expected = official_md5(stored)
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
    path: str | None,
    size: int,
    num_classes: int,
    subset: int | None,
    progress: bool = True,
    follow_file: bool = False,
    model: ModelConfig | None = None,
) -> tuple[Dataset, DataInfo]:
    """Resolve and load the npz. With `follow_file` (training) a user file's image size and
    stored class names win over `size` and `num_classes` (see `fit_config`); otherwise (a
    trained model's checkpoint) they must match it, and with `model` the names the file stores
    must be the model's, in its order (the same classes in another order would score every
    prediction against the wrong label)."""
    info = resolve_data(path, size, progress)
    data = load_npz(info.path, num_classes, subset, classes_from_file=follow_file)
    if model is not None and not follow_file and data.class_names:
        _check_class_order(info.path, list(data.class_names), model)
    if data.image_size not in SIZES:
        raise DataError(
            f"{info.path} holds {data.image_size}x{data.image_size} images; supported sizes are "
            f"{', '.join(map(str, SIZES))} (rebuild it with bloodmnist data build --size)"
        )
    if data.image_size != size and not follow_file:  # a model takes its data.size as truth
        raise DataError(
            f"{info.path} holds {data.image_size}x{data.image_size} images but data.size is "
            f"{size}, the size this model takes; pass a {size} px file"
        )
    return data, info


def _check_class_order(path: Path, in_file: list[str], model: ModelConfig) -> None:
    """The file's classes must be the model's, in its order. A model that stores no names
    (trained on an official-layout file) has the BloodMNIST names: the same names in another
    order are refused too; other spellings only warn, as they may be the same classes."""
    theirs = list(model.names())
    if in_file == theirs:
        return
    if model.class_names or sorted(in_file) == sorted(theirs):
        raise DataError(
            f"{path} names its classes {in_file}, the model {theirs}; pass the file the model "
            "was trained on (or one whose classes are the model's, in its order)"
        )
    log.warning(
        "%s names its classes %s, the model has the BloodMNIST names %s; label i is scored "
        "as the model's class i",
        path,
        in_file,
        theirs,
    )


def fit_config(cfg: Config, data: Dataset) -> Config:
    """`cfg` with data.size, model.num_classes and model.class_names taken from the loaded file,
    so the model, augmentation, reports and every later reader of the checkpoint agree with it."""
    names = list(data.class_names) if data.class_names else cfg.model.class_names
    new = replace(
        cfg,
        data=replace(cfg.data, size=data.image_size),
        model=replace(cfg.model, num_classes=data.num_classes, class_names=names),
    )
    if new.data.size != cfg.data.size:
        log.info("data.size %d -> %d: the size of %s", cfg.data.size, new.data.size, data.path)
    if new.model.num_classes != cfg.model.num_classes or names != cfg.model.class_names:
        log.info("classes from %s: %s", data.path, ", ".join(new.model.names()))
    return new
