"""The model registry: every architecture builds, counts its FLOPs, trains, predicts and exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bloodmnist.config import DEFAULT_RECIPE, build_config
from bloodmnist.errors import ConfigError
from bloodmnist.model import ARCHS, build_model, model_from_config
from bloodmnist.model.flops import flops_per_image, train_pflop
from bloodmnist.model.resnet9 import ResNet9
from bloodmnist.training.optim import step_flops
from conftest import SHARED_DATA, describe, run_cli


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_arch_maps_images_to_logits(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, 5, 28).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 28, 28))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_resnet9_flops_by_hand() -> None:
    """Multiply and add counted apart: 2 * k*k * c_in * c_out * H*W per 3x3 convolution."""
    c = [32, 64, 128, 256]  # width 0.5

    def conv(c_in: int, c_out: int, hw: int) -> int:
        return 2 * 9 * c_in * c_out * hw * hw

    forward = (
        conv(3, c[0], 28)
        + conv(c[0], c[1], 28)
        + 2 * conv(c[1], c[1], 14)  # residual block after the first pool
        + conv(c[1], c[2], 14)
        + conv(c[2], c[3], 7)
        + 2 * conv(c[3], c[3], 3)  # residual block after the third pool (7 -> 3)
        + 2 * c[3] * 8  # the linear head
    )
    flops = flops_per_image(ResNet9(8, width=0.5), 28)
    assert flops["forward"] == forward
    assert 2.9 * forward < flops["train"] < 3.1 * forward  # backward ~ 2x forward
    assert train_pflop(flops["train"], 11959 * 10) == pytest.approx(0.0494, abs=5e-4)


def test_cover_pool_keeps_an_odd_maps_last_row_and_column() -> None:
    from bloodmnist.model.resnet9 import CoverPool

    x = torch.zeros(1, 1, 7, 7)
    x[0, 0, 6, 6] = 5.0  # the corner a 2x2/2 pooling of a 7x7 map never reads
    assert torch.nn.MaxPool2d(2)(x).max() == 0
    out = CoverPool()(x)
    assert out.shape == (1, 1, 3, 3) and out[0, 0, 2, 2] == 5.0 and out.sum() == 5.0
    even = torch.rand(2, 4, 14, 14)
    assert torch.equal(CoverPool()(even), torch.nn.MaxPool2d(2)(even))


def test_resnet9c_differs_from_resnet9_only_where_a_map_is_odd(tmp_path: Path) -> None:
    """Same weights: identical at 64 px (s2 stem: 32/16/8/4, all even), different at 28 px
    (7 -> 3); same FLOPs; the ONNX graph keeps the overlapping pool (parity with torch)."""
    import onnxruntime as ort

    from bloodmnist.inference.export import export_graph

    torch.manual_seed(0)
    for size, same in ((64, True), (28, False)):
        plain = build_model("resnet9", 8, size, width=0.25).eval()
        cover = build_model("resnet9c", 8, size, width=0.25).eval()
        cover.load_state_dict(plain.state_dict())  # pools have no weights: same tensors
        x = torch.rand(4, 3, size, size)
        with torch.no_grad():
            assert torch.equal(plain(x), cover(x)) is same, size
        assert flops_per_image(cover, size) == flops_per_image(plain, size)
    export_graph(cover, tmp_path / "c.onnx", 28)
    session = ort.InferenceSession(str(tmp_path / "c.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - cover(x).numpy()).max() < 1e-4
        assert np.abs(got - plain(x).numpy()).max() > 1e-3  # the cover pool, not the 2x2 one


def test_width_and_depth_knobs() -> None:
    small = ResNet9(8, width=0.25, depth=1)
    deep = ResNet9(8, width=0.25, depth=2)
    assert small.fc.in_features == 128
    n_small = sum(p.numel() for p in small.parameters())
    assert sum(p.numel() for p in deep.parameters()) > n_small
    f_small = flops_per_image(small)["forward"]
    assert flops_per_image(ResNet9(8, width=0.5))["forward"] == pytest.approx(4 * f_small, rel=0.02)


def test_config_names_the_arch_and_refuses_unknown_ones() -> None:
    cfg = build_config(overrides=["model.arch=resnet9", "model.width=0.25"])
    model = model_from_config(cfg)
    assert isinstance(model, ResNet9) and model.fc.in_features == 128
    with pytest.raises(ConfigError, match="model.arch must be one of .*resnet9"):
        build_config(overrides=["model.arch=vgg11"])
    with pytest.raises(ConfigError, match="model.width"):
        build_config(overrides=["model.width=0"])
    with pytest.raises(ConfigError, match="model.pretrained=PATH .* resnet18"):
        build_config(overrides=["model.arch=resnet9", "model.pretrained=weights.pth"])


def test_archs_without_imagenet_weights_download_nothing(tmp_path, monkeypatch) -> None:
    """`pretrained: auto` (the default) on resnet9 trains from scratch without a download try."""
    from bloodmnist.runtime import setup_runtime
    from bloodmnist.training import model_setup

    def no_download(*args, **kwargs):
        raise AssertionError("resolve_pretrained must not be called for resnet9")

    monkeypatch.setattr(model_setup, "resolve_pretrained", no_download)
    cfg = build_config(overrides=["model.arch=resnet9", "model.width=0.125"])
    model, info = model_setup.prepare_model(cfg, setup_runtime("cpu", "fp32", threads=1))
    assert isinstance(model, ResNet9) and info["used"] is False
    assert "no ImageNet weights exist for resnet9" in info["message"]


@pytest.mark.slow
def test_resnet9_trains_records_pflop_predicts_and_exports(shared_data: Path, tmp_path) -> None:
    run = tmp_path / "run"
    args = ["train", "--data", str(shared_data), "--out", str(run), "--subset", "128"]
    args += ["--epochs", "2", "--precision", "fp32", "--quiet", "--set", "runtime.threads=1"]
    args += ["--set", "model.width=0.25"]  # no --recipe: the CLI's default, fast (resnet9)
    args += ["--set", "runtime.reports=false", "--set", "augment.translate=2"]
    args += ["--set", "eval.compare_tta=false"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    summary = json.loads((run / "summary.json").read_text())
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert DEFAULT_RECIPE == "fast" and saved["model"]["arch"] == "resnet9"
    assert saved["eval"]["tta_mode"] == "dihedral16" and saved["train"]["ema_decay"] == 0.995
    # the recipe ships its final (annealed) epoch, whatever the validation accuracy did
    assert saved["train"]["select"] == "last" and summary["best_epoch"] == 2
    per_image = flops_per_image(ResNet9(8, width=0.25))["train"]
    assert summary["arch"] == "resnet9" and summary["train_images_seen"] == 2 * 128
    # plus Muon's matrix products (the recipe's optimiser): 2 epochs of 2 steps at batch 64
    muon = step_flops(ResNet9(8, width=0.25), build_config(recipe="fast")) * 4 / 1e15
    assert saved["optim"]["kind"] == "muon"
    assert summary["optimizer_pflop"] == pytest.approx(muon, rel=1e-3)
    assert summary["train_pflop"] == pytest.approx(per_image * 256 / 1e15 + muon, rel=1e-3)
    # eval.compare_tta=false: the recipe's own TTA only; the other modes are absent, not zero
    assert summary["tta_mode"] == "dihedral16" and summary["test_acc_tta"] is not None
    assert summary["val_acc_tta"] is not None
    others = ("reference7", "dihedral8", "dihedral16", "dihedral24")
    assert not [k for k in summary if k.endswith(tuple(f"_tta_{m}" for m in others))], summary
    with np.load(run / "predictions.npz") as pred_npz:
        assert "test_probs_tta" in pred_npz
        assert not [k for k in pred_npz.files if k.startswith("test_probs_tta_")]
    jpgs = sorted((SHARED_DATA / "pbc_sample").rglob("*.jpg"))[:8]
    pred = run_cli(["predict", str(run), *map(str, jpgs), "--precision", "fp32"], cwd=tmp_path)
    assert pred.returncode == 0, describe(pred)
    assert len(pred.stdout.strip().splitlines()) == 1 + len(jpgs)  # header + one row each
    onnx_out = tmp_path / "m.onnx"
    exp = run_cli(
        ["export", str(run), "--out", str(onnx_out), "--data", str(shared_data)], tmp_path
    )
    assert exp.returncode == 0, describe(exp)
    assert json.loads(exp.stdout)["parity"]["max_abs_diff_prob"] < 1e-3
