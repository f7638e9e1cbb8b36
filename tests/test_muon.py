"""optim.kind=muon: orthogonalised steps for the convolution filters, SGD for the rest."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bloodmnist.cli.main import main
from bloodmnist.config import build_config
from bloodmnist.errors import ConfigError
from bloodmnist.model import model_from_config
from bloodmnist.training.model_setup import sgd_param_groups
from bloodmnist.training.optim import (
    MuonSGD,
    build_optimizer,
    filter_banks,
    orthogonalise,
    step_flops,
)
from bloodmnist.training.schedule import build_schedule

FAST_NET = ["model.arch=resnet9", "model.width=0.25", "model.pretrained=none"]


@pytest.mark.parametrize("shape", [(32, 288), (288, 32), (16, 27), (8, 128)])
def test_orthogonalise_flattens_the_spectrum(shape: tuple[int, int]) -> None:
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g[:, 0] *= 50  # one dominant direction, as momentum-smoothed gradients have
    s_in = torch.linalg.svdvals(g)
    s_out = torch.linalg.svdvals(orthogonalise(g))
    assert s_in.max() / s_in.min() > 5
    # the quintic lands every singular value in about [0.7, 1.2] (not exactly on 1)
    assert 0.6 < s_out.min() and s_out.max() < 1.25, s_out
    assert orthogonalise(g).shape == g.shape


def test_sgd_groups_step_exactly_as_torch_sgd() -> None:
    """MuonSGD's plain groups follow torch.optim.SGD: momentum, Nesterov, coupled decay."""
    torch.manual_seed(0)
    a = torch.nn.Linear(6, 5)
    b = torch.nn.Linear(6, 5)
    b.load_state_dict(a.state_dict())
    kw = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01, "nesterov": True}
    ours = MuonSGD([{"params": list(a.parameters())}], **kw)
    ref = torch.optim.SGD(b.parameters(), **kw)
    for step in range(4):
        grads = [torch.randn_like(p) for p in a.parameters()]
        for model, opt in ((a, ours), (b, ref)):
            for p, g in zip(model.parameters(), grads, strict=True):
                p.grad = g.clone()
            opt.step()
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-7, msg=f"step {step}")


def test_muon_groups_filter_banks_and_steps_at_fixed_norm() -> None:
    cfg = build_config(overrides=[*FAST_NET, "optim.kind=muon", "optim.muon_lr=0.03"])
    model = model_from_config(cfg)
    opt = build_optimizer(model, cfg, sgd_param_groups(model, cfg))
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    plain, banks = opt.param_groups
    assert [id(p) for p in banks["params"]] == [id(p) for p in convs] and len(convs) == 8
    assert banks["orthogonal"] and banks["lr"] == 0.03 and plain["lr"] == cfg.optim.lr
    assert {id(model.fc.weight), id(model.fc.bias)} <= {id(p) for p in plain["params"]}
    assert len(plain["params"]) + len(convs) == len(list(model.parameters()))
    for g in opt.param_groups:
        g["momentum"] = 0.0  # one bare step: w <- w sqrt(out)/|w| - lr sqrt(max(1, out/in)) O(g)
    grads = [torch.randn_like(p) for p in model.parameters()]
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g
    expected = []
    for w in convs:
        out, fan_in = w.shape[0], w[0].numel()
        unit = w.detach() * math.sqrt(out) / w.detach().norm()
        step = orthogonalise(w.grad.reshape(out, -1)).view_as(w)
        expected.append(unit - 0.03 * math.sqrt(max(1.0, out / fan_in)) * step)
    opt.step()
    for w, want in zip(convs, expected, strict=True):
        torch.testing.assert_close(w.detach(), want, rtol=0, atol=1e-6)
        assert w.norm().item() == pytest.approx(math.sqrt(w.shape[0]), rel=0.05)


def test_muon_beside_norm_weight_decay_and_the_one_cycle() -> None:
    """Three groups (decayed, BatchNorm apart, filter banks); the schedule scales each LR."""
    overrides = [*FAST_NET, "optim.kind=muon", "optim.muon_lr=0.01", "optim.norm_weight_decay=0"]
    cfg = build_config(overrides=[*overrides, "schedule.kind=onecycle", "schedule.div_factor=10"])
    model = model_from_config(cfg)
    opt = build_optimizer(model, cfg, sgd_param_groups(model, cfg))
    assert [g["weight_decay"] for g in opt.param_groups[:2]] == [cfg.optim.weight_decay, 0.0]
    assert [g["orthogonal"] for g in opt.param_groups] == [False, False, True]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    build_schedule(opt, cfg.schedule, epochs=2, steps_per_epoch=10)
    lrs = [g["lr"] for g in opt.param_groups]  # the cycle starts at peak / div_factor
    assert lrs == pytest.approx([cfg.optim.lr / 10, cfg.optim.lr / 10, 0.01 / 10])


