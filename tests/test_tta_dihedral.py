"""eval.tta_mode=dihedral8 / dihedral16: the dihedral poses (and their zooms), checked against
explicit rot90/flip/affine zoom by hand."""

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


def test_dihedral16_is_the_eight_poses_and_their_zooms() -> None:
    """The 8 poses at scale 1, then each zoomed by tta_scale: zooming about the centre commutes
    with quarter turns and flips, so it does not matter which comes first."""
    from bloodmnist.evaluation.predict import _affine

    model, x = _tiny_model(), _images()
    rt = Runtime(CPU, "fp32", False, 1)
    norm = Normalizer(IMAGENET_MEAN, IMAGENET_STD, CPU, False)
    cfg = EvalConfig(tta_mode="dihedral16", tta_scale=1.2)
    views = tta_views(cfg)
    assert len(views) == 16 and [n for n, _ in views][8:10] == ["rot0-zoom", "rot90-zoom"]
    idx = torch.arange(len(x))
    poses = [view(x, idx) for _, view in views[:8]]
    for (_, view), pose in zip(views[8:], poses, strict=True):
        zoomed_first = _affine(x, 1.2, 0.0)
        assert torch.allclose(view(x, idx), _affine(pose, 1.2, 0.0))
        first_then_pose = [v(zoomed_first, idx) for _, v in views[:8]]
        assert any(torch.allclose(view(x, idx), p, atol=1e-6) for p in first_then_pose)
    got = predict_probs(model, x, rt, norm, batch_size=4, tta=cfg)
    with torch.no_grad():
        by_hand = [torch.softmax(model(norm(p)), 1) for p in poses]
        by_hand += [torch.softmax(model(norm(_affine(p, 1.2, 0.0))), 1) for p in poses]
    np.testing.assert_allclose(got, torch.stack(by_hand).mean(0).numpy(), rtol=0, atol=2e-6)
    d8 = predict_probs(model, x, rt, norm, batch_size=4, tta=EvalConfig(tta_mode="dihedral8"))
    assert np.abs(got - d8).max() > 1e-4  # the zoomed half changes the answer


def test_dihedral24_adds_each_pose_blurred() -> None:
    from bloodmnist.evaluation.predict import gaussian_blur3

    x, idx = _images(2), torch.arange(2)
    d16 = tta_views(EvalConfig(tta_mode="dihedral16"))
    d24 = tta_views(EvalConfig(tta_mode="dihedral24", tta_blur_sigma=0.7))
    assert [n for n, _ in d24][:16] == [n for n, _ in d16] and len(d24) == 24
    for (name, view), (pose_name, pose) in zip(d24[16:], d24[:8], strict=True):
        assert name == f"{pose_name}-blur"
        assert torch.allclose(view(x, idx), gaussian_blur3(pose(x, idx), 0.7))


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

    # calibrated=False: predictions.npz keeps the raw softmax, and the default recipe has fitted
    # a temperature that predict would apply
    best = run / "checkpoints" / "best.pt"
    engine = TorchEngine(best, device="cpu", precision="fp32", calibrated=False)
    assert engine.cfg.eval.tta_mode == "dihedral8" and engine.info.temperature is not None
    data = load_npz(str(shared_data), 8, 128)
    # the validation accuracy of each TTA, for choosing a recipe's mode on validation
    val_tta = engine.probs(data.val.images, tta=True).argmax(1)
    assert summary["val_acc_tta"] == pytest.approx(float(np.mean(val_tta == data.val.labels)))
    assert 0 <= summary["val_acc_tta_reference7"] <= 1
    # only the two base modes are reported beside a run's own; evaluate --all-tta scores all
    assert not [k for k in summary if "dihedral16" in k or "dihedral24" in k]
    out = tmp_path / "val.json"
    args = ["evaluate", str(run), "--split", "val", "--all-tta", "--json", str(out)]
    result = run_cli([*args, "--precision", "fp32"], cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    scored = json.loads(out.read_text())
    assert scored["acc_tta"] == pytest.approx(summary["val_acc_tta"])  # own mode: dihedral8
    for mode in ("reference7", "dihedral16", "dihedral24"):
        assert 0 <= scored[f"acc_tta_{mode}"] <= 1
    assert scored["acc_tta_reference7"] == pytest.approx(summary["val_acc_tta_reference7"])
    bad = run_cli(["evaluate", str(run), "--no-tta", "--all-tta"], cwd=tmp_path)
    assert bad.returncode != 0 and "--all-tta" in bad.stderr
    images = data.test.images[:16]
    np.testing.assert_allclose(
        engine.probs(images, tta=True), preds["test_probs_tta"][:16], rtol=0, atol=1e-5
    )
