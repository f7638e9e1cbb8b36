"""`bloodmnist compare A B`: is setting A really better than B on the same test images?

A and B are run folders (summary.json + predictions.npz + manifest.json) or study folders
(study.json + seed-*/ run folders). The comparison is paired over test images:

- accuracy difference (A - B) with a paired bootstrap 95% CI over test images. A study counts
  with its mean-over-seeds accuracy, the number its study.json reports: per image, the share of
  seeds that got it right, averaged over images;
- McNemar's exact test on right/wrong per image. It needs one prediction per image, so a study
  enters as the ensemble of its seeds (argmax of the seed-averaged probabilities).

TTA predictions are compared under one TTA mode: the runs' own where both sides ran the same,
else a mode both sides report (every run records both); `--variant tta_reference7` or
`tta_dihedral8` names one. Refuses (one line) when the two used different data files (MD5) or
different test labels; names in `same_training` (and warns) any seed run that is on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bloodmnist.atomic import read_json
from bloodmnist.errors import BloodMNISTError
from bloodmnist.evaluation.run_files import (
    TTA_MODES,
    load_manifest,
    load_predictions,
    load_summary,
    tta_mode_of,
    tta_probs,
    tta_was_run,
)
from bloodmnist.evaluation.stats import (
    DEFAULT_BOOT_SEED,
    DEFAULT_N_BOOT,
    PROB_METRICS,
    mcnemar_exact,
    paired_bootstrap_diff,
    seed_mean,
)

VARIANT_PROBS = {"plain": "test_probs", "tta": "test_probs_tta"}


@dataclass
class Side:
    path: Path
    kind: str  # run | study
    seeds: list[Any]
    labels: np.ndarray  # (N,)
    probs: dict[str, np.ndarray]  # variant -> (N, S, C); tta_<mode> where every seed has it
    data_md5: str | None
    has_tta: bool
    tta_modes: frozenset[str] = frozenset()  # the seeds' own TTA modes
    run_dirs: tuple[Path, ...] = ()  # one per seed


def _run_md5(run_dir: Path, summary: dict[str, Any]) -> str | None:
    data = load_manifest(run_dir).get("data")
    if isinstance(data, dict) and data.get("md5"):
        return str(data["md5"])
    return summary.get("data_md5")


def _load_runs(path: Path, run_dirs: list[Path], kind: str) -> Side:
    labels, md5s, seeds, tta, modes = None, set(), [], True, set()
    probs: dict[str, list] = {v: [] for v in [*VARIANT_PROBS, *(f"tta_{m}" for m in TTA_MODES)]}
    for run_dir in run_dirs:
        summary = load_summary(run_dir)
        if summary.get("status") != "completed":
            raise BloodMNISTError(f"{run_dir} did not complete (status {summary.get('status')!r})")
        preds = load_predictions(run_dir)
        y = preds["test_labels"].reshape(-1)
        if labels is not None and not np.array_equal(labels, y):
            raise BloodMNISTError(f"the seed runs in {path} have different test labels")
        labels = y
        md5s.add(_run_md5(run_dir, summary))
        tta = tta and tta_was_run(summary)
        modes.add(tta_mode_of(summary))
        seeds.append(summary.get("seed"))
        for v, key in VARIANT_PROBS.items():
            probs[v].append(preds[key])
        for mode in TTA_MODES:
            probs[f"tta_{mode}"].append(tta_probs(summary, preds, mode))
    if len(md5s) > 1:
        raise BloodMNISTError(f"the seed runs in {path} used different data files: {sorted(md5s)}")
    stacked = {v: np.stack(p, axis=1) for v, p in probs.items() if all(x is not None for x in p)}
    return Side(
        path, kind, seeds, labels, stacked, md5s.pop(), tta, frozenset(modes), tuple(run_dirs)
    )


def load_side(path: Path) -> Side:
    """A run folder or a study folder, as per-seed test probabilities."""
    path = Path(path)
    if (path / "summary.json").is_file() and (path / "predictions.npz").is_file():
        return _load_runs(path, [path], "run")
    study = path / "study.json"
    if study.is_file():
        record = read_json(study)
        dirs = [path / row["run_dir"] for row in record.get("per_seed", [])]
        if not dirs:
            raise BloodMNISTError(f"{study} lists no completed seed runs")
        return _load_runs(path, dirs, "study")
    raise BloodMNISTError(
        f"{path} is neither a run folder (summary.json + predictions.npz) nor a study folder "
        "(study.json); pass a finished run or study"
    )


def check_comparable(a: Side, b: Side) -> None:
    """Same data file and the same test labels, or one clear error."""
    if a.data_md5 is None or b.data_md5 is None:
        missing = a.path if a.data_md5 is None else b.path
        raise BloodMNISTError(f"{missing} records no data MD5, so the test data cannot be matched")
    if a.data_md5 != b.data_md5:
        raise BloodMNISTError(
            f"different test data: {a.path} used data MD5 {a.data_md5}, {b.path} used "
            f"{b.data_md5}; compare runs on the same data file"
        )
    if a.labels.shape != b.labels.shape or not np.array_equal(a.labels, b.labels):
        raise BloodMNISTError(
            f"different test sets: {a.path} has {a.labels.size} test labels, {b.path} has "
            f"{b.labels.size} (or they differ); compare runs with the same --subset"
        )


def pick_variant(a: Side, b: Side, variant: str) -> str:
    """auto: TTA when both sides ran it, else plain; tta needs both to have it, under one mode
    (the sides' own where they agree, else one both report); tta_<mode> names the mode."""
    both = a.has_tta and b.has_tta
    if variant == "auto":
        variant = "tta" if both else "plain"
    if variant == "plain":
        return variant
    if not both:
        raise BloodMNISTError(f"--variant {variant}: one side was evaluated without TTA; use plain")
    if variant == "tta":
        if a.tta_modes == b.tta_modes and len(a.tta_modes) == 1:
            return "tta"
        shared = [f"tta_{m}" for m in TTA_MODES if f"tta_{m}" in a.probs and f"tta_{m}" in b.probs]
        if not shared:
            raise BloodMNISTError(
                "the two sides ran different TTA modes and do not both report either; use "
                "--variant plain"
            )
        return shared[0]
    if variant not in a.probs or variant not in b.probs:
        raise BloodMNISTError(f"--variant {variant}: not recorded by every run of both sides")
    return variant


def same_trainings(a: Side, b: Side) -> list[dict[str, Any]]:
    """Seed runs that are on both sides: the same folder (a study's adopted run), or test
    probabilities equal bit for bit (a copy, or the same config and seed trained again). Such
    pairs agree on every image by construction, which pulls the difference towards 0."""
    found = []
    for i, run_a in enumerate(a.run_dirs):
        for j, run_b in enumerate(b.run_dirs):
            if run_a.resolve() == run_b.resolve():
                why = "the same run folder"
            elif np.array_equal(a.probs["plain"][:, i], b.probs["plain"][:, j]):
                why = "identical test predictions"
            else:
                continue
            found.append({"a": str(run_a), "b": str(run_b), "why": why})
    return found


def _describe(side: Side, probs: np.ndarray) -> dict[str, Any]:
    y = side.labels
    ens = probs.mean(axis=1)
    return {
        "path": str(side.path),
        "kind": side.kind,
        "seeds": side.seeds,
        "acc": seed_mean(PROB_METRICS["acc"])(y, probs),
        "macro_f1": seed_mean(PROB_METRICS["macro_f1"])(y, probs),
        "auc": seed_mean(PROB_METRICS["auc"])(y, probs),
        "ensemble_acc": PROB_METRICS["acc"](y, ens),
    }


def compare_sides(
    a: Side,
    b: Side,
    variant: str = "auto",
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_BOOT_SEED,
) -> dict[str, Any]:
    """The comparison record printed by `bloodmnist compare` (see the module docstring)."""
    check_comparable(a, b)
    v = pick_variant(a, b, variant)
    y, pa, pb = a.labels, a.probs[v], b.probs[v]
    # Per image: share of seeds right. Its mean is the seed-mean accuracy, so bootstrapping these
    # vectors is exactly bootstrapping the accuracy difference, and fast.
    share_a = (pa.argmax(axis=2) == y[:, None]).mean(axis=1)
    share_b = (pb.argmax(axis=2) == y[:, None]).mean(axis=1)
    diff = paired_bootstrap_diff(lambda _y, s: float(np.mean(s)), y, share_a, share_b, n_boot, seed)
    correct_a = pa.mean(axis=1).argmax(axis=1) == y
    correct_b = pb.mean(axis=1).argmax(axis=1) == y
    return {
        "a": _describe(a, pa),
        "b": _describe(b, pb),
        "variant": v,
        "test_n": int(y.size),
        "data_md5": a.data_md5,
        "acc_diff": diff["diff"],
        "acc_diff_ci95": [diff["low"], diff["high"]],
        "bootstrap": {
            "n_boot": n_boot,
            "seed": seed,
            "share_diff_le_0": diff["share_diff_le_0"],
            "unit": "test image (paired)",
        },
        "mcnemar": {
            **mcnemar_exact(correct_a, correct_b),
            "on": "per-image predictions; a study: its seed ensemble",
        },
        "same_training": same_trainings(a, b),
    }