@pytest.mark.parametrize("cycle", [True, False])
def test_one_cycle_moves_every_groups_momentum_unless_told_not_to(cycle: bool) -> None:
    """torch's OneCycleLR sets each group's momentum from max_momentum at the start to
    base_momentum at the peak LR; with cycle_momentum false optim.momentum holds throughout."""
    sets = [*FAST_NET, "optim.kind=muon", "schedule.kind=onecycle", "schedule.pct_start=0.5"]
    sets += ["optim.momentum=0.9", "schedule.base_momentum=0.8", "schedule.max_momentum=0.97"]
    cfg = build_config(overrides=[*sets, f"schedule.cycle_momentum={str(cycle).lower()}"])
    model = model_from_config(cfg)
    opt = build_optimizer(model, cfg, sgd_param_groups(model, cfg))
    schedule = build_schedule(opt, cfg.schedule, epochs=2, steps_per_epoch=10)
    seen = []
    for _ in range(19):
        seen.append([g["momentum"] for g in opt.param_groups])  # [SGD group, filter banks]
        opt.step()  # no gradients: nothing moves (the scheduler expects a step first)
        schedule.step_batch()
    start, peak, end = seen[0], seen[9], seen[-1]
    if cycle:
        assert start == pytest.approx([0.97, 0.97]) and peak == pytest.approx([0.8, 0.8], abs=1e-3)
        assert end[0] == end[1] > 0.96
    else:
        assert {m for row in seen for m in row} == {0.9}


def test_muon_fits_a_batch() -> None:
    """Forty Muon steps drive one fixed batch's loss far down (a wrong sign or scale would not)."""
    torch.manual_seed(0)
    cfg = build_config(overrides=[*FAST_NET, "optim.kind=muon", "optim.muon_lr=0.02"])
    model = model_from_config(cfg)
    opt = build_optimizer(model, cfg, sgd_param_groups(model, cfg))
    x, y = torch.randn(32, 3, 28, 28), torch.arange(32) % 8
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 1.8 and losses[-1] < 0.1, losses


def test_step_flops_are_what_torch_counts() -> None:
    """The FLOPs Muon adds per step, against torch's own counter run on the real iterations."""
    cfg = build_config(overrides=[*FAST_NET, "optim.kind=muon"])
    model = model_from_config(cfg)
    with FlopCounterMode(display=False) as counter:
        for w in filter_banks(model):
            orthogonalise(torch.randn(w.shape[0], w[0].numel()))
    assert step_flops(model, cfg) == counter.get_total_flops() > 1e9  # ~1 GFLOP at width 0.25
    assert step_flops(model, build_config(overrides=FAST_NET)) == 0.0
    three = build_config(overrides=[*FAST_NET, "optim.kind=muon", "optim.muon_ns_steps=3"])
    assert step_flops(model, three) == pytest.approx(step_flops(model, cfg) * 3 / 5)


def test_fewer_newton_schulz_steps_reach_the_optimiser() -> None:
    """optim.muon_ns_steps is what the filter banks' step iterates (a 3-step update differs
    from the 5-step one)."""
    torch.manual_seed(0)
    steps = {}
    for n in (3, 5):
        cfg = build_config(overrides=[*FAST_NET, "optim.kind=muon", f"optim.muon_ns_steps={n}"])
        torch.manual_seed(0)
        model = model_from_config(cfg)
        opt = build_optimizer(model, cfg, sgd_param_groups(model, cfg))
        assert opt.param_groups[-1]["ns_steps"] == n
        torch.manual_seed(1)
        torch.nn.functional.cross_entropy(
            model(torch.randn(8, 3, 28, 28)), torch.arange(8)
        ).backward()
        bank = filter_banks(model)[1]
        flat = bank.grad.reshape(bank.shape[0], -1).clone()
        before = bank.detach().clone()
        opt.step()
        scale = math.sqrt(max(1.0, flat.shape[0] / flat.shape[1])) * cfg.optim.muon_lr
        want = before * math.sqrt(bank.shape[0]) / before.norm() - scale * orthogonalise(
            flat, n
        ).view_as(bank)
        assert torch.allclose(bank.detach(), want, atol=1e-6)
        steps[n] = bank.detach().clone()
    assert (steps[3] - steps[5]).abs().max() > 1e-4


