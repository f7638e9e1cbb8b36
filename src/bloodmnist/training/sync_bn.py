"""SyncBatchNorm for every device: PyTorch's own on CUDA, a small gloo-capable one on CPU.

`nn.SyncBatchNorm` only runs on GPUs (its kernels `batch_norm_stats` & co. have no CPU version,
and DDP refuses it on CPU modules). CPU runs under torchrun use `CpuSyncBatchNorm`: the same
maths (batch statistics over the global batch, gradients flowing through them to every rank),
written with two sum-all-reduces that autograd differentiates. It subclasses `BatchNorm2d`, so
checkpoints keep the plain BatchNorm keys and load in a single process unchanged.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _SumAcrossRanks(torch.autograd.Function):
    """all_reduce(SUM) whose gradient is again the sum over ranks (the adjoint of a sum)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _SumAcrossRanks.apply(grad.contiguous())


def _sum_across_ranks(t: torch.Tensor) -> torch.Tensor:
    return _SumAcrossRanks.apply(t)


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span all ranks (eval: the running stats)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        dims = (0, 2, 3)
        # Two passes in float64 (mean, then squared deviations): as exact as native BatchNorm.
        count = torch.tensor([x.numel() // c], dtype=torch.float64, device=x.device)
        first = _sum_across_ranks(torch.cat([x.sum(dims, dtype=torch.float64), count]))
        n = first[c].detach()
        mean = first[:c] / n
        centred = x - mean.to(x.dtype).view(1, c, 1, 1)
        var = _sum_across_ranks(centred.pow(2).sum(dims, dtype=torch.float64)) / n
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach(), n)
        invstd = torch.rsqrt(var + self.eps).to(x.dtype)
        y = centred * invstd.view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, n: torch.Tensor) -> None:
        """As nn.BatchNorm2d: momentum average (or cumulative when momentum is None) of the
        mean and of the unbiased variance."""
        self.num_batches_tracked.add_(1)
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * n / (n - 1).clamp(min=1)
        self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
        self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d becomes a synchronised one: nn.SyncBatchNorm on CUDA, else ours."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    """As nn.SyncBatchNorm.convert_sync_batchnorm: the new layers take over the old ones'
    parameters and buffers (same tensors, so dtype and device are kept)."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CpuSyncBatchNorm):
        new = CpuSyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        new.running_mean = module.running_mean
        new.running_var = module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _convert_cpu(child))
    return module
