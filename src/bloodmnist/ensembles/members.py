"""Ensemble members: finished run folders, checked to share one data file, classes and test set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bloodmnist.config import Config, from_dict, load_yaml
from bloodmnist.errors import BloodMNISTError
from bloodmnist.evaluation.run_files import (
    load_predictions,
    load_summary,
    tta_mode_of,
    tta_probs,
    tta_was_run,
)


@dataclass
class Member:
    """One finished run: its summary, saved test predictions, config and best checkpoint."""

    run_dir: Path
    summary: dict[str, Any]
    preds: dict[str, np.ndarray]
    cfg: Config

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "best.pt"

    @property
    def class_names(self) -> list[str]:
        """The names saved with the predictions; the run's config's where an early run saved
        none."""
        names = self.preds.get("class_names")
        return [str(n) for n in names] if names is not None else list(self.cfg.model.names())

    @property
    def has_tta(self) -> bool:
        return tta_was_run(self.summary)

    @property
    def tta_mode(self) -> str:
        """Runs from before eval.tta_mode existed used the reference's 7 views."""
        return tta_mode_of(self.summary)

    def tta_probs(self, mode: str) -> np.ndarray | None:
        """Test probabilities under TTA `mode`, where the run has them."""
        return tta_probs(self.summary, self.preds, mode)


def load_member(path: str | Path) -> Member:
    """A completed run folder with summary.json, predictions.npz, config.yaml and best.pt."""
    run_dir = Path(path).expanduser().resolve()
    if not run_dir.is_dir():
        raise BloodMNISTError(f"ensemble member {run_dir} is not a folder")
    summary = load_summary(run_dir)
    if summary.get("status") != "completed" or summary.get("test_acc") is None:
        raise BloodMNISTError(
            f"ensemble member {run_dir} is not a finished, tested run "
            f"(status {summary.get('status')!r}); members must be completed train runs"
        )
    for name in ("config.yaml", "checkpoints/best.pt"):
        if not (run_dir / name).is_file():
            raise BloodMNISTError(f"ensemble member {run_dir} has no {name}")
    cfg = from_dict(load_yaml(run_dir / "config.yaml"))
    return Member(run_dir, summary, load_predictions(run_dir), cfg)


def load_members(paths: list[str]) -> list[Member]:
    """Load and cross-check the members; one error line names the first one that does not fit."""
    members = [load_member(p) for p in paths]
    if len(members) < 2:
        raise BloodMNISTError("an ensemble needs at least two run folders")
    seen: dict[Path, int] = {}
    for m in members:
        if m.run_dir in seen:
            raise BloodMNISTError(f"{m.run_dir} is given twice; each member once")
        seen[m.run_dir] = 1
    first = members[0]
    for m in members[1:]:
        _check_pair(first, m)
    return members


def _check_pair(a: Member, b: Member) -> None:
    """b must have been trained and tested on a's data file, classes and test images."""
    md5_a, md5_b = a.summary.get("data_md5"), b.summary.get("data_md5")
    if md5_a != md5_b:
        raise BloodMNISTError(
            f"ensemble member {b.run_dir} was trained on data MD5 {md5_b}, {a.run_dir} on "
            f"{md5_a}; an ensemble needs members trained on one data file"
        )
    names_a, names_b = a.class_names, b.class_names
    if names_a != names_b or a.cfg.model.num_classes != b.cfg.model.num_classes:
        raise BloodMNISTError(
            f"ensemble member {b.run_dir} has classes {names_b}, {a.run_dir} has {names_a}; "
            "an ensemble needs members with the same classes"
        )
    same_split = (a.cfg.data.subset, a.cfg.data.size) == (b.cfg.data.subset, b.cfg.data.size)
    la, lb = a.preds["test_labels"].reshape(-1), b.preds["test_labels"].reshape(-1)
    if not same_split or la.shape != lb.shape or not np.array_equal(la, lb):
        raise BloodMNISTError(
            f"ensemble member {b.run_dir} was tested on other images than {a.run_dir} "
            f"(data.subset {b.cfg.data.subset} vs {a.cfg.data.subset}, data.size "
            f"{b.cfg.data.size} vs {a.cfg.data.size}); an ensemble needs one test set"
        )
