"""Batched training augmentation and the 7-view test-time augmentation: exact, seeded, bounded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bloodmnist.config import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, EvalConfig
from bloodmnist.data.augment import _RGB_FROM_HED, augment, geometry_matrices, mixup, stain_jitter
from bloodmnist.data.loader import Normalizer
from bloodmnist.evaluation.predict import gaussian_blur3, predict_probs, tta_views
from bloodmnist.model import build_model
from bloodmnist.runtime import Runtime

CPU = torch.device("cpu")
IDENTITY = AugmentConfig(
    hflip=0.0,
    vflip=0.0,
    rotation=0.0,
    brightness=0.0,
    contrast=0.0,
    saturation=0.0,
    crop_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
)


def _images(n: int = 8, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0,1] (blurred noise, so resampling changes values)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 28, 28, generator=gen)
    return torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_augment_is_determined_by_the_generator() -> None:
    x, cfg = _images(), AugmentConfig()
    a = augment(x.clone(), cfg, _gen(1))
    b = augment(x.clone(), cfg, _gen(1))
    c = augment(x.clone(), cfg, _gen(2))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.05
    assert (a - x).abs().max() > 0.05  # the default recipe does change images
    assert a.shape == x.shape and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1


def test_augment_range_with_strong_settings() -> None:
    cfg = AugmentConfig(rotation=45.0, brightness=0.9, contrast=0.9, saturation=0.9, vflip=0.5)
    x = torch.cat([torch.zeros(2, 3, 28, 28), torch.ones(2, 3, 28, 28), _images(4)])
    out = augment(x, cfg, _gen(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


def test_identity_config_reproduces_input() -> None:
    x = _images()
    out = augment(x.clone(), IDENTITY, _gen(0))
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)
    mat = geometry_matrices(5, IDENTITY, _gen(0), CPU)
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(5, 2, 3)
    torch.testing.assert_close(mat, expected, rtol=0, atol=1e-6)


def _densities(x: torch.Tensor) -> torch.Tensor:
    """Haematoxylin/eosin/DAB optical densities, computed here independently (numpy, float64)."""
    od = -np.log(np.clip(x.double().numpy(), 1e-6, None))
    return torch.from_numpy(np.einsum("nchw,cd->ndhw", od, np.linalg.inv(_RGB_FROM_HED)))


def test_stain_jitter_scales_and_shifts_each_stain() -> None:
    x = _images(4).clamp(0.05, 1)  # away from the 1e-6 floor: the densities are exact there
    same = stain_jitter(x, torch.ones(4, 3), torch.zeros(4, 3))
    torch.testing.assert_close(same, x, rtol=0, atol=1e-5)  # the identity round-trips
    scale = torch.tensor([[1.1, 1.0, 1.0], [1.0, 0.9, 1.0], [1.0, 1.0, 1.0], [0.95, 1.05, 1.0]])
    shift = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.02], [0.03, -0.03, 0.0], [0.0, 0.0, 0.0]])
    out = stain_jitter(x, scale, shift)
    inside = ((out > 1e-4) & (out < 1 - 1e-4)).all(dim=1, keepdim=True)  # not clipped
    want = _densities(x) * scale.double()[:, :, None, None] + shift.double()[:, :, None, None]
    got = _densities(out)
    assert inside.float().mean() > 0.9
    err = (got - want).abs().masked_select(inside.expand_as(got))
    assert err.max() < 1e-4, err.max()
    # more haematoxylin (image 0) darkens it; image 2 (H up, E down) changes, image by image
    assert out[0].mean() < x[0].mean() and (out[2] - x[2]).abs().max() > 0.01


def test_stain_jitter_works_in_natural_log_optical_density() -> None:
    """A pure-haematoxylin pixel of density 0.5 (I = exp(-0.5 * h), h its RGB stain vector),
    shifted by +0.1, is exp(-0.6 * h): the shift is in -ln(I) units (Tellez et al.'s)."""
    h = torch.tensor(_RGB_FROM_HED[0])
    x = torch.exp(-0.5 * h).view(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()
    out = stain_jitter(x, torch.ones(1, 3), torch.tensor([[0.1, 0.0, 0.0]]))
    torch.testing.assert_close(out[0, :, 0, 0], torch.exp(-0.6 * h), rtol=0, atol=1e-5)


def test_stain_augment_is_opt_in_seeded_and_bounded() -> None:
    x = _images(6)
    plain = augment(x.clone(), IDENTITY, _gen(3))
    stained = AugmentConfig(**{**IDENTITY.__dict__, "stain": 0.1})
    a, b = augment(x.clone(), stained, _gen(3)), augment(x.clone(), stained, _gen(3))
    torch.testing.assert_close(plain, x, rtol=0, atol=1e-5)  # stain 0: nothing drawn or changed
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    per_image = (a - x).abs().flatten(1).mean(1)
    assert (per_image > 1e-3).all() and per_image.std() > 0  # every image, each differently


def test_hflip_one_is_an_exact_mirror() -> None:
    x = _images()
    cfg = AugmentConfig(**{**IDENTITY.__dict__, "hflip": 1.0})
    torch.testing.assert_close(augment(x.clone(), cfg, _gen(0)), x.flip(3), rtol=0, atol=1e-5)
    mat = geometry_matrices(3, cfg, _gen(0), CPU)
    expected = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(3, 2, 3)
    torch.testing.assert_close(mat, expected, rtol=0, atol=1e-6)
    vcfg = AugmentConfig(**{**IDENTITY.__dict__, "vflip": 1.0})
    torch.testing.assert_close(augment(x.clone(), vcfg, _gen(0)), x.flip(2), rtol=0, atol=1e-5)


def test_geometry_matrices_follow_the_recipe() -> None:
    n, cfg = 4000, AugmentConfig()  # crop scale 0.9-1, ratio 3/4-4/3, hflip 0.5, rotation 10
    mat = geometry_matrices(n, cfg, _gen(3), CPU)
    assert mat.shape == (n, 2, 3)
    w = mat[:, :, 0].norm(dim=1)  # column norms are the crop's width and height fractions
    h = mat[:, :, 1].norm(dim=1)
    assert (w <= 1 + 1e-6).all() and (h <= 1 + 1e-6).all()
    area = w * h
    assert area.min() > 0.9 * 0.86 and area.max() <= 1 + 1e-6  # clamping trims a little
    assert ((area > 0.9 - 1e-6) & (area < 1 - 1e-6)).float().mean() > 0.5
    # crop centres keep the crop inside the image
    assert (mat[:, 0, 2].abs() <= 1 - w + 1e-6).all() and (mat[:, 1, 2].abs() <= 1 - h + 1e-6).all()
    fx = torch.sign(mat[:, 0, 0])  # cos(theta) > 0 for |theta| <= 10 deg
    assert 0.45 < (fx < 0).float().mean() < 0.55
    assert (mat[:, 1, 1] > 0).all()  # vflip is 0 by default
    theta = torch.atan2(mat[:, 1, 0] * fx, mat[:, 0, 0] * fx) * 180 / math.pi
    assert theta.abs().max() <= 10 + 1e-4 and theta.abs().max() > 9
    assert theta.mean().abs() < 0.5
    det = mat[:, 0, 0] * mat[:, 1, 1] - mat[:, 0, 1] * mat[:, 1, 0]
    torch.testing.assert_close(det, area * fx, rtol=1e-5, atol=1e-6)


def test_mixup() -> None:
    x, y = _images(6), torch.arange(6)
    same_x, same_y, lam = mixup(x, y, 0.0, np.random.default_rng(0), _gen(0))
    assert lam == 1.0 and same_x is x and same_y is y
    mixed, partner, lam = mixup(x, y, 0.001, np.random.default_rng(0), _gen(0))
    assert 0 <= lam <= 1 and sorted(partner.tolist()) == list(range(6))
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[partner])


# -- test-time augmentation --------------------------------------------------------------------


def _small_net() -> torch.nn.Module:
    """A tiny seeded CNN: the TTA logic under test does not depend on the network's size."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, stride=2),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 14 * 14, 8),
    ).eval()


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    """Seeded adapted ResNet-18 whose BatchNorm statistics come from one batch (sane logits)."""
    torch.manual_seed(0)
    net = build_model("resnet18", 8)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    net.train()
    with torch.no_grad():
        net(_norm()(_images(8, seed=5)))
    return net.eval()


def _rt() -> Runtime:
    return Runtime(CPU, "fp32", True, torch.get_num_threads())


def _norm() -> Normalizer:
    return Normalizer(IMAGENET_MEAN, IMAGENET_STD, CPU, True)


def test_tta_is_reproducible_and_batch_size_independent() -> None:
    model, x = _small_net(), _images(20, seed=1)  # batch 7 -> chunks of 7, 7 and 6
    a = predict_probs(model, x, _rt(), _norm(), batch_size=7, tta=EvalConfig())
    b = predict_probs(model, x, _rt(), _norm(), batch_size=7, tta=EvalConfig())
    c = predict_probs(model, x, _rt(), _norm(), batch_size=512, tta=EvalConfig())
    assert a.shape == (20, 8) and a.dtype == np.float32
    assert np.array_equal(a, b)  # bit-identical
    np.testing.assert_allclose(a, c, rtol=0, atol=1e-5)  # noise seeded per sample index
    np.testing.assert_allclose(a.sum(axis=1), 1.0, atol=1e-5)
    assert a.min() >= 0
    plain = predict_probs(model, x, _rt(), _norm(), batch_size=7)
    assert np.abs(plain - a).max() > 1e-4  # TTA really changes the numbers


def test_tta_with_resnet_is_batch_size_independent(resnet: torch.nn.Module) -> None:
    x = _images(4, seed=3)
    a = predict_probs(resnet, x, _rt(), _norm(), batch_size=3, tta=EvalConfig())
    c = predict_probs(resnet, x, _rt(), _norm(), batch_size=512, tta=EvalConfig())
    np.testing.assert_allclose(a, c, rtol=0, atol=1e-5)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, atol=1e-5)
    assert a.max() < 0.999  # not saturated, so the comparison means something


def test_tta_is_the_mean_of_the_seven_views() -> None:
    model, x = _small_net(), _images(5, seed=2)
    cfg = EvalConfig()
    views = tta_views(cfg)
    idx = torch.arange(5)
    with torch.no_grad():
        probs = [torch.softmax(model(_norm()(fn(x, idx))), dim=1) for _, fn in views]
    expected = torch.stack(probs).mean(0).numpy()
    got = predict_probs(model, x, _rt(), _norm(), batch_size=512, tta=cfg)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    got_plain = predict_probs(model, x, _rt(), _norm(), batch_size=512)
    np.testing.assert_allclose(got_plain, probs[0].numpy(), rtol=0, atol=1e-6)


def test_view_names_and_simple_views() -> None:
    views = dict(tta_views(EvalConfig()))
    assert list(views) == ["identity", "hflip", "translate", "zoom", "blur", "noise", "vflip"]
    x, idx = _images(3), torch.arange(3)
    assert torch.equal(views["identity"](x, idx), x)
    assert torch.equal(views["hflip"](x, idx), x.flip(3))
    assert torch.equal(views["vflip"](x, idx), x.flip(2))
    for name, fn in views.items():
        out = fn(x, idx)
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1, name


def _dot(row: int, col: int) -> torch.Tensor:
    x = torch.zeros(1, 3, 28, 28)
    x[:, :, row, col] = 1.0
    return x


def test_translate_view_moves_content_two_pixels() -> None:
    views = dict(tta_views(EvalConfig()))
    out = views["translate"](_dot(10, 10), torch.arange(1))
    torch.testing.assert_close(out, _dot(12, 12), rtol=0, atol=1e-5)


@pytest.mark.parametrize("sigma", [0.4, 0.9, 2.0])
def test_blur_is_torchvisions_bit_for_bit(sigma: float, shared_data) -> None:
    """The TTA blur is computed without torchvision (start-up time) but must give the same
    numbers as `torchvision.transforms.v2.functional.gaussian_blur`, which earlier runs used:
    on real images, in fp32 and channels_last, and under CPU bf16 autocast."""
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    with np.load(shared_data) as src:
        x = torch.from_numpy(src["test_images"][:64]).permute(0, 3, 1, 2).float() / 255
    for image in (x, x.contiguous(memory_format=torch.channels_last)):
        want = tvf.gaussian_blur(image, kernel_size=[3, 3], sigma=[sigma, sigma])
        assert torch.equal(gaussian_blur3(image, sigma), want)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want = tvf.gaussian_blur(image, kernel_size=[3, 3], sigma=[sigma, sigma])
            got = gaussian_blur3(image, sigma)
        assert got.dtype == want.dtype == torch.bfloat16 and torch.equal(got, want)
    assert not torch.equal(gaussian_blur3(x, sigma), x)


def test_blur_and_zoom_views() -> None:
    views = dict(tta_views(EvalConfig()))
    blurred = views["blur"](_dot(10, 10), torch.arange(1))
    assert blurred[0, 0].argmax().item() == 10 * 28 + 10
    torch.testing.assert_close(blurred[0, 0].sum(), torch.tensor(1.0), rtol=0, atol=1e-5)
    assert (blurred[0, 0] > 0).sum() == 9  # a 3x3 kernel
    zoomed = views["zoom"](_dot(4, 4), torch.arange(1))  # 1.1x zoom pushes it away from centre
    assert torch.equal(
        views["zoom"](torch.ones(1, 3, 28, 28), torch.arange(1))[:, :, 14, 14], torch.ones(1, 3)
    )
    ys, xs = torch.nonzero(zoomed[0, 0] > 0.2, as_tuple=True)
    assert ys.float().mean() < 4 and xs.float().mean() < 4


def test_noise_view_is_clamped_in_pixel_space_and_seeded_by_index() -> None:
    cfg = EvalConfig(tta_noise_std=0.05)
    noise = dict(tta_views(cfg))["noise"]
    x = torch.cat([torch.zeros(2, 3, 28, 28), torch.ones(2, 3, 28, 28), _images(2)])
    idx = torch.arange(6)
    out = noise(x, idx)
    assert out.min() >= 0 and out.max() <= 1
    assert (out[:2] > 0).float().mean() > 0.3  # half the noise survives the clamp at 0
    assert (out[2:4] < 1).float().mean() > 0.3
    assert 0.02 < (out[4:] - x[4:]).std() < 0.08
    # sample 5 gets the same noise alone as inside the batch (seeded by its index)
    assert torch.equal(noise(x[5:], idx[5:]), out[5:])
    assert not torch.equal(noise(x[5:], torch.tensor([4])), out[5:])
    other_seed = dict(tta_views(EvalConfig(tta_noise_std=0.05, tta_seed=1)))["noise"]
    assert not torch.equal(other_seed(x, idx), out)


def test_blur_refuses_what_it_cannot_blur() -> None:
    """sigma 0 would make a NaN kernel (torchvision raised); other shapes are not TTA batches."""
    for bad, sigma in (
        (_images(2), 0.0),
        (_images(2)[0], 0.4),
        (torch.zeros(1, 3, 4, 4, dtype=torch.uint8), 0.4),
    ):
        with pytest.raises(ValueError, match="gaussian_blur3"):
            gaussian_blur3(bad, sigma)
