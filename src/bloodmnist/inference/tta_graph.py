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
from bloodmnist.evaluation.run_files import TTA_MODES
from bloodmnist.inference.inputs import InferenceError
from bloodmnist.runtime import setup_runtime

# every mode but the reference's 7 views (noise)
EXPORTABLE_TTA = tuple(mode for mode in TTA_MODES if mode.startswith("dihedral"))


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


def reference_tta_logits(
    model: nn.Module, images: np.ndarray, cfg: Config, batch: int
) -> np.ndarray:
    """The graph's `logits` as `evaluate` computes them for these uint8 images: the log of the
    views' mean softmax (fp32 on the CPU, float64 out, clipped as `calibrate` clips)."""
    rt = setup_runtime("cpu", "fp32")
    norm = Normalizer(cfg.data.mean, cfg.data.std, rt.device, channels_last=False)
    probs = predict_probs(model, to_tensor(images, rt.device), rt, norm, batch, tta=cfg.eval)
    return np.log(np.maximum(probs.astype(np.float64), np.finfo(np.float32).tiny))


def tta_metadata(cfg: Config, temperature: float | None, input_text: str) -> dict[str, str]:
    """The metadata keys a --tta graph adds or changes."""
    probs = "its softmax" + (" at temperature_tta" if temperature is not None else "")
    meta = {
        "tta_mode": cfg.eval.tta_mode,
        "tta_views": str(len(tta_views(cfg.eval))),
        "input": f"{input_text}; TTA inside: logits = log of the views' mean softmax, "
        f"probs = {probs}",
    }
    if temperature is not None:
        meta["temperature_tta"] = str(float(temperature))
    return meta
