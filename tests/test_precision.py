"""Precision per purpose, and the bf16 code path forced on every machine.

`auto` depends on the CPU for training (bf16 only with AVX512-BF16/AMX) but never for inference
on a CPU (fp32), so predictions do not depend on the CPU they ran on. bf16 is forced here on a
tiny model: on AVX2-only CPUs oneDNN emulates it (about 10x slower), so it must stay tiny.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bloodmnist.cli.main import main
from bloodmnist.config import AugmentConfig, Config, EvalConfig
from bloodmnist.data.loader import Normalizer, TrainBatches, to_tensor
from bloodmnist.evaluation.predict import predict_probs
from bloodmnist.model import build_model
from bloodmnist.runtime import Runtime, cpu_has_fast_bf16, resolve_precision, setup_runtime
from bloodmnist.training.checkpoint import save_checkpoint
from bloodmnist.training.loop import EpochStats, train_one_epoch
from conftest import describe, run_cli

CPU = torch.device("cpu")
#: bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.0039); after a few layers and a softmax,
#: probabilities move by up to ~1e-2 (measured 0.0078 on the predict test model).
BF16_PROB_ATOL = 3e-2


def test_auto_means_fp32_for_inference_on_any_cpu() -> None:
    assert resolve_precision("auto", CPU, "inference") == "fp32"
    expected_train = "bf16" if cpu_has_fast_bf16() else "fp32"
    assert resolve_precision("auto", CPU, "train") == expected_train
    assert resolve_precision("auto", CPU) == expected_train  # training is the default purpose
    for explicit in ("fp32", "bf16", "fp16"):  # an explicit request is never changed
        assert resolve_precision(explicit, CPU, "inference") == explicit
        assert resolve_precision(explicit, CPU, "train") == explicit
    with pytest.raises(ValueError, match="purpose"):
        resolve_precision("auto", CPU, "serving")
    rt = setup_runtime("cpu", "auto", threads=1, purpose="inference")
    assert rt.precision == "fp32" and "precision=fp32" in rt.describe()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_keeps_mixed_precision_for_inference() -> None:
    gpu = torch.device("cuda", 0)
    amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert resolve_precision("auto", gpu, "inference") == amp
    assert resolve_precision("auto", gpu, "train") == amp


def _tiny_model() -> nn.Module:
    """~3k parameters: conv, BatchNorm (autocast keeps it fp32), pooling, linear head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 8),
    )


def test_bf16_train_step_and_prediction_on_a_tiny_model() -> None:
    """The real train_one_epoch and predict_probs under bf16 autocast, on any CPU."""
    rng = np.random.default_rng(0)
    images = to_tensor(rng.integers(0, 256, (32, 28, 28, 3), dtype=np.uint8), CPU)
    labels = torch.from_numpy(rng.integers(0, 8, 32)).long()
    cfg = Config()
    bf16 = Runtime(CPU, "bf16", channels_last=True, threads=torch.get_num_threads())
    fp32 = Runtime(CPU, "fp32", channels_last=True, threads=torch.get_num_threads())
    norm = Normalizer(cfg.data.mean, cfg.data.std, CPU, channels_last=True)
    model = _tiny_model().to(memory_format=torch.channels_last)
    seen: list[torch.dtype] = []
    hook = model[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))

    ref = predict_probs(model, images, fp32, norm, batch_size=16)
    got = predict_probs(model, images, bf16, norm, batch_size=16)
    assert seen == [torch.float32] * 2 + [torch.bfloat16] * 2  # autocast really ran the convs
    assert got.dtype == np.float32 and got.shape == (32, 8)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)  # softmax runs in fp32
    diff = np.abs(got - ref).max()
    assert 0 < diff < BF16_PROB_ATOL, diff  # bf16 differs from fp32, within its tolerance
    tta = predict_probs(model, images[:4], bf16, norm, batch_size=4, tta=EvalConfig())
    np.testing.assert_allclose(tta.sum(1), 1.0, atol=1e-5)

    batches = TrainBatches(images, labels, 16, AugmentConfig(), norm, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = model[-1].weight.detach().clone()
    gen = torch.Generator().manual_seed(0)
    stats = train_one_epoch(model, batches, opt, bf16, 1, gen, np.random.default_rng(0), 0.0)
    hook.remove()
    assert stats.samples == 32 and np.isfinite(stats.loss) and 0 <= stats.acc <= 1
    assert model[-1].weight.dtype == torch.float32  # autocast never casts the weights
    assert not torch.equal(model[-1].weight, before)  # the bf16 step did update them


class _Tiny(nn.Module):
    """Multiplies its input by 1e-7: the gradients that reach the layer before it are ~1e-9,
    below fp16's smallest number (6e-8), as tiny gradients are deep in real networks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1e-7


def _head_step(
    precision: str, scaled: bool, init_scale: float | None = None
) -> tuple[torch.Tensor, EpochStats]:
    """How much one epoch (2 steps) of the real train_one_epoch moves the head's weights, and
    its stats."""
    rng = np.random.default_rng(0)
    images = to_tensor(rng.integers(0, 256, (32, 28, 28, 3), dtype=np.uint8), CPU)
    labels = torch.from_numpy(rng.integers(0, 8, 32)).long()
    cfg = Config()
    rt = Runtime(CPU, precision, channels_last=False, threads=torch.get_num_threads())
    norm = Normalizer(cfg.data.mean, cfg.data.std, CPU, channels_last=False)
    model = nn.Sequential(*_tiny_model(), _Tiny())
    before = model[-2].weight.detach().clone()
    batches = TrainBatches(images, labels, 16, AugmentConfig(), norm, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=1e5)  # a visible step from ~1e-9 gradients
    gen = torch.Generator().manual_seed(0)
    scaler = rt.grad_scaler() if scaled else None
    if init_scale is not None:  # e.g. so high that the scaled fp16 gradients overflow
        scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    args = (model, batches, opt, rt, 1, gen, np.random.default_rng(0), 0.0)
    stats = train_one_epoch(*args, scaler=scaler)
    assert np.isfinite(stats.loss)
    return model[-2].weight.detach() - before, stats


def test_fp16_training_scales_the_loss_so_small_gradients_survive() -> None:
    """fp16 (what `auto` picks on GPUs without bf16) with the runtime's GradScaler takes the
    step fp32 takes; without it the head's gradients underflow to zero and it does not move."""
    assert Runtime(CPU, "bf16", False, 1).grad_scaler() is None
    assert Runtime(CPU, "fp32", False, 1).grad_scaler() is None
    fp32, plain = _head_step("fp32", scaled=False)
    with_scaler, stats = _head_step("fp16", scaled=True)
    without, _ = _head_step("fp16", scaled=False)
    assert plain.skipped == 0 and stats.skipped == 0
    assert fp32.abs().max() > 1e-4
    # fp16's 11-bit mantissa: within a few per cent of the fp32 step
    torch.testing.assert_close(with_scaler, fp32, rtol=0.05, atol=0.05 * fp32.abs().max().item())
    assert torch.count_nonzero(without) == 0
    # a skipped first step then steps the schedule before the optimiser: torch's warning
    # about that order is silenced with the scaler (the schedule runs on, as in torch's AMP)
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Runtime(CPU, "fp16", False, 1).grad_scaler()
        schedule.step()
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]


