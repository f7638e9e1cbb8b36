"""Batched, on-device training augmentation with per-sample random parameters.

Same semantics as the reference's per-image PIL pipeline (random resized crop scale 0.9-1.0 with
ratio 3/4-4/3, horizontal flip, rotation +-10 deg with black fill, colour jitter 0.2 on brightness,
contrast and saturation), but the geometry of a whole batch is one `affine_grid` + `grid_sample`
(crop, flip and rotation composed into a single resampling, so pixels are interpolated once) and
the colour ops are a few tensor expressions. Every random draw comes from an explicit generator,
so a (seed, epoch) pair fixes the augmentation exactly. `rot90` (fast recipe) adds a random
multiple of 90 degrees to the same matrix: with both flips, the dihedral group at no extra cost.
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


def geometry_matrices(n: int, cfg: AugmentConfig, gen: torch.Generator, device: torch.device):
    """(n,2,3) affine matrices mapping output coords to source coords (normalised [-1,1])."""
    area = _uniform(n, cfg.crop_scale[0], cfg.crop_scale[1], gen, device)
    log_r = _uniform(n, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), gen, device)
    ratio = torch.exp(log_r)
    # Crop width/height as fractions of the image; torchvision retries crops that do not fit,
    # clamping to the image is the batched equivalent.
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1 - w) * _uniform(n, -1.0, 1.0, gen, device)
    cy = (1 - h) * _uniform(n, -1.0, 1.0, gen, device)
    fx = torch.where(torch.rand(n, generator=gen, device=device) < cfg.hflip, -1.0, 1.0)
    fy = torch.where(torch.rand(n, generator=gen, device=device) < cfg.vflip, -1.0, 1.0)
    theta = _uniform(n, -cfg.rotation, cfg.rotation, gen, device) * (math.pi / 180)
    if cfg.rot90:  # drawn only when on, so the reference recipe's random stream is unchanged
        theta = theta + torch.randint(0, 4, (n,), generator=gen, device=device) * (math.pi / 2)
    cos, sin = torch.cos(theta), torch.sin(theta)
    mat = torch.empty(n, 2, 3, device=device)
    mat[:, 0, 0] = cos * w * fx
    mat[:, 0, 1] = -sin * h * fy
    mat[:, 1, 0] = sin * w * fx
    mat[:, 1, 1] = cos * h * fy
    mat[:, 0, 2] = cx
    mat[:, 1, 2] = cy
    return mat


def warp(x: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
    """Resample a batch with per-sample affine matrices; outside pixels become black (0)."""
    grid = F.affine_grid(mat.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


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


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Augment a float batch in [0,1] pixel space (N,3,H,W); returns the same layout."""
    mat = geometry_matrices(x.shape[0], cfg, gen, x.device)
    return color_jitter(warp(x, mat), cfg, gen)


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
