"""Batched class probabilities, plain and with the 7-view test-time augmentation.

The reference TTA adds unseeded noise and clamps tensors that are already normalised (so the clamp
cuts real signal). Here every view is made in [0,1] pixel space, clamped there, then normalised,
and the noise comes from a generator seeded per sample index, so TTA results do not depend on
batch size, device or run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bloodmnist.config import EvalConfig
from bloodmnist.data.augment import warp
from bloodmnist.data.loader import Normalizer
from bloodmnist.runtime import Runtime, gather_objects

View = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _affine(x: torch.Tensor, scale: float, shift_px: float) -> torch.Tensor:
    """Zoom by `scale` about the centre and move content by (shift_px, shift_px) pixels."""
    n, _, h, w = x.shape
    mat = torch.zeros(n, 2, 3, device=x.device)
    mat[:, 0, 0] = 1 / scale
    mat[:, 1, 1] = 1 / scale
    mat[:, 0, 2] = -2 * shift_px / w  # content moves right/down, as torchvision's translate
    mat[:, 1, 2] = -2 * shift_px / h
    return warp(x, mat)


def gaussian_blur3(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """3x3 Gaussian blur of (N, C, H, W) floats with reflected borders: the arithmetic of
    torchvision's `gaussian_blur(x, [3, 3], [sigma, sigma])` (tested bit-identical), without
    importing torchvision, which loads torch._dynamo: `predict` of 128 JPEGs with a ResNet-9
    takes 1.9 s instead of 3.0 s on one core (a training process loads dynamo anyway)."""
    if x.ndim != 4 or not x.is_floating_point() or sigma <= 0:
        raise ValueError(f"gaussian_blur3 takes (N, C, H, W) floats and sigma > 0, got {sigma}")
    lim = (3 - 1) / (2.0 * 2.0**0.5)  # torchvision's sample points: (kernel_size - 1) / (2 sqrt 2)
    taps = torch.linspace(-lim, lim, steps=3, dtype=x.dtype, device=x.device)
    k1 = torch.softmax(taps.div(sigma).pow(2).neg(), dim=0)
    # int(): a constant kernel shape when traced into an ONNX graph (export --tta)
    kernel = (k1.unsqueeze(-1) * k1).expand(int(x.shape[1]), 1, 3, 3)
    return F.conv2d(F.pad(x, [1, 1, 1, 1], mode="reflect"), kernel, groups=x.shape[1])


def seeded_noise(shape: tuple[int, ...], index: torch.Tensor, seed: int) -> torch.Tensor:
    """Gaussian noise whose value for sample i depends only on (seed, i)."""
    gen = torch.Generator()
    out = torch.empty((len(index), *shape))
    for row, i in enumerate(index.tolist()):
        gen.manual_seed(seed * 1_000_003 + i)
        out[row] = torch.randn(shape, generator=gen)
    return out


def rot90(x: torch.Tensor, k: int) -> torch.Tensor:
    """torch.rot90(x, k, dims=(2, 3)) written as flips and a transpose, which the ONNX exporter
    takes (it has no rot90) and which are the same pixel permutation (tested)."""
    k %= 4
    if k == 1:
        return x.flip(3).transpose(2, 3)
    if k == 2:
        return x.flip((2, 3))
    return x.transpose(2, 3).flip(3) if k == 3 else x


def dihedral_views() -> list[tuple[str, View]]:
    """The 8 poses of the dihedral group D4: k quarter turns, then the same after an h-flip.

    Exact pixel permutations (no resampling), so for cells without orientation each view is
    an image the model could equally have been shown.
    """

    def pose(k: int, flip: bool) -> View:
        return lambda x, i: rot90(x.flip(3) if flip else x, k)

    return [
        (f"{'flip-' if f else ''}rot{90 * k}", pose(k, f)) for f in (False, True) for k in range(4)
    ]


def tta_views(cfg: EvalConfig) -> list[tuple[str, View]]:
    """`cfg.tta_mode`: reference7 (the reference's 7 CPU views: identity, h-flip, translate, zoom,
    blur, noise, v-flip), dihedral8 (`dihedral_views`), dihedral16 (those 8 poses, and each
    again zoomed by `tta_scale` about the centre, which commutes with the poses) or dihedral24
    (dihedral16 and each pose blurred as the reference's blur view)."""
    if cfg.tta_mode == "dihedral8":
        return dihedral_views()
    if cfg.tta_mode in ("dihedral16", "dihedral24"):
        poses = dihedral_views()

        def then(pose: View, name: str) -> View:
            if name == "zoom":
                return lambda x, i: _affine(pose(x, i), cfg.tta_scale, 0.0)
            return lambda x, i: gaussian_blur3(pose(x, i), cfg.tta_blur_sigma)

        extra = ["zoom"] if cfg.tta_mode == "dihedral16" else ["zoom", "blur"]
        return poses + [(f"{n}-{e}", then(pose, e)) for e in extra for n, pose in poses]
    sigma = cfg.tta_blur_sigma

    def noise(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        eps = seeded_noise(tuple(x.shape[1:]), idx, cfg.tta_seed).to(x.device)
        return (x + cfg.tta_noise_std * eps).clamp(0, 1)

    return [
        ("identity", lambda x, i: x),
        ("hflip", lambda x, i: x.flip(3)),
        ("translate", lambda x, i: _affine(x, 1.0, cfg.tta_translate)),
        ("zoom", lambda x, i: _affine(x, cfg.tta_scale, 0.0)),
        ("blur", lambda x, i: gaussian_blur3(x, sigma)),
        ("noise", noise),
        ("vflip", lambda x, i: x.flip(2)),
    ]


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank's contiguous slice [lo, hi) of n rows: sizes differ by at most one, no padding, so
    the shards in rank order are exactly rows 0..n-1 (unlike DistributedSampler, which pads)."""
    return n * rank // world_size, n * (rank + 1) // world_size


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    images: torch.Tensor,
    rt: Runtime,
    normalize: Normalizer,
    batch_size: int = 512,
    tta: EvalConfig | None = None,
    on_batch: Callable[[int], None] | None = None,
    per_image: bool = False,
) -> np.ndarray:
    """Softmax probabilities (N, C) for images in [0,1] (N,3,H,W); TTA averages the views.

    The TTA noise of row i is seeded by i, so a split's result is reproducible and shardable;
    `per_image` seeds every row alike instead, so an image's probabilities do not depend on where
    it sits in a batch or which images share it (predict, serve).

    Under torchrun every rank must pass the same images: each predicts its own shard and the
    shards are gathered, so every rank returns the same full (N, C) array, each image once.
    `on_batch` gets the number of images of each finished batch (a progress bar).
    """
    if not rt.distributed:
        offset = None if per_image else 0
        return _predict(model, images, rt, normalize, batch_size, tta, offset, on_batch)
    lo, hi = shard_range(len(images), rt.rank, rt.world_size)
    # The bare module: a DDP forward could start a buffer broadcast that the other ranks,
    # with a different number of batches, would not match.
    bare = getattr(model, "module", model)
    part = _predict(
        bare, images[lo:hi], rt, normalize, batch_size, tta, None if per_image else lo, on_batch
    )
    return np.concatenate([p for p in gather_objects(rt, part) if len(p)])


def _predict(
    model: nn.Module,
    images: torch.Tensor,
    rt: Runtime,
    normalize: Normalizer,
    batch_size: int,
    tta: EvalConfig | None,
    offset: int | None = 0,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """predict_probs for one process; `offset` is the first row's index in the full split (the
    TTA noise is seeded by that index, so sharding does not change it); None seeds every row
    with index 0."""
    model.eval()
    views = tta_views(tta) if tta is not None else [("identity", lambda x, i: x)]
    chunks = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(rt.device)
        if offset is None:
            idx = torch.zeros(len(x), dtype=torch.long)
        else:
            idx = torch.arange(offset + start, offset + start + len(x))
        acc = None
        for _, view in views:
            with rt.autocast():
                logits = model(normalize(view(x, idx)))
            p = torch.softmax(logits.float(), dim=1)
            acc = p if acc is None else acc + p
        chunks.append((acc / len(views)).cpu())
        if on_batch is not None:
            on_batch(len(x))
    if not chunks:  # an empty shard (fewer images than ranks)
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(chunks).numpy().astype(np.float32)
