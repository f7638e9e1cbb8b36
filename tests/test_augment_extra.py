"""Cutout / random erasing and CutMix: exact areas, fills and lambdas, seeded, off by default."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from bloodmnist.config import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, build_config
from bloodmnist.data.augment import augment, cutmix, cutout_side, mix_batch, mixup
from bloodmnist.data.loader import Normalizer, TrainBatches
from bloodmnist.errors import ConfigError
from bloodmnist.model import build_model
from bloodmnist.runtime import Runtime
from bloodmnist.training.loop import train_one_epoch
from test_augment_tta import IDENTITY

CPU = torch.device("cpu")


def _images(n: int = 8) -> torch.Tensor:
    """Images with no exact zeros, so erased pixels are recognisable."""
    return torch.rand(n, 3, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_defaults_are_off_and_keys_are_checked() -> None:
    cfg = build_config()
    assert (cfg.augment.cutout, cfg.augment.cutmix_alpha) == (0.0, 0.0)
    for bad in ("augment.cutout=-1", "augment.cutout_p=1.5", "augment.cutout_fill=grey"):
        with pytest.raises(ConfigError, match="augment.cutout"):
            build_config(overrides=[bad])
    with pytest.raises(ConfigError, match="augment.cutmix_alpha"):
        build_config(overrides=["augment.cutmix_alpha=-0.5"])


def test_padding_fills_rotated_corners_without_black() -> None:
    """Turns of up to 45 degrees leave black corners with zeros padding (the reference's); with
    reflection the image is mirrored into them; pixels that sample only inside the image agree."""
    x = _images(16)
    turn = replace(IDENTITY, rotation=45.0)
    zero = augment(x.clone(), turn, _gen(1))
    mirrored = augment(x.clone(), replace(turn, padding="reflection"), _gen(1))  # same angles
    black = (zero == 0).all(dim=1)
    assert black[:, 0, 0].float().mean() > 0.5  # most turned images lose their corner
    assert not (mirrored == 0).any()  # inputs are >= 0.05: nothing black after mirroring
    assert mirrored.min() >= x.min() - 1e-6 and mirrored.max() <= x.max() + 1e-6
    centre = slice(9, 19)  # within 5 px of the centre no turn samples outside the image
    torch.testing.assert_close(zero[..., centre, centre], mirrored[..., centre, centre])
    assert build_config().augment.padding == "zeros"
    with pytest.raises(ConfigError, match="augment.padding"):
        build_config(overrides=["augment.padding=wrap"])


def test_cutout_side_pixels_or_fraction() -> None:
    assert [cutout_side(s, 28) for s in (8, 8.4, 0.25, 0.5, 40, 0.01)] == [8, 8, 7, 14, 28, 1]


def test_cutout_zero_erases_one_square_of_the_right_size() -> None:
    x = _images()
    cfg = replace(IDENTITY, cutout=0.25)  # 7 px at 28 px
    out = augment(x.clone(), cfg, _gen())
    for i in range(len(x)):
        erased = (out[i] == 0).all(dim=0)  # all three channels zero
        assert int(erased.sum()) == 49
        rows, cols = torch.nonzero(erased, as_tuple=True)
        assert int(rows.max() - rows.min()) == 6 and int(cols.max() - cols.min()) == 6
        torch.testing.assert_close(out[i][:, ~erased], x[i][:, ~erased], rtol=0, atol=1e-5)
    starts = {tuple(torch.nonzero((out[i] == 0).all(0))[0].tolist()) for i in range(len(x))}
    assert len(starts) > 1  # a position per sample


def test_cutout_mean_fill_and_probability() -> None:
    x = _images(64)
    cfg = replace(IDENTITY, cutout=5, cutout_fill="mean", cutout_p=0.5)
    base = augment(x.clone(), IDENTITY, _gen(3))  # the same draws before cutout
    out = augment(x.clone(), cfg, _gen(3))
    changed = (out != base).any(dim=1)  # (n, h, w): pixels the cutout replaced
    erased = changed.flatten(1).any(dim=1)
    assert 16 < int(erased.sum()) < 48  # p = 0.5 over 64 samples
    for i in range(64):
        box = changed[i]
        if not erased[i]:
            assert torch.equal(out[i], base[i])
            continue
        assert int(box.sum()) == 25  # 5x5 pixels, every channel replaced
        mean = base[i].mean(dim=(1, 2)).view(3, 1)
        torch.testing.assert_close(out[i][:, box], mean.expand(3, int(box.sum())), rtol=0, atol=0)


def test_cutout_keeps_every_earlier_draw() -> None:
    """Cutout draws after geometry and colour: the same seed gives the same image outside the
    box, and with cutout off the stream is exactly the old one."""
    x = _images()
    base = AugmentConfig(rotation=20.0, rot90=True, vflip=0.5)
    plain = augment(x.clone(), base, _gen(5))
    erased = augment(x.clone(), AugmentConfig(**{**base.__dict__, "cutout": 6}), _gen(5))
    differs = (plain != erased).any(dim=1)
    assert all(int(differs[i].sum()) <= 36 for i in range(len(x)))
    assert torch.equal(
        erased[~differs.unsqueeze(1).expand_as(erased)],
        plain[~differs.unsqueeze(1).expand_as(plain)],
    )


def test_cutmix_lambda_is_the_unpasted_share() -> None:
    n, h, w = 16, 28, 28
    # Image i is constant i + 1: every pasted pixel names its partner.
    x = torch.arange(1, n + 1, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, h, w).clone()
    y = torch.arange(n)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        out, y_b, lam = cutmix(x, y, 1.0, rng, _gen(seed))
        for i in range(n):
            if y_b[i] == i:  # paired with itself: nothing visible changes
                continue
            pasted = out[i, 0] != x[i, 0]
            assert float(pasted.sum()) / (h * w) == pytest.approx(1 - lam, abs=1e-12)
            assert torch.all(out[i, :, pasted] == float(y_b[i] + 1))
            rows, cols = torch.nonzero(pasted, as_tuple=True)
            if len(rows):  # one rectangle, the same for the whole batch
                assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert 0.0 <= lam <= 1.0


def test_cutmix_off_is_mixup_exactly() -> None:
    x, y = _images(), torch.arange(8)
    a = mix_batch(x, y, 0.4, 0.0, np.random.default_rng(1), _gen(1))
    b = mixup(x, y, 0.4, np.random.default_rng(1), _gen(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    out, y_b, lam = cutmix(x, y, 0.0, np.random.default_rng(1), _gen(1))
    assert out is x and y_b is y and lam == 1.0
    # Both on: each batch picks one; over many batches both occur.
    kinds = set()
    rng = np.random.default_rng(0)
    for seed in range(20):
        mixed, _, lam = mix_batch(x, y, 1.0, 1.0, rng, _gen(seed))
        boxy = bool(((mixed == x) | (mixed == x[torch.randperm(8, generator=_gen(seed))])).all())
        kinds.add("cutmix" if boxy else "mixup")
    assert kinds == {"cutmix", "mixup"}


def test_one_epoch_with_cutout_and_cutmix_trains() -> None:
    torch.manual_seed(0)
    model = build_model("resnet9", num_classes=8, size=28, width=0.125)
    rt = Runtime(CPU, "fp32", False, 1)
    batches = TrainBatches(
        images=_images(64),
        labels=torch.arange(64) % 8,
        batch_size=16,
        augment_cfg=AugmentConfig(cutout=0.3, cutmix_alpha=1.0, mixup_alpha=0.0),
        normalize=Normalizer(IMAGENET_MEAN, IMAGENET_STD, CPU, False),
        seed=0,
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    stats = train_one_epoch(model, batches, opt, rt, 1, _gen(), rng, 0.0, cutmix_alpha=1.0)
    assert stats.samples == 64 and math.isfinite(stats.loss) and 0.0 <= stats.acc <= 1.0
