"""optim.norm_weight_decay: normalisation layers' own weight decay, in a real run and a step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bloodmnist.cli.main import main
from bloodmnist.config import build_config
from bloodmnist.errors import ConfigError
from bloodmnist.model import model_from_config
from bloodmnist.training.model_setup import sgd_param_groups

FAST_NET = ["model.arch=resnet9", "model.width=0.25"]


def test_default_is_one_group_of_every_parameter() -> None:
    cfg = build_config(overrides=FAST_NET)
    assert cfg.optim.norm_weight_decay is None
    model = model_from_config(cfg)
    (group,) = sgd_param_groups(model, cfg)
    assert [id(p) for p in group["params"]] == [id(p) for p in model.parameters()]
    with pytest.raises(ConfigError, match="optim.norm_weight_decay"):
        build_config(overrides=["optim.norm_weight_decay=-1"])


def test_a_step_decays_convolutions_but_not_batchnorm() -> None:
    """With zero gradients an SGD step is pure weight decay: w <- w (1 - lr wd)."""
    cfg = build_config(overrides=[*FAST_NET, "optim.norm_weight_decay=0"])
    model = model_from_config(cfg)
    groups = sgd_param_groups(model, cfg)
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(groups[1]["params"]) == 2 * len(bn) and len(bn) == 8  # scale + shift each
    grouped = sorted(id(p) for g in groups for p in g["params"])
    assert grouped == sorted(id(p) for p in model.parameters())  # each exactly once
    with torch.no_grad():
        for m in bn:  # BatchNorm starts at 1 and 0; make the decay visible on both
            m.weight.fill_(2.0)
            m.bias.fill_(0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(groups, lr=0.1, weight_decay=0.01, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    norm_ids = {id(p) for p in groups[1]["params"]}
    for name, p in model.named_parameters():
        expected = before[name] * (1.0 if id(p) in norm_ids else 1 - 0.1 * 0.01)
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7, msg=name)
    assert id(model.fc.bias) in {id(p) for p in groups[0]["params"]}  # only norm layers apart


def _decays(run: Path) -> tuple[list[float], dict]:
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    return [g["weight_decay"] for g in last["optimizer"]["param_groups"]], last


def test_a_run_trains_with_it_saves_the_groups_and_resumes(
    shared_data: Path, tmp_path: Path
) -> None:
    args = ["--data", str(shared_data), "--subset", "128", "--quiet"]
    args += ["--set", "runtime.threads=1", "--set", "runtime.reports=false"]
    args += ["--set", "eval.tta=false", "--set", "eval.final_test=false"]
    first = ["train", "--recipe", "fast", "--out", str(tmp_path), "--epochs", "1", *args]
    assert main([*first, "--set", "optim.norm_weight_decay=0"]) == 0
    decays, last = _decays(tmp_path)
    wd = last["config"]["optim"]["weight_decay"]
    # the recipe's Muon keeps the filter banks in a third group, at a fixed norm (no decay)
    assert wd > 0 and decays == [wd, 0.0, 0.0]
    assert last["config"]["optim"]["norm_weight_decay"] == 0.0
    # --resume rebuilds the optimiser from the saved config: the same two groups, one more epoch
    assert main(["train", "--resume", str(tmp_path), "--epochs", "2", "--quiet"]) == 0
    decays, last = _decays(tmp_path)
    assert decays == [wd, 0.0, 0.0] and last["epoch"] == 2
