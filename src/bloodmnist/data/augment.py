"""Batched, on-device training augmentation with per-sample random parameters.

The reference's per-image PIL pipeline (random resized crop scale 0.9-1.0 with ratio 3/4-4/3,
horizontal flip, rotation +-10 deg with black fill, colour jitter 0.2 on brightness, contrast and
saturation) with one difference in the crop (see geometry_matrices), but the geometry of a
whole batch is one `affine_grid` + `grid_sample` (crop, flip and rotation composed into a single
resampling, so pixels are interpolated once) and
the colour ops are a few tensor expressions. Every random draw comes from an explicit generator,
so a (seed, epoch) pair fixes the augmentation exactly. `rot90` (fast recipe) adds a random
multiple of 90 degrees to the same matrix: with both flips, the dihedral group at no extra cost.
Cutout (after the colour ops) and CutMix (per batch, in the training loop like MixUp) are opt-in
and draw their random numbers only when on, so the reference recipe's stream is unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from bloodmnist.config import AugmentConfig

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device: torch.device):
    return torch.rand(n, generator=gen, device=device) * (hi - lo) + lo


def geometry_matrices(
    n: int, cfg: AugmentConfig, gen: torch.Generator, device: torch.device, size: int = 28
):
    """(n,2,3) affine matrices mapping output coords to source coords (normalised [-1,1])."""
    area = _uniform(n, cfg.crop_scale[0], cfg.crop_scale[1], gen, device)
    log_r = _uniform(n, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), gen, device)
    ratio = torch.exp(log_r)
    # Crop width/height as fractions of the image. torchvision retries a crop whose side would
    # exceed the image; here the side is clamped to the image instead, so the crop's area can
    # fall below crop_scale[0] (at the reference's 0.9-1.0 and 3/4-4/3: down to 0.82, below 0.9
    # for 45% of crops) and at crop_scale [1, 1] the other side stretches the image up to 1.15x,
    # which the fast recipe was tuned with. Kept as is: every recorded result trained with it.
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1 - w) * _uniform(n, -1.0, 1.0, gen, device)
    cy = (1 - h) * _uniform(n, -1.0, 1.0, gen, device)
    fx = torch.where(torch.rand(n, generator=gen, device=device) < cfg.hflip, -1.0, 1.0)
    fy = torch.where(torch.rand(n, generator=gen, device=device) < cfg.vflip, -1.0, 1.0)
    theta = _uniform(n, -cfg.rotation, cfg.rotation, gen, device) * (math.pi / 180)
    if cfg.rot90:  # drawn only when on, so the reference recipe's random stream is unchanged
        theta = theta + torch.randint(0, 4, (n,), generator=gen, device=device) * (math.pi / 2)
    if cfg.translate > 0:  # whole-pixel-scale shifts, drawn only when on (same stream otherwise)
        shift = 2 * cfg.translate / size  # pixels -> normalised coordinates
        cx = cx + _uniform(n, -shift, shift, gen, device)
        cy = cy + _uniform(n, -shift, shift, gen, device)
    cos, sin = torch.cos(theta), torch.sin(theta)
    mat = torch.empty(n, 2, 3, device=device)
    mat[:, 0, 0] = cos * w * fx
    mat[:, 0, 1] = -sin * h * fy
    mat[:, 1, 0] = sin * w * fx
    mat[:, 1, 1] = cos * h * fy
    mat[:, 0, 2] = cx
    mat[:, 1, 2] = cy
    return mat


def warp(x: torch.Tensor, mat: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Resample a batch with per-sample affine matrices; outside pixels become black (0), or
    mirror / repeat the image's edge with `padding` "reflection" / "border"."""
    grid = F.affine_grid(mat.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def color_jitter(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation factors drawn per sample from [1-j, 1+j], clamped like
    torchvision after each op. (torchvision also shuffles the op order per image; a fixed order
    keeps this a handful of fused tensor ops and the factor distributions unchanged.)"""
    n, dev = x.shape[0], x.device

    def factors(j: float) -> torch.Tensor:
        return _uniform(n, max(0.0, 1 - j), 1 + j, gen, dev).view(n, 1, 1, 1)

    if cfg.brightness > 0:
        x = (x * factors(cfg.brightness)).clamp_(0, 1)
    if cfg.contrast > 0:
        mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * factors(cfg.contrast) + mean).clamp_(0, 1)
    if cfg.saturation > 0:
        gray = grayscale(x)
        x = ((x - gray) * factors(cfg.saturation) + gray).clamp_(0, 1)
    return x


# Ruifrok & Johnston's stain vectors (haematoxylin, eosin, DAB), rows in RGB optical density,
# as scikit-image's rgb2hed uses them. Optical density here is -ln(I), 0 for white, the unit of
# Tellez et al.'s shifts (scikit-image >= 0.19 divides it by -ln(1e-6) = 13.8: 0.05 there would
# be a 14x stronger shift).
_RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))
_HED_FROM_RGB = tuple(map(tuple, np.linalg.inv(np.array(_RGB_FROM_HED)).tolist()))
_OD_FLOOR = 1e-6


def stain_jitter(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Perturb a batch's stains: each image's haematoxylin/eosin/DAB densities (N,3,H,W) become
    density * scale + shift ((N,3) each), then back to RGB in [0,1] (Tellez et al. 2018)."""
    unmix = torch.tensor(_HED_FROM_RGB, dtype=torch.float32, device=x.device)
    mix = torch.tensor(_RGB_FROM_HED, dtype=torch.float32, device=x.device)
    od = -torch.log(x.float().clamp_min(_OD_FLOOR))
    hed = torch.einsum("nchw,cd->ndhw", od, unmix)
    hed = hed * scale[:, :, None, None] + shift[:, :, None, None]
    od = torch.einsum("nchw,cd->ndhw", hed, mix)
    return torch.exp(-od).clamp_(0, 1).to(x.dtype)


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Augment a float batch in [0,1] pixel space (N,3,H,W); returns the same layout."""
    mat = geometry_matrices(x.shape[0], cfg, gen, x.device, x.shape[-1])
    x = color_jitter(warp(x, mat, cfg.padding), cfg, gen)
    if cfg.stain > 0:  # drawn only when on, so the other recipes' random streams are unchanged
        n, dev = x.shape[0], x.device
        scale = _uniform(3 * n, 1 - cfg.stain, 1 + cfg.stain, gen, dev).view(n, 3)
        shift = _uniform(3 * n, -cfg.stain, cfg.stain, gen, dev).view(n, 3)
        x = stain_jitter(x, scale, shift)
    if cfg.cutout > 0:  # drawn only when on, so the reference recipe's random stream is unchanged
        x = cutout(x, cfg, gen)
    return x


def mixup(
    x: torch.Tensor, y: torch.Tensor, alpha: float, rng: np.random.Generator, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """MixUp with lambda ~ Beta(alpha, alpha) per batch; returns (mixed x, partner labels, lam).

    With the reference alpha = 0.001 lambda is almost always ~0 or ~1, i.e. a light touch.
    """
    if alpha <= 0:
        return x, y, 1.0
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=gen, device=x.device)
    return lam * x + (1 - lam) * x[perm], y[perm], lam


def cutout_side(size: float, image_side: int) -> int:
    """Cutout square side in pixels: `size` pixels when >= 1, else that fraction of the side."""
    side = size if size >= 1 else size * image_side
    return max(1, min(image_side, round(side)))


def cutout(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Cutout / random erasing: per sample (with probability cfg.cutout_p) a square of
    `cutout_side` pixels, placed wholly inside the image, is set to black (cutout_fill "zero") or
    to the image's per-channel mean ("mean"). The square
    stays inside so every erased sample loses exactly side^2 pixels."""
    n, _, h, w = x.shape
    side, dev = cutout_side(cfg.cutout, min(h, w)), x.device
    top = torch.randint(0, h - side + 1, (n, 1, 1), generator=gen, device=dev)
    left = torch.randint(0, w - side + 1, (n, 1, 1), generator=gen, device=dev)
    on = (torch.rand(n, generator=gen, device=dev) < cfg.cutout_p).view(n, 1, 1)
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    box = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side) & on
    fill = x.mean(dim=(2, 3), keepdim=True) if cfg.cutout_fill == "mean" else torch.zeros_like(x)
    return torch.where(box.unsqueeze(1), fill.expand_as(x), x)


def cutmix(
    x: torch.Tensor, y: torch.Tensor, alpha: float, rng: np.random.Generator, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al. 2019): one box per batch with area share ~ 1 - lambda, lambda ~
    Beta(alpha, alpha), pasted from a shuffled partner; the box is clipped at the border and
    lambda recomputed, so the returned lam is exactly the share of pixels left unpasted."""
    if alpha <= 0:
        return x, y, 1.0
    lam = float(rng.beta(alpha, alpha))
    h, w = x.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    bh, bw = int(h * cut), int(w * cut)
    y0, y1 = max(cy - bh // 2, 0), min(cy + bh // 2, h)
    x0, x1 = max(cx - bw // 2, 0), min(cx + bw // 2, w)
    perm = torch.randperm(x.shape[0], generator=gen, device=x.device)
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    return out, y[perm], 1.0 - (y1 - y0) * (x1 - x0) / (h * w)


def mix_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    mixup_alpha: float,
    cutmix_alpha: float,
    rng: np.random.Generator,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """MixUp or CutMix for one batch: (x, partner labels, lam). With both on, each batch picks
    one at 50/50 (as timm does); with CutMix off the draws are exactly MixUp's, so the
    reference recipe's random stream is unchanged."""
    if cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5):
        return cutmix(x, y, cutmix_alpha, rng, gen)
    return mixup(x, y, mixup_alpha, rng, gen)
