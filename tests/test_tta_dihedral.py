"""eval.tta_mode=dihedral8: the 8 dihedral poses, checked against explicit rot90/flip by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bloodmnist.config import IMAGENET_MEAN, IMAGENET_STD, EvalConfig, build_config
from bloodmnist.data.loader import Normalizer
from bloodmnist.errors import ConfigError
from bloodmnist.evaluation.predict import predict_probs, tta_views
from bloodmnist.model import build_model
from bloodmnist.runtime import Runtime
from conftest import describe, run_cli

CPU = torch.device("cpu")
TINY = ["--set", "model.arch=resnet9", "--set", "model.width=0.125"]


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet9", num_classes=8, size=28, width=0.125).eval()
    # Non-trivial BN statistics so eval-mode outputs depend on the input pose.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _images(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 3, 28, 28, generator=torch.Generator().manual_seed(1))


def test_dihedral8_equals_mean_softmax_over_explicit_poses() -> None:
    model, x = _tiny_model(), _images()
    rt = Runtime(CPU, "fp32", False, 1)
    norm = Normalizer(IMAGENET_MEAN, IMAGENET_STD, CPU, False)
    got = predict_probs(model, x, rt, norm, batch_size=4, tta=EvalConfig(tta_mode="dihedral8"))
    poses = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    poses += [torch.rot90(torch.flip(x, dims=(3,)), k, dims=(2, 3)) for k in range(4)]
    with torch.no_grad():
        by_hand = torch.stack([torch.softmax(model(norm(p)), dim=1) for p in poses]).mean(0)
    np.testing.assert_allclose(got, by_hand.numpy(), rtol=0, atol=2e-6)
    assert got.shape == (6, 8)
    plain = predict_probs(model, x, rt, norm, batch_size=4)
    assert np.abs(got - plain).max() > 1e-3  # the poses do change this model's answer


def test_dihedral_views_are_the_eight_distinct_poses() -> None:
    x = _images(2)
    views = tta_views(EvalConfig(tta_mode="dihedral8"))
    idx = torch.arange(2)
    outs = [view(x, idx) for _, view in views]
    assert [name for name, _ in views][:2] == ["rot0", "rot90"] and len(views) == 8
    assert torch.equal(outs[0], x)  # identity first
    for i in range(8):
        for j in range(i + 1, 8):
            assert not torch.equal(outs[i], outs[j]), (views[i][0], views[j][0])
    # The reference mode is untouched: its 7 views in their order.
    ref = [name for name, _ in tta_views(EvalConfig())]
    assert ref == ["identity", "hflip", "translate", "zoom", "blur", "noise", "vflip"]


def test_tta_mode_is_validated() -> None:
    assert build_config().eval.tta_mode == "reference7"
    with pytest.raises(ConfigError, match="eval.tta_mode"):
        build_config(overrides=["eval.tta_mode=dihedral9"])


def test_dihedral_run_records_both_tta_modes_and_predict_uses_them(
    shared_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    args = ["train", "--data", str(shared_data), "--out", str(run), "--subset", "128"]
    args += ["--epochs", "3", "--precision", "fp32", "--pretrained", "none", "--quiet"]
    args += [*TINY, "--set", "runtime.threads=1", "--set", "eval.tta_mode=dihedral8"]
    args += ["--set", "train.select=last", "--set", "optim.lr=0.3"]  # val acc jumps around
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tta_mode"] == "dihedral8"
    # train.select=last: best.pt is the final epoch whatever its validation accuracy
    assert summary["best_epoch"] == 3 and not summary["stopped_early"]
    assert torch.load(run / "checkpoints" / "best.pt", weights_only=True)["epoch"] == 3
    preds = np.load(run / "predictions.npz")
    labels = preds["test_labels"]
    for key, probs in (
        ("test_acc_tta", preds["test_probs_tta"]),
        ("test_acc_tta_reference7", preds["test_probs_tta_reference7"]),
    ):
        assert summary[key] == pytest.approx(float(np.mean(probs.argmax(1) == labels)))
    assert not np.allclose(preds["test_probs_tta"], preds["test_probs_tta_reference7"])
    assert (run / "report.html").is_file() and (run / "figures" / "confusion_matrix.png").is_file()

    # predict --tta (TorchEngine) takes the checkpoint's mode: its probabilities for test
    # images are the run's saved dihedral TTA probabilities.
    from bloodmnist.data.npz import load_npz
    from bloodmnist.inference.torch_engine import TorchEngine

    engine = TorchEngine(run / "checkpoints" / "best.pt", device="cpu", precision="fp32")
    assert engine.cfg.eval.tta_mode == "dihedral8"
    data = load_npz(str(shared_data), 8, 128)
    # the validation accuracy of each TTA, for choosing a recipe's mode on validation
    val_tta = engine.probs(data.val.images, tta=True).argmax(1)
    assert summary["val_acc_tta"] == pytest.approx(float(np.mean(val_tta == data.val.labels)))
    assert 0 <= summary["val_acc_tta_reference7"] <= 1
    images = data.test.images[:16]
    np.testing.assert_allclose(
        engine.probs(images, tta=True), preds["test_probs_tta"][:16], rtol=0, atol=1e-5
    )
