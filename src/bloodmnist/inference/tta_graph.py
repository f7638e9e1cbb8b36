"""The exported graph with the checkpoint's test-time augmentation inside (`export --tta`).

The recipes' published accuracy is with TTA (fast: 16 dihedral views), so a deployment that
runs only the ONNX file should get the same model. The graph takes the same normalised input as
the plain one and does what `evaluate` does: each view is made in [0,1] pixel space, normalised
again, the softmax of each view's logits is averaged, and the checkpoint's TTA temperature
(fitted on validation on that average) is applied. The views are evaluation's own functions
(`tta_views`), traced into the graph, so the two cannot drift apart.

Only the dihedral modes are exportable: the reference's 7 views include noise seeded by each
image's index in its split, which a deployed model does not have.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bloodmnist.config import Config, EvalConfig
from bloodmnist.data.loader import Normalizer, to_tensor
from bloodmnist.evaluation.predict import predict_probs, tta_views
from bloodmnist.inference.inputs import InferenceError
from bloodmnist.runtime import setup_runtime

EXPORTABLE_TTA = ("dihedral8", "dihedral16", "dihedral24")


def check_exportable(eval_cfg: EvalConfig) -> None:
    """One clear error for a TTA mode the graph cannot hold."""
    if eval_cfg.tta_mode not in EXPORTABLE_TTA:
        raise InferenceError(
            f"--tta exports the dihedral TTA modes ({', '.join(EXPORTABLE_TTA)}); this "
            f"checkpoint's eval.tta_mode is {eval_cfg.tta_mode}, whose noise view is seeded by "
            "each image's index in its split; export without --tta"
        )


class TTAGraph(nn.Module):
    """Normalised (N,3,H,W) -> (log of the views' mean softmax, its softmax at temperature T).

    For one image the first output is the TTA logits up to a constant, so softmax(logits) is
    the raw mean of the views, as the plain graph's softmax(logits) is its raw softmax."""

    def __init__(self, model: nn.Module, cfg: Config, temperature: float | None) -> None:
        super().__init__()
        check_exportable(cfg.eval)
        self.model = model
        self.views = [view for _, view in tta_views(cfg.eval)]
        self.register_buffer("mean", torch.tensor(cfg.data.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.data.std).view(1, 3, 1, 1))
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = x * self.std + self.mean
        total = torch.zeros(())
        for view in self.views:  # the dihedral views never read the index argument
            logits = self.model((view(pixels, None) - self.mean) / self.std)
            total = total + torch.softmax(logits, dim=1)
        # float32's smallest normal number, as `calibrate` clips: log(0) would be -inf
        logits = torch.log((total / len(self.views)).clamp_min(float(np.finfo(np.float32).tiny)))
        t = self.temperature
        return logits, torch.softmax(logits if t is None else logits / t, dim=1)


def reference_tta_probs(model: nn.Module, images: np.ndarray, cfg: Config) -> np.ndarray:
    """What `evaluate` gives for these uint8 images with TTA (fp32 on the CPU, uncalibrated)."""
    rt = setup_runtime("cpu", "fp32")
    norm = Normalizer(cfg.data.mean, cfg.data.std, rt.device, channels_last=False)
    return predict_probs(model, to_tensor(images, rt.device), rt, norm, 256, tta=cfg.eval)
