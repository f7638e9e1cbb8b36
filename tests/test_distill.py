"""Distillation (train.teacher): the loss against a hand computation, the teacher's soft labels,
alpha = 0 as plain cross-entropy, and a real 1-epoch student trained from a real teacher run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bloodmnist.config import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, build_config
from bloodmnist.data.loader import Normalizer, TrainBatches
from bloodmnist.errors import BloodMNISTError, ConfigError
from bloodmnist.model import build_model
from bloodmnist.runtime import Runtime
from bloodmnist.training.loop import train_one_epoch
from bloodmnist.training.teacher import (
    Distillation,
    Teacher,
    check_teacher_data,
    kd_loss,
    load_eval_model,
)
from conftest import SHARED_NPZ_MD5, describe, run_cli

CPU = torch.device("cpu")
TINY = ["--set", "model.arch=resnet9", "--set", "model.width=0.125"]
COMMON = ["--subset", "128", "--epochs", "1", "--precision", "fp32", "--pretrained", "none"]
COMMON += ["--quiet", "--set", "runtime.threads=1", "--set", "runtime.reports=false", *TINY]


def _train(data: Path, out: Path, *extra: str):
    return run_cli(
        ["train", "--data", str(data), "--out", str(out), *COMMON, *extra], cwd=out.parent
    )


@pytest.fixture(scope="module")
def teacher_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("distill") / "teacher"
    result = _train(shared_data, run, "--seed", "7")
    assert result.returncode == 0, describe(result)
    return run


def test_kd_loss_matches_a_hand_computation() -> None:
    s = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    t = torch.tensor([[1.0, 1.5, -0.5], [3.0, -1.0, 0.0]])
    hard = torch.tensor(0.75)
    alpha, temp = 0.7, 3.0
    p = np.exp(t.numpy() / temp) / np.exp(t.numpy() / temp).sum(1, keepdims=True)
    q = np.exp(s.numpy() / temp) / np.exp(s.numpy() / temp).sum(1, keepdims=True)
    kl = float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))
    expected = alpha * kl * temp**2 + (1 - alpha) * 0.75
    got = kd_loss(s, torch.from_numpy(p).float(), hard, alpha, temp)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # Identical distributions: only the hard term is left.
    same = kd_loss(s, torch.softmax(s / temp, 1), hard, alpha, temp)
    assert float(same) == pytest.approx((1 - alpha) * 0.75, abs=1e-6)


def test_teacher_soft_labels_and_alpha_zero_is_plain_ce(teacher_run: Path) -> None:
    student = build_config(overrides=[f"train.teacher={teacher_run}", *TINY[1::2]])
    rt = Runtime(CPU, "fp32", False, 1)
    teacher = Teacher(teacher_run, student, rt)
    assert teacher.sources == [teacher_run / "checkpoints" / "best.pt"]
    assert len(teacher.models) == 1  # exposed for FLOP counting
    assert not any(p.requires_grad for p in teacher.models[0].parameters())
    x = torch.randn(16, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    model, _, _ = load_eval_model(teacher.sources[0], CPU, False)
    with torch.no_grad():
        by_hand = torch.softmax(model(x) / 4.0, dim=1)
    torch.testing.assert_close(teacher.probs(x, 4.0), by_hand, rtol=0, atol=1e-6)

    logits = torch.randn(16, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    y = torch.arange(16) % 8
    ce = F.cross_entropy(logits, y)
    plain = Distillation(teacher, alpha=0.0, temperature=4.0).loss(x, logits, ce)
    assert torch.equal(plain, ce)
    full = Distillation(teacher, alpha=1.0, temperature=2.0).loss(x, logits, ce)
    kl = F.kl_div(F.log_softmax(logits / 2.0, 1), teacher.probs(x, 2.0), reduction="batchmean")
    assert full.item() == pytest.approx(kl.item() * 4.0, rel=1e-6)


def _one_batch_step(distill: Distillation | None) -> tuple[float, list[torch.Tensor]]:
    """One real training step (augmentation, MixUp, CE) of a fixed tiny student."""
    torch.manual_seed(0)
    model = build_model("resnet9", num_classes=8, size=28, width=0.125)
    images = torch.rand(16, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    batches = TrainBatches(
        images=images,
        labels=torch.arange(16) % 8,
        batch_size=16,
        augment_cfg=AugmentConfig(),
        normalize=Normalizer(IMAGENET_MEAN, IMAGENET_STD, CPU, False),
        seed=0,
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen, rng = torch.Generator().manual_seed(3), np.random.default_rng(3)
    rt = Runtime(CPU, "fp32", False, 1)
    stats = train_one_epoch(model, batches, opt, rt, 1, gen, rng, 0.2, distill=distill)
    return stats.loss, [p.detach().clone() for p in model.parameters()]


def test_alpha_zero_step_is_the_plain_step(teacher_run: Path) -> None:
    teacher = Teacher(teacher_run, build_config(), Runtime(CPU, "fp32", False, 1))
    plain_loss, plain_w = _one_batch_step(None)
    kd_loss0, kd_w = _one_batch_step(Distillation(teacher, alpha=0.0, temperature=4.0))
    assert kd_loss0 == plain_loss
    assert all(torch.equal(a, b) for a, b in zip(plain_w, kd_w, strict=True))
    kd_loss1, _ = _one_batch_step(Distillation(teacher, alpha=0.5, temperature=4.0))
    assert kd_loss1 != plain_loss  # the teacher term is really in the step's loss


def test_student_trains_from_the_teacher(teacher_run: Path, shared_data: Path) -> None:
    student = teacher_run.parent / "student"
    result = _train(
        shared_data,
        student,
        "--set",
        f"train.teacher={teacher_run}",
        "--set",
        "train.distill_alpha=0.9",
        "--set",
        "train.distill_temperature=2",
    )
    assert result.returncode == 0, describe(result)
    summary = json.loads((student / "summary.json").read_text())
    assert summary["status"] == "completed" and 0 <= summary["test_acc"] <= 1
    history = (student / "history.csv").read_text().splitlines()
    assert math.isfinite(float(history[1].split(",")[1]))  # train_loss of epoch 1
    assert f"teacher: {teacher_run}" in (student / "config.yaml").read_text()


def test_bad_teachers_get_one_error_line(teacher_run: Path, tmp_path: Path) -> None:
    check_teacher_data(teacher_run, SHARED_NPZ_MD5)  # the same file: accepted
    with pytest.raises(BloodMNISTError, match="trained on data with MD5"):
        check_teacher_data(teacher_run, "0" * 32)
    with pytest.raises(BloodMNISTError, match="neither a run folder"):
        Teacher(tmp_path, build_config(), Runtime(CPU, "fp32", False, 1))
    wrong = build_config(overrides=["model.num_classes=5"])
    with pytest.raises(BloodMNISTError, match="model.num_classes"):
        Teacher(teacher_run, wrong, Runtime(CPU, "fp32", False, 1))
    for bad in ("train.distill_alpha=1.5", "train.distill_temperature=0"):
        with pytest.raises(ConfigError, match="train.distill"):
            build_config(overrides=[bad])


def test_teacher_input_is_renormalised_to_its_own_statistics() -> None:
    """A teacher trained with other data.mean/std sees the pixels normalised its way."""
    from bloodmnist.training.teacher import _renormalizer

    student = build_config()
    teacher = build_config(overrides=["data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.2,0.3]"])
    assert _renormalizer(student, student, CPU) is None
    scale, shift = _renormalizer(teacher, student, CPU)
    pixels = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    x_student = Normalizer(IMAGENET_MEAN, IMAGENET_STD, CPU, False)(pixels)
    x_teacher = Normalizer((0.5, 0.5, 0.5), (0.25, 0.2, 0.3), CPU, False)(pixels)
    torch.testing.assert_close(x_student * scale + shift, x_teacher)
