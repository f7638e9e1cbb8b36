"""The optimiser a run trains with (`optim.kind`): torch's SGD, or Muon for the convolution
filters beside SGD for everything else.

Muon (Keller Jordan, 2024; the CIFAR-10 speed records of airbench94_muon) replaces each filter
bank's momentum update by the nearest semi-orthogonal matrix (5 Newton-Schulz iterations), so
every direction of the update moves at the same rate. torch.optim.Muon does this for 2-D
parameters only, hence this small class, which flattens a (out, in, kh, kw) filter bank to
(out, in*kh*kw). Every convolution in the registry's networks feeds a BatchNorm, so a filter
bank's scale does not change the function: each bank is held at norm sqrt(out) before its step
(as airbench does) instead of being weight-decayed, and `optim.muon_lr` is the step's size
relative to the weights. The other parameters (BatchNorm, the classifier) take SGD steps
exactly as torch.optim.SGD would, with `optim.lr`. One optimiser, so the schedule scales both
learning rates by the same factor and one state_dict resumes both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bloodmnist.config import Config

# The quintic iteration's coefficients (Keller Jordan's Muon; torch.optim.Muon's default): they
# push every singular value into roughly [0.7, 1.2] in five steps rather than exactly onto 1.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def orthogonalise(g: torch.Tensor, steps: int = NS_STEPS) -> torch.Tensor:
    """Approximately U V^T for g = U S V^T (2-D), by Newton-Schulz iteration in float32 (or
    float64 for a float64 g)."""
    a, b, c = NS_COEFFICIENTS
    x = g if g.dtype == torch.float64 else g.float()
    tall = x.shape[0] > x.shape[1]
    if tall:  # iterate on the smaller Gram matrix
        x = x.T
    x = x / (x.norm() + 1e-7)  # every singular value <= 1, where the iteration converges
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(g.dtype)


class MuonSGD(torch.optim.Optimizer):
    """SGD with momentum; groups with `orthogonal: True` take Muon steps at a fixed weight norm.

    SGD groups follow torch.optim.SGD (coupled weight decay, dampening 0, optional Nesterov).
    Orthogonal groups: momentum (Nesterov if set) on the raw gradient, the bank rescaled to norm
    sqrt(out), then the orthogonalised update times lr * sqrt(max(1, out / fan_in)).
    """

    def __init__(self, groups: list[dict[str, Any]], lr: float, momentum: float, **kw: Any) -> None:
        """`kw`: weight_decay and nesterov defaults; a group's own keys win."""
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": 0.0, "nesterov": False}
        defaults["ns_steps"] = NS_STEPS
        defaults.update(kw, orthogonal=False)
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient; `closure` (torch's contract)
        re-evaluates the loss first, which is returned."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom, nesterov = group["lr"], group["momentum"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["weight_decay"] and not group["orthogonal"]:
                    d = d.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d.clone()
                else:
                    state["momentum_buffer"].mul_(mom).add_(d)
                buf = state["momentum_buffer"]
                d = d.add(buf, alpha=mom) if nesterov else buf
                if not group["orthogonal"]:
                    p.add_(d, alpha=-lr)
                    continue
                out = p.shape[0]
                flat = d.reshape(out, -1)
                p.mul_(math.sqrt(out) / (p.norm() + 1e-12))
                scale = math.sqrt(max(1.0, out / flat.shape[1]))
                # .get: optimiser states saved before the key existed resume with 5
                update = orthogonalise(flat, group.get("ns_steps", NS_STEPS)).view_as(p)
                p.add_(update, alpha=-lr * scale)
        return loss


def filter_banks(model: nn.Module) -> list[nn.Parameter]:
    """The trainable convolution filter banks (Muon's parameters)."""
    banks = []
    for module in model.modules():  # a DDP wrapper's modules() reaches the model inside
        if isinstance(module, nn.modules.conv._ConvNd) and module.weight.requires_grad:
            banks.append(module.weight)
    return banks


def step_flops(model: nn.Module, cfg: Config) -> float:
    """FLOPs the optimiser adds per step beyond elementwise work: Muon's Newton-Schulz
    iterations (per iteration on an r x c bank, r <= c: two r x r x c products and one r^3;
    multiply and add counted apart, as bloodmnist.model.flops does); 0 for SGD. Counted once per
    step, like the model's FLOPs once per image: under torchrun every rank repeats them on the
    same all-reduced gradient, which a run's train_pflop does not multiply by the ranks."""
    if cfg.optim.kind != "muon":
        return 0.0
    total = 0.0
    for w in filter_banks(model):
        r, c = sorted((w.shape[0], w[0].numel()))
        total += cfg.optim.muon_ns_steps * 2 * (2 * r * r * c + r**3)
    return total


def build_optimizer(
    model: nn.Module, cfg: Config, sgd_groups: list[dict[str, Any]]
) -> torch.optim.Optimizer:
    """`optim.kind`: sgd (torch.optim.SGD over `sgd_groups`) or muon (filter banks apart)."""
    o = cfg.optim
    if o.kind == "sgd":
        return torch.optim.SGD(
            sgd_groups,
            lr=o.lr,
            momentum=o.momentum,
            weight_decay=o.weight_decay,
            nesterov=o.nesterov,
        )
    bank_ids = {id(p) for p in filter_banks(model)}
    groups = [
        {**g, "params": [p for p in g["params"] if id(p) not in bank_ids]} for g in sgd_groups
    ]
    # the SGD groups first: the schedule logs param_groups[0]'s learning rate
    banks = {"params": [p for g in sgd_groups for p in g["params"] if id(p) in bank_ids]}
    # held at a fixed norm instead of decayed: weight_decay 0 says so in the state_dict
    groups.append(
        {
            **banks,
            "lr": o.muon_lr,
            "orthogonal": True,
            "weight_decay": 0.0,
            "ns_steps": o.muon_ns_steps,
        }
    )
    return MuonSGD(
        groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov
    )
