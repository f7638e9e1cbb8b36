"""`bloodmnist study --adopt RUN_DIR`: let a run trained earlier stand for one of a study's seeds.

A 60-epoch run costs hours on a small CPU; when one seed of a study already exists as an ordinary
run folder, retraining it would only repeat the same deterministic computation. An adopted run
must have been trained with exactly the options the study gives that seed (on the same data, by
MD5); it is linked into the study as `seed-S` and never moved, copied or modified by the
adoption (an unfinished one is continued in place, as `train --resume` would).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bloodmnist.atomic import read_json
from bloodmnist.config import HOW_TO_RUN, Config, absolute_paths, from_dict, load_yaml
from bloodmnist.errors import BloodMNISTError, RunLockedError
from bloodmnist.studies.study import seed_state
from bloodmnist.training.runlock import RunLock

#: Settings that do not change what a run computes: how it ran (threads, compile, reports,
#: TensorBoard), where it writes, the data file's path (its MD5 is compared instead) and what
#: training takes from that file (data.source.fit_config: image size, number and names of classes;
#: a study's options, built without the file, would otherwise differ from every run's on a
#: file with its own class names).
FROM_DATA = ("data.size", "model.num_classes", "model.class_names")
IGNORED = ("data.path", *HOW_TO_RUN, "runtime.out", "runtime.name", *FROM_DATA)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, f"{key}.") if isinstance(v, dict) else {key: v})
    return out


def flat_config(cfg: Config) -> dict[str, Any]:
    """The config as {dotted key: value}."""
    return _flat(cfg.to_dict())


def config_differences(have: Config, want: Config) -> list[str]:
    """Dotted keys whose values differ, ignoring settings that do not change results."""
    a, b = flat_config(have), flat_config(want)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in IGNORED and a.get(k) != b.get(k)]


def describe_differences(have: Config, want: Config, sides: tuple[str, str]) -> str:
    """'key (SIDE0 x, SIDE1 y), ...' for the first four differing keys, '' when none differ."""
    diffs = config_differences(have, want)
    a, b = flat_config(have), flat_config(want)
    shown = ", ".join(f"{k} ({sides[0]} {a.get(k)!r}, {sides[1]} {b.get(k)!r})" for k in diffs[:4])
    return shown + (f" and {len(diffs) - 4} more" if len(diffs) > 4 else "")


def expected_md5(cfg: Config) -> str:
    """MD5 of the data a run with this config trains on: its --data file, or the official one."""
    from bloodmnist.data.download import file_md5, official_md5

    if cfg.data.path is None:
        return official_md5(cfg.data.size)
    path = Path(cfg.data.path)
    if not path.is_file():
        raise BloodMNISTError(f"data file {path} not found; pass --data with an existing npz")
    return file_md5(path)


def check_adoptable(run_dir: Path, seeds: list[int], expected: Callable[[int], Config]) -> int:
    """The seed `run_dir` can stand for, or one clear error saying why it cannot.

    `expected(seed)` is the config the study would train that seed with.
    """
    where = f"--adopt {run_dir}"
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "manifest.json").is_file():
        raise BloodMNISTError(f"{where}: no config.yaml/manifest.json; not a bloodmnist run folder")
    try:
        RunLock(run_dir).check_free()
    except RunLockedError as exc:
        msg = f"{where}: still training; adopt it once it finished ({exc})"
        raise BloodMNISTError(msg) from None
    if seed_state(run_dir) not in ("completed", "resumable"):
        raise BloodMNISTError(f"{where}: neither finished nor resumable (no checkpoints/last.pt)")
    # paths as the study's options give them: absolute (an older run saved them as typed)
    have = absolute_paths(from_dict(load_yaml(run_dir / "config.yaml")))
    seed = have.train.seed
    if seed not in seeds:
        raise BloodMNISTError(f"{where}: it was trained with seed {seed}, not one of {seeds}")
    want = expected(seed)
    shown = describe_differences(have, want, ("run", "study"))
    if shown:
        raise BloodMNISTError(
            f"{where}: trained with other options than the study's for seed {seed}: "
            f"{shown}; give the study the run's options or leave --adopt out"
        )
    manifest = read_json(run_dir / "manifest.json")
    run_md5, study_md5 = manifest.get("data", {}).get("md5"), expected_md5(want)
    if run_md5 != study_md5:
        raise BloodMNISTError(
            f"{where}: trained on other data (MD5 {run_md5}) than the study's (MD5 {study_md5})"
        )
    return seed


def link_adopted(study_dir: Path, adopted: dict[str, str]) -> None:
    """Make `seed-S` a link to each adopted run folder (kept as they are when already there)."""
    for seed, target in adopted.items():
        link = study_dir / f"seed-{seed}"
        if not link.is_symlink():
            link.symlink_to(Path(target), target_is_directory=True)
