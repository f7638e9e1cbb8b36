"""The export's parity gate: PyTorch fp32 on the CPU against ONNX Runtime on the same real
images (the graph's metadata supplies ORT's mean/std, as a deployment would read them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bloodmnist.config import Config
from bloodmnist.data.loader import Normalizer, to_tensor
from bloodmnist.inference.engines import INPUT_NAME, OUTPUT_NAMES, OnnxEngine
from bloodmnist.inference.preprocess import normalize
from bloodmnist.inference.tta_graph import reference_tta_logits
from bloodmnist.runtime import setup_runtime


@dataclass
class Parity:
    n: int
    max_abs_diff_prob: float
    max_abs_diff_logit: float
    argmax_agree: int
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff_prob <= self.tolerance and self.argmax_agree == self.n


def _torch_outputs(model: nn.Module, images: np.ndarray, cfg: Config, batch: int) -> np.ndarray:
    """Reference fp32 logits on the CPU, normalised exactly as training and evaluation do."""
    rt = setup_runtime("cpu", "fp32")
    norm = Normalizer(cfg.data.mean, cfg.data.std, rt.device, channels_last=False)
    with torch.no_grad():
        chunks = [
            model(norm(to_tensor(images[i : i + batch], rt.device))).numpy()
            for i in range(0, len(images), batch)
        ]
    return np.concatenate(chunks)


def _reference(
    model: nn.Module, images: np.ndarray, cfg: Config, batch: int, tta: bool
) -> np.ndarray:
    """The logits the graph must reproduce, float64: the model's, or with `tta` the log of the
    mean of the views' softmax as `evaluate` computes it."""
    if not tta:
        return _torch_outputs(model, images, cfg, batch).astype(np.float64)
    return reference_tta_logits(model, images, cfg, batch)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def check_parity(
    model: nn.Module,
    onnx_path: Path,
    images: np.ndarray,
    cfg: Config,
    temperature: float | None = None,
    tta: bool = False,
    tolerance: float = 1e-4,
    batch: int = 256,
) -> Parity:
    """PyTorch fp32 vs ONNX Runtime on the same uint8 images; ORT reads mean/std from the file.
    The reference probabilities are softmax(logits / T) where the graph bakes a temperature in
    (for `tta`, `calibrate` of the views' mean: the same formula)."""
    ref_logits = _reference(model, images, cfg, batch, tta)
    ref = _softmax(ref_logits / (temperature or 1.0))
    engine = OnnxEngine(onnx_path)
    logits, probs = [], []
    for i in range(0, len(images), batch):
        x = normalize(images[i : i + batch], engine.info.mean, engine.info.std)
        out_logits, out_probs = engine.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        logits.append(out_logits)
        probs.append(out_probs)
    got_logits, got = np.concatenate(logits), np.concatenate(probs)
    return Parity(
        n=len(images),
        max_abs_diff_prob=float(np.abs(ref - got).max()),
        max_abs_diff_logit=float(np.abs(ref_logits - got_logits).max()),
        argmax_agree=int((ref.argmax(1) == got.argmax(1)).sum()),
        tolerance=tolerance,
    )
