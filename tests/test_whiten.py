"""resnet9w's patch-whitening layer: it whitens, it is fitted once per run, it ships in the
checkpoint, and predict/export use it without data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bloodmnist.config import build_config
from bloodmnist.data.loader import Normalizer, to_tensor
from bloodmnist.model import build_model
from bloodmnist.model.whiten import PatchWhitening, fit_to_data
from conftest import SHARED_DATA, describe, run_cli


def smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    """Random images with strongly correlated neighbouring pixels (blurred noise), like cells."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 3, 20, 20, generator=gen)
    blur = torch.ones(3, 1, 5, 5) / 25
    return F.conv2d(F.pad(noise, (2, 2, 2, 2), mode="reflect"), blur, groups=3) * 3


def patch_cov(x: torch.Tensor) -> torch.Tensor:
    patches = F.unfold(x.double(), 3).transpose(1, 2).reshape(-1, 27)
    return torch.cov(patches.T)


def test_fitted_filters_whiten_the_patches() -> None:
    x = smooth_images(400)
    layer = PatchWhitening(eps=1e-6)
    before = patch_cov(x)
    assert before.diag().min() > 0.2 and (before - torch.diag(before.diag())).abs().max() > 0.2
    eigvals = layer.fit(x)
    assert torch.all(eigvals[:-1] >= eigvals[1:])  # largest first
    out = layer(x)[:, :, 1:-1, 1:-1]  # interior pixels: the patches the fit saw
    cov = torch.cov(out.permute(0, 2, 3, 1).reshape(-1, 27).double().T)
    assert torch.allclose(cov, torch.eye(27, dtype=torch.float64), atol=1e-3)
    # eps damps the directions with little variance instead of blowing up their noise
    damped = PatchWhitening(eps=1.0)
    damped.fit(x)
    out = damped(x)[:, :, 1:-1, 1:-1].permute(0, 2, 3, 1).reshape(-1, 27).double()
    var = out.var(0).tolist()
    assert var[0] == pytest.approx(float(eigvals[0] / (eigvals[0] + 1)), rel=1e-3)
    assert var[-1] == pytest.approx(float(eigvals[-1] / (eigvals[-1] + 1)), rel=1e-2)
    assert var[-1] < 0.5


def test_unfitted_layer_extracts_patches_and_fit_is_deterministic() -> None:
    x = smooth_images(8)
    unfitted = PatchWhitening()(x)
    assert torch.allclose(unfitted[:, 13], x[:, 1])  # channel 13: centre pixel of channel G
    a, b = PatchWhitening(), PatchWhitening()
    a.fit(x[:6]), b.fit(x[:6].clone())
    assert torch.equal(a.weight, b.weight)


def test_resnet9w_is_a_registry_entry_with_the_layer_in_its_state_dict() -> None:
    model = build_model("resnet9w", 8, 28, width=0.25)
    keys = model.state_dict().keys()
    assert "features.0.0.weight" in keys  # the whitening buffer travels with the weights
    params = {id(p) for p in model.parameters()}
    whiten = model.features[0][0]
    assert isinstance(whiten, PatchWhitening) and id(whiten.weight) not in params  # never trained
    assert fit_to_data(model, smooth_images(16, seed=1).expand(-1, 3, -1, -1))
    assert not fit_to_data(build_model("resnet9", 8, 28, width=0.25), smooth_images(4))


@pytest.mark.slow
def test_a_resnet9w_run_fits_once_and_predict_export_use_the_checkpoint(
    shared_data: Path, tmp_path
) -> None:
    run = tmp_path / "run"
    args = ["train", "--data", str(shared_data), "--out", str(run), "--subset", "96"]
    args += ["--epochs", "1", "--precision", "fp32", "--quiet", "--set", "runtime.threads=1"]
    args += ["--set", "model.arch=resnet9w", "--set", "model.width=0.125"]
    args += ["--set", "runtime.reports=false", "--set", "eval.compare_tta=false"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    assert "patch whitening fitted to 96 training images" in (run / "train.log").read_text()
    saved = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model"]
    cfg = build_config(recipe="fast")
    images = np.load(shared_data)["train_images"][:96]
    norm = Normalizer(cfg.data.mean, cfg.data.std, torch.device("cpu"), channels_last=False)
    expected = PatchWhitening()
    expected.fit(norm(to_tensor(images, torch.device("cpu"))))
    assert torch.allclose(saved["features.0.0.weight"], expected.weight, atol=1e-6)
    jpgs = sorted((SHARED_DATA / "pbc_sample").rglob("*.jpg"))[:4]
    pred = run_cli(["predict", str(run), *map(str, jpgs), "--precision", "fp32"], cwd=tmp_path)
    assert pred.returncode == 0, describe(pred)
    onnx_out = tmp_path / "m.onnx"
    exp = run_cli(
        ["export", str(run), "--out", str(onnx_out), "--data", str(shared_data)], tmp_path
    )
    assert exp.returncode == 0, describe(exp)
    assert json.loads(exp.stdout)["parity"]["max_abs_diff_prob"] < 1e-3