def test_optimiser_states_saved_before_ns_steps_resume_with_five() -> None:
    """A checkpoint's optimiser state from before optim.muon_ns_steps has no `ns_steps` in its
    groups; torch's load_state_dict takes the saved groups, so the step falls back to 5."""
    cfg = build_config(overrides=[*FAST_NET, "optim.kind=muon"])
    torch.manual_seed(0)
    model = model_from_config(cfg)
    opt = build_optimizer(model, cfg, sgd_param_groups(model, cfg))
    old = opt.state_dict()
    for group in old["param_groups"]:
        del group["ns_steps"]
    opt.load_state_dict(old)
    assert "ns_steps" not in opt.param_groups[-1]
    torch.nn.functional.cross_entropy(model(torch.randn(8, 3, 28, 28)), torch.arange(8)).backward()
    bank = filter_banks(model)[1]
    flat, before = bank.grad.reshape(bank.shape[0], -1).clone(), bank.detach().clone()
    opt.step()
    scale = math.sqrt(max(1.0, flat.shape[0] / flat.shape[1])) * cfg.optim.muon_lr
    want = before * math.sqrt(bank.shape[0]) / before.norm()
    want = want - scale * orthogonalise(flat, 5).view_as(bank)
    assert torch.allclose(bank.detach(), want, atol=1e-6)


def test_config_checks() -> None:
    assert build_config(overrides=FAST_NET).optim.kind == "sgd"
    with pytest.raises(ConfigError, match="optim.kind must be sgd"):
        build_config(overrides=["optim.kind=adam"])
    with pytest.raises(ConfigError, match="optim.muon_lr must be > 0"):
        build_config(overrides=["optim.kind=muon", "optim.muon_lr=0"])
    with pytest.raises(ConfigError, match="optim.muon_ns_steps must be >= 1"):
        build_config(overrides=["optim.kind=muon", "optim.muon_ns_steps=0"])
    with pytest.raises(ConfigError, match="base_momentum <= schedule.max_momentum"):
        build_config(overrides=["schedule.base_momentum=0.96", "schedule.max_momentum=0.95"])


def test_a_real_run_trains_with_muon_and_resumes(shared_data: Path, tmp_path: Path) -> None:
    args = ["--data", str(shared_data), "--subset", "128", "--quiet"]
    args += ["--set", "runtime.threads=1", "--set", "runtime.reports=false"]
    args += ["--set", "eval.tta=false", "--set", "eval.final_test=false"]
    args += ["--set", "optim.kind=muon", "--set", "optim.muon_lr=0.02"]
    assert main(["train", "--recipe", "fast", "--out", str(tmp_path), "--epochs", "1", *args]) == 0
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    groups = last["optimizer"]["param_groups"]
    assert [g["orthogonal"] for g in groups] == [False, True] and len(groups[1]["params"]) == 8
    assert last["config"]["optim"]["kind"] == "muon"
    banks = {k: v for k, v in last["model"].items() if v.ndim == 4}
    assert len(banks) == 8
    summary = json.loads((tmp_path / "summary.json").read_text())
    model = model_from_config(build_config(overrides=[*FAST_NET, "optim.kind=muon"]))
    steps = 128 // build_config(recipe="fast").optim.batch_size  # one epoch of 128 images
    optimiser = step_flops(model, build_config(overrides=[*FAST_NET, "optim.kind=muon"])) * steps
    assert summary["optimizer_pflop"] == pytest.approx(optimiser / 1e15, rel=1e-3)
    assert summary["train_pflop"] > summary["optimizer_pflop"] > 0
    for name, w in banks.items():  # held near norm sqrt(out) throughout
        assert w.norm().item() == pytest.approx(math.sqrt(w.shape[0]), rel=0.1), name
    # every parameter carries a momentum buffer into the checkpoint
    assert len(last["optimizer"]["state"]) == sum(len(g["params"]) for g in groups)
    # --resume rebuilds the same optimiser from the saved config and carries on
    assert main(["train", "--resume", str(tmp_path), "--epochs", "2", "--quiet"]) == 0
    resumed = json.loads((tmp_path / "summary.json").read_text())
    assert resumed["optimizer_pflop"] == pytest.approx(2 * summary["optimizer_pflop"], rel=1e-3)
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert last["epoch"] == 2 and [g["orthogonal"] for g in last["optimizer"]["param_groups"]] == [
        False,
        True,
    ]