def test_steps_the_fp16_scaler_skips_are_counted() -> None:
    """A scale so high that the fp16 gradients overflow: GradScaler skips both steps (the head
    does not move) and lowers the scale; the epoch's stats count them (the trainer warns)."""
    moved, stats = _head_step("fp16", scaled=True, init_scale=2.0**40)
    assert stats.skipped == 2 and torch.count_nonzero(moved) == 0


def test_an_fp16_run_saves_its_loss_scale_and_resumes_with_it(shared_data: Path, tmp_path) -> None:
    """The scaler's state (scale, steps since it last changed) is in last.pt, and a resumed
    run carries on from it rather than from a fresh scaler's 2^16."""
    args = ["--data", str(shared_data), "--subset", "128", "--quiet", "--precision", "fp16"]
    args += ["--set", "runtime.threads=1", "--set", "runtime.reports=false"]
    args += ["--set", "eval.tta=false", "--set", "eval.final_test=false"]
    assert main(["train", "--recipe", "fast", "--out", str(tmp_path), "--epochs", "1", *args]) == 0
    last = tmp_path / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["config"]["runtime"]["precision"] == "fp16"
    assert set(ckpt["grad_scaler"]) >= {"scale", "_growth_tracker"}
    assert ckpt["grad_scaler"]["scale"] <= 2.0**16
    ckpt["grad_scaler"]["scale"] = 256.0  # as if the first epoch had backed off 8 times
    save_checkpoint(ckpt, last)
    assert main(["train", "--resume", str(tmp_path), "--epochs", "2", "--quiet"]) == 0
    resumed = torch.load(last, weights_only=False)["grad_scaler"]
    # 256 or lower (an overflow halves it; growing needs 2000 clean steps): not 2^16 again
    assert resumed["scale"] <= 256.0


@pytest.fixture(scope="module")
def checkpoint(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight ResNet-18 checkpoint whose config points at 32 real test images."""
    torch.manual_seed(0)
    cfg = Config()
    cfg.data.path, cfg.data.subset, cfg.model.pretrained = str(shared_data), 32, "none"
    path = tmp_path_factory.mktemp("prec") / "checkpoints" / "best.pt"
    model = build_model("resnet18", cfg.model.num_classes)
    save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(), "epoch": 1}, path)
    return path


def test_evaluate_defaults_to_fp32_on_cpu_and_honours_bf16(checkpoint: Path, tmp_path) -> None:
    """Same numbers from `evaluate` on every CPU; bf16 only when asked for."""
    base = ["evaluate", str(checkpoint), "--no-tta", "--device", "cpu"]
    default = run_cli(base, cwd=tmp_path)
    assert default.returncode == 0, describe(default)
    out = json.loads(default.stdout)
    assert out["precision"] == "fp32" and out["n"] == 32
    forced = run_cli([*base, "--precision", "bf16"], cwd=tmp_path)
    assert forced.returncode == 0, describe(forced)
    assert json.loads(forced.stdout)["precision"] == "bf16"


def test_predict_defaults_to_fp32_on_cpu(checkpoint: Path, shared_data: Path, tmp_path) -> None:
    pngs = []
    for i, img in enumerate(np.load(shared_data)["test_images"][:4]):
        pngs.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(pngs[-1])
    base = ["predict", str(checkpoint), *map(str, pngs), "--device", "cpu", "--quiet"]
    docs = {}
    for prec in (None, "bf16"):
        out = tmp_path / f"{prec}.json"
        extra = ["--precision", prec] if prec else []
        result = run_cli([*base, *extra, "--out", str(out)], cwd=tmp_path)
        assert result.returncode == 0, describe(result)
        docs[prec] = json.loads(out.read_text())
    assert docs[None]["precision"] == "fp32" and docs["bf16"]["precision"] == "bf16"
    names = docs[None]["class_names"]
    p32, p16 = (
        np.array([[r["probs"][n] for n in names] for r in docs[k]["results"]]) for k in docs
    )
    assert np.abs(p32 - p16).max() < BF16_PROB_ATOL
