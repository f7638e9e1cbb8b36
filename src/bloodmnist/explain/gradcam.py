"""Grad-CAM with captum's LayerGradCam, on the model's last feature map.

captum (maintained by the PyTorch team) computes the gradients, channel weights and ReLU; this
module only picks the layer and scales the maps. The layer is the *input* of the model's global
pooling (the last AdaptiveAvg/MaxPool2d), so the same code serves every registered architecture
(ResNet-18/34/50: layer4's output; ResNet-9: its last stage) without naming their attributes.
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


class GradCamError(ValueError):
    """The model has no global pooling layer to explain."""


def feature_layer(model: nn.Module) -> nn.Module:
    """The last global pooling module; Grad-CAM is taken on its input (the final feature map)."""
    pools = [m for m in model.modules() if isinstance(m, _POOLS)]
    if not pools:
        raise GradCamError("Grad-CAM needs a model with a global pooling layer before its head")
    return pools[-1]


def grad_cam(
    model: nn.Module, x: torch.Tensor, targets: list[int], size: int | None = None
) -> np.ndarray:
    """(N, size, size) float32 maps in [0, 1] for normalised inputs `x` and one class each.

    Runs in fp32 with gradients on, whatever autocast or inference mode the caller uses; each
    map is divided by its own maximum (an all-zero map stays zero: nothing supports the class).
    """
    size = size or x.shape[-1]
    model.eval()
    cam = LayerGradCam(model, feature_layer(model))
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        torch.autocast(x.device.type, enabled=False),
    ):
        inputs = x.detach().float().clone().requires_grad_(True)
        attr = cam.attribute(
            inputs, target=list(targets), attribute_to_layer_input=True, relu_attributions=True
        )
        maps = LayerAttribution.interpolate(
            attr.detach(), (size, size), interpolate_mode="bilinear"
        )
    maps = maps[:, 0].clamp_min(0).float().cpu().numpy()
    peak = maps.reshape(len(maps), -1).max(axis=1)
    scale = np.where(peak > 0, peak, 1.0).astype(np.float32)
    return (maps / scale[:, None, None]).astype(np.float32)


def engine_cams(engine, images: np.ndarray, targets: list[int]) -> np.ndarray:
    """Grad-CAM maps for (N, size, size, 3) uint8 images with a PyTorch engine (TorchEngine)."""
    from bloodmnist.data.loader import to_tensor

    x = engine.normalize(to_tensor(images, engine.rt.device))
    return grad_cam(engine.model, x, targets, engine.info.input_size)
