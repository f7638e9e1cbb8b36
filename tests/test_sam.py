"""optim.sam_rho: sharpness-aware minimisation's second, perturbed gradient."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bloodmnist.cli.main import main
from bloodmnist.config import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, build_config
from bloodmnist.data.loader import Normalizer, TrainBatches
from bloodmnist.errors import ConfigError
from bloodmnist.model import build_model, model_from_config
from bloodmnist.model.flops import flops_per_image
from bloodmnist.runtime import Runtime
from bloodmnist.training.loop import train_one_epoch
from bloodmnist.training.optim import step_flops
from bloodmnist.training.sam import make_sam
from bloodmnist.training.teacher import kd_loss

CPU = torch.device("cpu")


def _net(momentum: float | None = 0.1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8, momentum=momentum),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


@pytest.mark.parametrize("momentum", [0.1, None])  # None: BatchNorm's cumulative average
def test_the_gradient_is_taken_at_the_perturbed_weights(momentum: float | None) -> None:
    model, rho = _net(momentum), 0.3
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    reference = copy.deepcopy(model)  # the same weights and statistics, for the expectations
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _loss(model, x, y).backward()
    g1 = [p.grad.clone() for p in model.parameters()]
    stats_once = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    make_sam(model, rho).replace_grad(lambda: _loss(model, x, y).backward())
    # by hand: w + rho * g / ||g||, its gradient on the same batch (BN in training mode)
    norm = torch.cat([g.flatten() for g in g1]).norm()
    with torch.no_grad():
        for p, g in zip(reference.parameters(), g1, strict=True):
            p.add_(rho * g / norm)
    _loss(reference, x, y).backward()
    for p, want in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p.grad, want.grad, atol=1e-6)
    assert not torch.allclose(model[0].weight.grad, g1[0], atol=1e-4)  # rho moved it
    after = model.state_dict()
    for k, v in before.items():
        if "running" in k:  # the first pass updated the statistics; the second did not
            assert torch.equal(after[k], stats_once[k]) and not torch.equal(after[k], v), k
        elif k.endswith("num_batches_tracked"):
            assert int(after[k]) == 1
        else:  # the weights are back exactly, for the optimiser to step from
            assert torch.equal(after[k], v), k
    assert model[1].momentum == momentum


class _CountingTeacher:
    """A stand-in Distillation that counts the teacher's answers (uniform soft labels)."""

    def __init__(self) -> None:
        self.calls = 0

    def soft(self, x: torch.Tensor, rows: object = None) -> torch.Tensor:
        self.calls += 1
        return torch.full((x.shape[0], 8), 1 / 8)

    def loss(self, x, logits, hard_loss, soft):  # noqa: ANN001, ANN201
        return kd_loss(logits, soft, hard_loss, 0.5, 4.0)


def test_an_epoch_takes_two_passes_per_step_and_asks_the_teacher_once() -> None:
    torch.manual_seed(0)
    model = build_model("resnet9", num_classes=8, size=28, width=0.125)
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    batches = TrainBatches(
        images=torch.rand(48, 3, 28, 28, generator=torch.Generator().manual_seed(2)),
        labels=torch.arange(48) % 8,
        batch_size=16,
        augment_cfg=AugmentConfig(),
        normalize=Normalizer(IMAGENET_MEAN, IMAGENET_STD, CPU, False),
        seed=0,
    )
    teacher = _CountingTeacher()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen, rng = torch.Generator().manual_seed(3), np.random.default_rng(3)
    rt = Runtime(CPU, "fp32", False, 1)
    sam = make_sam(model, 0.05)
    stats = train_one_epoch(model, batches, opt, rt, 1, gen, rng, 0.0, distill=teacher, sam=sam)
    assert stats.samples == 48 and len(forwards) == 6 and teacher.calls == 3


def test_off_at_zero_and_config_checks() -> None:
    assert make_sam(_net(), 0.0) is None
    assert build_config().optim.sam_rho == 0.0
    assert build_config(overrides=["optim.sam_rho=0.05"]).optim.sam_rho == 0.05
    with pytest.raises(ConfigError, match="optim.sam_rho must be >= 0"):
        build_config(overrides=["optim.sam_rho=-0.1"])


def test_a_real_run_with_sam_and_muon(shared_data: Path, tmp_path: Path) -> None:
    """The fast recipe (Muon for the filters) with SAM through the CLI, and its resume."""
    args = ["--data", str(shared_data), "--subset", "128", "--quiet", "--epochs", "1"]
    args += ["--set", "runtime.threads=1", "--set", "runtime.reports=false"]
    args += ["--set", "eval.tta=false", "--set", "eval.final_test=false", "--recipe", "fast"]
    plain, sam = tmp_path / "plain", tmp_path / "sam"
    assert main(["train", "--out", str(plain), *args]) == 0
    assert main(["train", "--out", str(sam), *args, "--set", "optim.sam_rho=0.05"]) == 0
    s_plain = json.loads((plain / "summary.json").read_text())
    s_sam = json.loads((sam / "summary.json").read_text())
    cfg = build_config(recipe="fast")
    model = model_from_config(cfg)
    optimiser = step_flops(model, cfg) * (128 // cfg.optim.batch_size) / 1e15
    per_image = flops_per_image(model, 28)["train"]
    assert s_plain["train_pflop"] == pytest.approx(per_image * 128 / 1e15 + optimiser, rel=1e-3)
    # the model's passes twice, Muon's products once per step
    assert s_sam["train_pflop"] == pytest.approx(2 * per_image * 128 / 1e15 + optimiser, rel=1e-3)
    assert s_sam["optimizer_pflop"] == s_plain["optimizer_pflop"] > 0
    last = torch.load(sam / "checkpoints" / "last.pt", weights_only=False)
    assert last["config"]["optim"]["sam_rho"] == 0.05
    plain_w = torch.load(plain / "checkpoints" / "last.pt", weights_only=False)["model"]
    floats = [k for k, v in last["model"].items() if v.is_floating_point()]
    assert any(not torch.equal(last["model"][k], plain_w[k]) for k in floats)  # SAM changed it
    assert main(["train", "--resume", str(sam), "--epochs", "2", "--quiet"]) == 0
    resumed = json.loads((sam / "summary.json").read_text())
    assert resumed["train_pflop"] == pytest.approx(2 * s_sam["train_pflop"], rel=1e-3)
