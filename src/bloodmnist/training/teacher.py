"""Knowledge distillation: a frozen teacher (one run or an ensemble's members) and the loss.

The teacher's soft labels are computed inside every training step on the very batch the student
sees (augmented, mixed), so the student learns the teacher's answer to that exact image rather
than to a clean one it never sees. A soft-label file (training/soft_labels.py) is the exception:
its answers were computed beforehand, one per training image. Members are loaded with the same
code inference uses (load_checkpoint, from_dict, model_from_config, load_model_weights).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bloodmnist.atomic import read_json
from bloodmnist.config import Config
from bloodmnist.data.npz import Dataset
from bloodmnist.errors import BloodMNISTError
from bloodmnist.model import model_from_config
from bloodmnist.runtime import Runtime
from bloodmnist.training.checkpoint import checkpoint_config, load_checkpoint, load_model_weights
from bloodmnist.training.soft_labels import SoftLabels, check_soft_labels, is_soft_label_file

#: An ensemble folder's list of members (written by `bloodmnist ensemble`).
ENSEMBLE_FILE = "ensemble.json"
#: A file teacher's rows for one batch: (training-row indices, MixUp/CutMix partners, lam).
Rows = tuple[torch.Tensor, torch.Tensor, float]


def member_runs(path: str | Path) -> list[Path]:
    """The run folders behind a teacher path: the folder itself, or an ensemble's members."""
    p = Path(path).expanduser()
    if (p / ENSEMBLE_FILE).is_file():
        try:
            members = json.loads((p / ENSEMBLE_FILE).read_text(encoding="utf-8"))["members"]
        except (ValueError, KeyError, TypeError) as exc:
            msg = f"{p / ENSEMBLE_FILE} is not a readable ensemble file ({exc})"
            raise BloodMNISTError(msg) from None
        return [Path(m) for m in members]
    if (p / "checkpoints" / "best.pt").is_file():
        return [p]
    raise BloodMNISTError(
        f"teacher {p} is neither a run folder (checkpoints/best.pt) nor an ensemble folder "
        f"({ENSEMBLE_FILE}); pass a finished run or a `bloodmnist ensemble` output"
    )


def load_eval_model(
    ckpt: Path, device: torch.device, channels_last: bool
) -> tuple[nn.Module, Config, dict[str, Any]]:
    """A checkpoint's model in eval mode on `device`, with its Config and the raw checkpoint."""
    state = load_checkpoint(ckpt, map_location="cpu")
    cfg = checkpoint_config(state, ckpt)
    model = model_from_config(cfg)
    load_model_weights(model, state, ckpt)
    memory = torch.channels_last if channels_last else torch.preserve_format
    return model.to(device, memory_format=memory).eval(), cfg, state


class Teacher:
    """Frozen teacher model(s); `probs` averages the members' softmax at temperature T.

    `models` is public so a FLOP counter can add the teacher's forwards to a run's compute.
    """

    def __init__(self, path: str | Path, student: Config, rt: Runtime):
        self.path, self.rt = Path(path).expanduser(), rt
        self.sources = [run / "checkpoints" / "best.pt" for run in member_runs(path)]
        self.models: list[nn.Module] = []
        self._inputs: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for src in self.sources:
            model, cfg, _ = load_eval_model(src, rt.device, rt.channels_last)
            _check_fits(src, cfg, student)
            for p in model.parameters():
                p.requires_grad_(False)
            self.models.append(model)
            self._inputs.append(_renormalizer(cfg, student, rt.device))

    @torch.no_grad()
    def probs(self, x: torch.Tensor, temperature: float) -> torch.Tensor:
        """Mean over members of softmax(logits / T) for a batch normalised as the student's."""
        total = None
        for model, renorm in zip(self.models, self._inputs, strict=True):
            model.eval()  # BN running stats, not batch stats: the teacher is fixed
            xin = x if renorm is None else x * renorm[0] + renorm[1]
            with self.rt.autocast():
                logits = model(xin)
            p = torch.softmax(logits.float() / temperature, dim=1)
            total = p if total is None else total + p
        return total / len(self.models)


def _check_fits(src: Path, teacher: Config, student: Config) -> None:
    """A teacher must see the student's images and name the same classes."""
    for key, a, b in (
        ("model.num_classes", teacher.model.num_classes, student.model.num_classes),
        ("data.size", teacher.data.size, student.data.size),
        ("class names", list(teacher.model.names()), list(student.model.names())),
    ):
        if a != b:
            raise BloodMNISTError(f"teacher {src} has {key} {a}, the student {b}; they must match")


