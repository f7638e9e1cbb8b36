"""The weight EMA: torch's numbers, and a training step with no host sync."""

from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import bloodmnist.training.trainer as trainer_mod
from bloodmnist.cli.main import main
from bloodmnist.training.ema import make_ema


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten()
    )


def test_ema_equals_torch_averaged_model() -> None:
    """Same weights and BN buffers (float running stats, int64 num_batches_tracked) as
    AveragedModel.update_parameters with torch's EMA rule, step for step."""
    model = _net()
    ours = make_ema(model, 0.9)
    theirs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(5):
        opt.zero_grad()
        model(torch.randn(8, 3, 6, 6)).pow(2).mean().backward()
        opt.step()
        ours.update(model)
        theirs.update_parameters(model)
        for name, a in ours.averaged.state_dict().items():
            assert torch.equal(a, theirs.state_dict()[name]), (step, name)
    assert int(ours.averaged.n_averaged) == 5
    assert not torch.equal(ours.module[0].weight, model[0].weight)  # averaged, not a copy


def test_ema_resumed_keeps_averaging() -> None:
    """After load() (a resumed run) the next update averages, exactly as an AveragedModel that
    holds the same weights and has counted one update."""
    model = _net()
    saved = {k: v.clone() for k, v in _net().state_dict().items()}  # the checkpoint's EMA
    ours = make_ema(model, 0.5)
    ours.load(saved)
    theirs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.5), use_buffers=True)
    theirs.module.load_state_dict(saved)
    theirs.n_averaged.fill_(1)
    with torch.no_grad():
        model[0].weight.add_(2.0)
    model(torch.randn(8, 3, 6, 6))  # moves the BN buffers too
    ours.update(model)
    theirs.update_parameters(model)
    for name, a in ours.averaged.state_dict().items():
        assert torch.equal(a, theirs.state_dict()[name]), name
    assert not torch.equal(ours.module[0].weight, model[0].weight)  # averaged, not copied


def test_training_steps_make_no_host_sync(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No tensor -> Python conversion inside a training epoch except the one at its end (and
    the sampler's index list at its start): on a GPU each would wait for the queued kernels.
    The fast recipe (weight EMA, one-cycle per step, dihedral + shifts) drives every hook."""
    calls: Counter[str] = Counter()
    active = [False]
    for name in ("__bool__", "item", "__float__", "__int__", "__index__", "tolist", "numpy"):
        original = getattr(torch.Tensor, name)

        def probe(self, *args, _original=original, _name=name, **kwargs):
            if active[0]:
                caller = traceback.extract_stack(limit=3)[-2]  # who called the method
                calls[f"{_name} {Path(caller.filename).name}:{caller.lineno}"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, probe)
    real_epoch = trainer_mod.train_one_epoch

    def watched(*args, **kwargs):
        active[0] = True
        try:
            return real_epoch(*args, **kwargs)
        finally:
            active[0] = False

    monkeypatch.setattr(trainer_mod, "train_one_epoch", watched)
    args = ["train", "--recipe", "fast", "--data", str(shared_data), "--out", str(tmp_path)]
    args += ["--subset", "256", "--epochs", "2", "--quiet", "--set", "runtime.threads=1"]
    args += ["--set", "runtime.reports=false", "--set", "eval.tta=false"]
    assert main(args) == 0
    per_epoch = {site: n for site, n in calls.items() if n > 2}  # 2 epochs: once each is fine
    assert per_epoch == {}, per_epoch
    assert sum(calls.values()) <= 4, calls
