"""Speed work: batched TTA vs a per-image loop, the fast recipe (--recipe fast), one-cycle LR,
weight EMA and the dihedral (rot90) augmentation."""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bloodmnist.config import Config, EvalConfig, ScheduleConfig, build_config
from bloodmnist.data.augment import augment
from bloodmnist.data.loader import Normalizer, to_tensor
from bloodmnist.data.npz import load_npz
from bloodmnist.errors import ConfigError
from bloodmnist.evaluation.predict import predict_probs
from bloodmnist.model import build_model
from bloodmnist.runtime import Runtime
from bloodmnist.training.ema import make_ema
from bloodmnist.training.schedule import OneCycleSchedule, build_schedule
from conftest import describe, run_cli
from test_augment_tta import IDENTITY

CPU = torch.device("cpu")
FAST_YAML = resources.files("bloodmnist") / "configs" / "fast.yaml"


@pytest.fixture
def one_thread():
    """One intra-op thread: on a busy 2-core box, two-thread OpenMP regions of tiny batch-1
    convolutions wait on each other and the timing would measure the load, not batching."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_batched_tta_beats_a_per_image_loop_with_the_same_numbers(
    shared_data: Path, one_thread
) -> None:
    n = 16
    images = to_tensor(load_npz(shared_data, subset=n).test.images, CPU)
    torch.manual_seed(0)
    model = build_model("resnet18", 8).to(memory_format=torch.channels_last).eval()
    rt = Runtime(CPU, "fp32", True, 1)
    norm = Normalizer(Config().data.mean, Config().data.std, CPU, channels_last=True)
    predict_probs(model, images[:2], rt, norm, 1, tta=EvalConfig())  # warm-up, both shapes
    predict_probs(model, images, rt, norm, n, tta=EvalConfig())
    t0 = time.perf_counter()
    loop = predict_probs(model, images, rt, norm, batch_size=1, tta=EvalConfig())
    t1 = time.perf_counter()
    batched = predict_probs(model, images, rt, norm, batch_size=n, tta=EvalConfig())
    t2 = time.perf_counter()
    assert batched.shape == (n, 8)
    # seeded per-image noise and eval-mode BN: batching changes nothing but the speed
    np.testing.assert_allclose(batched, loop, atol=1e-4)
    assert (t2 - t1) < (t1 - t0), f"batched {t2 - t1:.2f}s vs per-image {t1 - t0:.2f}s"


def test_fast_recipe_values_and_precedence() -> None:
    cfg = build_config(recipe="fast")
    assert cfg.schedule.kind == "onecycle"
    # the recipe chosen on validation (docs/frontier.md): resnet9 at 0.25 width, v5's values
    # verbatim from the search's trial 17 (what the three seeds measured), and since v8 Muon
    # for the filters at batch 64 for 34 epochs (within 0.05 PFLOP with Muon's products)
    assert (cfg.model.arch, cfg.model.width, cfg.train.epochs) == ("resnet9", 0.25, 34)
    assert (cfg.optim.lr, cfg.optim.batch_size) == (0.07094416289643755, 64)
    assert (cfg.optim.kind, cfg.optim.muon_lr) == ("muon", 0.01)
    assert cfg.schedule.pct_start == 0.3721490805697818
    assert cfg.optim.weight_decay == 0.0002689150201906215
    assert cfg.train.ema_decay == 0.995 and cfg.train.label_smoothing == 0.18825357119346484
    assert cfg.augment.mixup_alpha == 0 and cfg.augment.translate == 0.0
    assert cfg.augment.rot90 and cfg.augment.hflip == 0.5 and cfg.augment.vflip == 0.5
    # v6: the TTA chosen on validation (docs/levers.md) and a temperature for predict/serve
    assert cfg.eval.tta_mode == "dihedral16" and cfg.optim.nesterov
    assert cfg.eval.temperature_scaling
    # no early stop can cut the one cycle short before its LR has annealed
    assert cfg.train.early_stop_patience > cfg.train.epochs
    # the recipe is only the base: flags and --set win
    cfg = build_config(flags={"train.epochs": 2}, overrides=["optim.lr=0.05"], recipe="fast")
    assert (cfg.train.epochs, cfg.optim.lr, cfg.schedule.kind) == (2, 0.05, "onecycle")
    assert build_config(recipe="fast", overrides=["optim.lr=0.01"]).optim.lr == 0.01
    assert build_config(recipe="reference") == Config()  # the reference stays the defaults
    # best: the fast recipe's settings (v8: Muon, batch 64) on the 0.5-width net (four times the
    # FLOPs per image) for 80 epochs, and its own TTA chosen on validation (24 views)
    best, fast = build_config(recipe="best"), build_config(recipe="fast")
    assert (best.model.arch, best.model.width, best.train.epochs) == ("resnet9", 0.5, 80)
    assert (best.optim.kind, best.optim.muon_lr, best.optim.batch_size) == ("muon", 0.01, 64)
    assert best.eval.tta_mode == "dihedral24"
    # both ship their last, annealed epoch (fast since v7, best since v6; docs/levers.md)
    assert (fast.train.select, best.train.select) == ("last", "last")
    assert best.train == dataclasses.replace(fast.train, epochs=80)
    assert dataclasses.replace(
        fast, model=best.model, runtime=best.runtime, train=best.train
    ) == dataclasses.replace(best, eval=dataclasses.replace(best.eval, tta_mode="dihedral16"))
    with pytest.raises(ConfigError, match="unknown recipe"):
        build_config(recipe="slow")
    with pytest.raises(ConfigError, match="schedule.kind"):
        build_config(overrides=["schedule.kind=cosine"])


def test_rot90_gives_exact_quarter_turns() -> None:
    cfg = dataclasses.replace(IDENTITY, rot90=True)
    x = torch.rand(32, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    out = augment(x, cfg, torch.Generator().manual_seed(1))
    turns = []
    for i in range(len(x)):
        err = [(out[i] - torch.rot90(x[i], k, dims=(1, 2))).abs().max().item() for k in range(4)]
        assert min(err) < 1e-4
        turns.append(int(np.argmin(err)))
    assert set(turns) == {0, 1, 2, 3}


def test_onecycle_schedule_peaks_anneals_and_resumes() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    cfg = ScheduleConfig(kind="onecycle", pct_start=0.25, div_factor=25.0, final_div_factor=1e3)
    sched = build_schedule(opt, cfg, epochs=4, steps_per_epoch=25)
    assert isinstance(sched, OneCycleSchedule)
    lrs = [sched.lr]
    for _ in range(120):  # 20 more than planned: the LR must stay at its final value
        opt.step()
        sched.step_batch()
        lrs.append(sched.lr)
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert max(lrs) == pytest.approx(0.1) and int(np.argmax(lrs)) == 24
    assert lrs[-1] == pytest.approx(0.1 / 25 / 1e3) and lrs[99] == lrs[-1]
    # a restored schedule continues where the saved one was
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    again = build_schedule(opt2, cfg, epochs=4, steps_per_epoch=25)
    again.load_state_dict(sched.state_dict())
    assert again.cycle.last_epoch == sched.cycle.last_epoch


def test_ema_averages_weights_and_batchnorm_buffers() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = make_ema(model, 0.9)
    assert make_ema(model, 0.0) is None
    start = model[0].weight.detach().clone()
    for _ in range(3):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model(torch.randn(4, 2))  # moves the BN running stats
        ema.update(model)
    # first update copies (start+1), then w_ema <- w_ema + 0.1 (w - w_ema): +1.1, then +1.29
    assert torch.allclose(ema.module[0].weight, start + 1.29, atol=1e-6)
    assert not torch.equal(ema.module[1].running_mean, torch.zeros(2))


@pytest.mark.slow
def test_cli_recipe_fast_trains_with_ema_and_onecycle(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "fast"
    args = ["train", "--recipe", "fast", "--data", str(shared_data), "--out", str(out)]
    args += ["--subset", "64", "--epochs", "2", "--pretrained", "none", "--quiet"]
    args += ["--set", "eval.tta=false", "--set", "optim.batch_size=32"]
    args += ["--set", "runtime.reports=false"]
    # the recipe leaves EMA and the rot90 poses off; switch them on to drive those code paths
    args += ["--set", "train.ema_decay=0.9", "--set", "augment.rot90=true"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    recipe = yaml.safe_load(FAST_YAML.read_text())
    assert saved["schedule"] == {**saved["schedule"], **recipe["schedule"]}
    assert saved["optim"]["lr"] == recipe["optim"]["lr"] and saved["schedule"]["kind"] == "onecycle"
    assert saved["augment"]["rot90"] is True and saved["train"]["ema_decay"] == 0.9
    assert saved["optim"]["batch_size"] == 32  # --set wins over the recipe
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    # `model` holds the EMA weights (what is tested); `train_model` the raw ones (for --resume)
    assert set(ckpt["model"]) == set(ckpt["train_model"])
    diff = (ckpt["model"]["fc.weight"] - ckpt["train_model"]["fc.weight"]).abs().max()
    assert diff > 0
    assert ckpt["schedule"]["onecycle"]["last_epoch"] == 4  # 2 epochs x 2 steps, per step
    with (out / "history.csv").open(newline="") as fh:
        lrs = [float(row["lr"]) for row in csv.DictReader(fh)]
    assert lrs[0] == pytest.approx(saved["optim"]["lr"] / saved["schedule"]["div_factor"])
    assert math.isfinite(lrs[1]) and lrs[1] > lrs[0]  # warming up


def _load_benchmark(name: str):
    """A script under benchmarks/ as a module (they are scripts, not part of the package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_roofline_flop_counts_match_the_hand_count_and_targets_follow() -> None:
    roofline = _load_benchmark("roofline")
    # Multiply-accumulates of one 28x28 image, by hand: stem 3->64 at 28x28; layer1 4 convs
    # 64->64 at 28x28; layer2/3 (14x14, 7x7) each 102,760,448 incl. the 1x1 downsample;
    # layer4 at 4x4 134,217,728; fc 512x8.
    stem = 28 * 28 * 3 * 64 * 9
    macs = stem + 4 * 28 * 28 * 64 * 64 * 9 + 2 * 102_760_448 + 134_217_728 + 512 * 8
    rt = Runtime(CPU, "fp32", channels_last=False, threads=1)
    flops = roofline.flops_per_image(rt)
    assert flops["forward"] == 2 * macs == 913_405_952
    # backward: weight grads everywhere, input grads everywhere but the stem (input needs none)
    assert flops["train"] == 2 * (3 * macs - stem)

    r = {
        "gflop_per_img_train": 2.0,
        "gflop_per_img_forward": 1.0,
        "reference_train_img_s": 10.0,
        "ceiling_gflop_s": 50.0,
    }
    need = roofline.targets(r)
    assert need["speedup_train_at_ceiling"] == pytest.approx(50.0 / 2.0 / 10.0)
    assert need["need_gflop_s_speedup_train"] == pytest.approx(2.2 * 10.0 * 2.0)
    assert need["need_gflop_s_tta_10s"] == pytest.approx(7 * 3421 / 10.0)
    run = 60 * (11959 * 2.0 + 1712 * 1.0) + 7 * 3421
    assert need["need_gflop_s_run_55min"] == pytest.approx(run / 3300)


def test_roofline_script_reports_consistent_rates(
    shared_data: Path, capsys: pytest.CaptureFixture
) -> None:
    roofline = _load_benchmark("roofline")
    argv = ["--data", str(shared_data), "--rounds", "1", "--batch", "4", "--matmul-size", "128"]
    argv += ["--threads", "1"]
    out = roofline.main(argv)
    assert out["threads"] == 1 and out["precision"] in ("fp32", "bf16")
    assert out["ceiling_gflop_s"] == max(out["kernel_gflop_s"].values()) > 0
    assert len(out["kernel_gflop_s"]) == 5 and out["train_img_s"] > 0
    assert out["reference_train_img_s"] > 0
    assert out["train_gflop_s"] == pytest.approx(out["train_img_s"] * out["gflop_per_img_train"])
    assert out["train_share_of_ceiling"] == pytest.approx(
        out["train_gflop_s"] / out["ceiling_gflop_s"]
    )
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith('{"gflop_per_img_train"')


def test_benchmark_timing_counts_cpu_and_pairs_ratios() -> None:
    timing = _load_benchmark("timing")
    # median of the per-rep ratios (pairs measured back to back), not a ratio of medians
    assert timing.ratio([2.0, 4.0, 30.0], [1.0, 2.0, 3.0]) == 2.0
    wall, cpu = timing.timed(lambda: sum(i * i for i in range(300_000)))
    assert wall > 0 and 0 < cpu < wall + 0.5  # one busy thread: CPU time close to wall time
    slept_wall, slept_cpu = timing.timed(lambda: time.sleep(0.2))
    assert slept_wall >= 0.2 and slept_cpu < 0.1  # waiting costs no CPU


def test_recipe_speed_variants_are_parsed_and_measured() -> None:
    bench = _load_benchmark("recipe_speed")
    args = bench.argparse.Namespace(recipe="fast", variant=["v3=model.width=0.35,train.epochs=20"])
    assert bench._variants(args) == {"fast": "", "v3": "model.width=0.35,train.epochs=20"}
    rate = bench.measure("fast", "fp32", steps=1, threads=1, sets="model.width=0.125")
    assert 0 < rate < 1e6
    with pytest.raises(ConfigError, match="model.width"):
        bench.measure("fast", "fp32", steps=1, threads=1, sets="model.width=0")