def _renormalizer(
    teacher: Config, student: Config, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift) taking the student's normalised input to the teacher's; None if equal."""
    same = (tuple(teacher.data.mean), tuple(teacher.data.std)) == (
        tuple(student.data.mean),
        tuple(student.data.std),
    )
    if same:
        return None

    def t(v) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    # x_t = (pixels - m_t) / s_t with pixels = x_s * s_s + m_s
    ss, st = t(student.data.std), t(teacher.data.std)
    return ss / st, (t(student.data.mean) - t(teacher.data.mean)) / st


def check_teacher_data(
    path: str | Path,
    data_md5: str,
    data: Dataset | None = None,
    subset: int | None = None,
    train_on: str = "train",
) -> None:
    """Refuse a teacher trained on another data file: its training split could hold the
    student's validation or test images, which would leak them into the student. A soft-label
    file is checked row for row against the student's `data` instead (labels of every split).
    A teacher (or ensemble member) trained on train + val is refused for a student whose
    validation is held out (`train_on` "train"): it would pass on validation's labels."""
    if is_soft_label_file(path):
        if data is not None:
            check_soft_labels(path, data, subset)
        return
    for run in member_runs(path):
        summary = run / "summary.json"
        if not summary.is_file():
            raise BloodMNISTError(
                f"teacher {run} has no summary.json (so no data MD5 to check); use a finished run"
            )
        facts = read_json(summary)
        if train_on == "train" and facts.get("train_on") == "train+val":
            raise BloodMNISTError(
                f"teacher {run} trained on the validation images (data.train_on=train+val): "
                "a student would learn their labels from it, so its validation would not be "
                "held out; use a teacher trained on train, or set data.train_on=train+val"
            )
        md5 = facts.get("data_md5")
        if md5 != data_md5:
            raise BloodMNISTError(
                f"teacher {run} was trained on data with MD5 {md5}, this run's data has "
                f"{data_md5}; distil only from teachers trained on the same file"
            )


def kd_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    hard_loss: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """alpha * KL(teacher || student at T) * T^2 + (1 - alpha) * hard_loss (Hinton et al. 2015;
    T^2 keeps the soft term's gradient scale independent of T). KL is the batch mean."""
    log_q = F.log_softmax(student_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_q, teacher_probs, reduction="batchmean")
    return alpha * kl * temperature**2 + (1 - alpha) * hard_loss


@dataclass
class Distillation:
    """What the training step needs: the teacher (models, or a soft-label file) and the loss
    weights."""

    teacher: Teacher | SoftLabels
    alpha: float
    temperature: float

    def soft(self, x: torch.Tensor, rows: Rows | None = None) -> torch.Tensor:
        """The teacher's softened probabilities for the batch `x`. A file teacher looks them up
        by `rows` (the batch's training rows, their MixUp/CutMix partners and lam) and mixes
        them as the images were mixed."""
        if not isinstance(self.teacher, SoftLabels):
            return self.teacher.probs(x, self.temperature)
        if rows is None:
            raise ValueError("a soft-label file teacher needs the batch's training rows")
        idx, partner, lam = rows
        p = self.teacher.probs(idx, self.temperature)
        if lam >= 1.0:
            return p
        return lam * p + (1 - lam) * self.teacher.probs(partner, self.temperature)

    def loss(
        self,
        x: torch.Tensor,
        logits: torch.Tensor,
        hard_loss: torch.Tensor,
        soft: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The distillation loss for the batch `x` the student produced `logits` for (`soft`:
        the teacher's answer for it, when already computed)."""
        soft = self.soft(x) if soft is None else soft
        return kd_loss(logits, soft, hard_loss, self.alpha, self.temperature)


def make_distillation(cfg: Config, rt: Runtime, data: Dataset) -> Distillation | None:
    """Distillation from cfg.train.teacher (run or ensemble folder, or soft-label file); None
    when no teacher is set."""
    if not cfg.train.teacher:
        return None
    if is_soft_label_file(cfg.train.teacher):
        teacher: Teacher | SoftLabels = SoftLabels(
            cfg.train.teacher, data, rt.device, cfg.data.subset
        )
    else:
        teacher = Teacher(cfg.train.teacher, cfg, rt)
    return Distillation(teacher, cfg.train.distill_alpha, cfg.train.distill_temperature)
