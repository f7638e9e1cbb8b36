"""A fixed patch-whitening first layer, set from the training images (`model.arch: resnet9w`).

The first convolution of a small network learns slowly because neighbouring pixels are highly
correlated: its gradient is dominated by a few directions (overall brightness, smooth colour
ramps). Whitening the 3x3 patches first (the DAWNBench ResNet-9 and airbench CIFAR-10 trainers'
trick) decorrelates them, so the learned 1x1 convolution after it sees a well-conditioned input
and the first layer trains at the pace of the rest. The filters are the eigenvectors of the
training patches' covariance scaled by 1/sqrt(eigenvalue + eps): a buffer, never trained, saved
in every checkpoint, so predict, export and serve need no data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Training images whose patches estimate the covariance (each gives H*W patches): plenty for a
#: 27x27 matrix.
FIT_IMAGES = 2048


class PatchWhitening(nn.Module):
    """3x3 convolution (3 -> 27 channels, padding 1) with fixed whitening filters.

    Until `fit` runs the filters pick out the 27 pixels of each patch (an orthonormal basis), so
    an unfitted layer is a plain, information-preserving patch extractor."""

    def __init__(self, kernel: int = 3, eps: float = 1e-2, stride: int = 1):
        super().__init__()
        self.kernel, self.eps, self.stride = kernel, eps, stride
        n = 3 * kernel * kernel
        self.register_buffer("weight", torch.eye(n).reshape(n, 3, kernel, kernel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), stride=self.stride, padding=self.kernel // 2)

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> torch.Tensor:
        """Set the filters from normalised training images (N,3,H,W; the caller picks a sample
        of about FIT_IMAGES); returns the eigenvalues, largest first.

        Deterministic for the same images (float64 on the CPU), so every DDP rank and every
        machine computes the same filters."""
        x = images.detach().to("cpu", torch.float64)
        n = 3 * self.kernel * self.kernel
        second, total = torch.zeros(n, n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        count = 0
        for chunk in x.split(256):
            patches = F.unfold(chunk, self.kernel).transpose(1, 2).reshape(-1, n)  # valid patches
            second += patches.T @ patches
            total += patches.sum(0)
            count += patches.shape[0]
        mean = total / count
        cov = second / count - torch.outer(mean, mean)
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        filters = eigvecs.T / torch.sqrt(eigvals.clamp_min(0) + self.eps)[:, None]
        shape = (n, 3, self.kernel, self.kernel)
        self.weight.copy_(filters.flip(0).reshape(shape).to(self.weight))  # largest first
        return eigvals.flip(0)


def fit_to_data(model: nn.Module, images: torch.Tensor) -> bool:
    """Fit every PatchWhitening layer of `model` to normalised training images; True if any."""
    layers = [m for m in model.modules() if isinstance(m, PatchWhitening)]
    for layer in layers:
        layer.fit(images)
    return bool(layers)
