"""PyTorch engine for checkpoints and run folders; the only inference module that imports torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bloodmnist import CLASS_NAMES
from bloodmnist.config import from_dict
from bloodmnist.data.loader import Normalizer, to_tensor
from bloodmnist.evaluation.predict import predict_probs
from bloodmnist.inference.engines import ModelInfo
from bloodmnist.model.resnet import build_model
from bloodmnist.runtime import setup_runtime
from bloodmnist.training.checkpoint import load_checkpoint, load_model_weights


class TorchEngine:
    """A bloodmnist checkpoint on the device/precision its config (or the caller) asks for."""

    supports_tta = True

    def __init__(
        self,
        path: Path,
        device: str | None = None,
        precision: str | None = None,
        threads: int = 0,
    ):
        state = load_checkpoint(path)
        self.cfg = from_dict(state["config"])
        self.rt = setup_runtime(
            device or self.cfg.runtime.device, precision or self.cfg.runtime.precision, threads
        )
        model = build_model(self.cfg.model.num_classes)
        load_model_weights(model, state, path)
        self.model = model.to(self.rt.device).eval()
        if self.rt.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.normalize = Normalizer(
            self.cfg.data.mean, self.cfg.data.std, self.rt.device, self.rt.channels_last
        )
        self.info = ModelInfo(
            class_names=list(CLASS_NAMES[: self.cfg.model.num_classes]),
            input_size=self.cfg.data.size,
            mean=tuple(self.cfg.data.mean),
            std=tuple(self.cfg.data.std),
            source=str(path),
            kind="pytorch",
            extra={"epoch": state["epoch"], "runtime": self.rt.describe()},
        )

    def probs(self, images: np.ndarray, tta: bool = False) -> np.ndarray:
        """Softmax probabilities for (N, size, size, 3) uint8; `tta` averages the 7 views."""
        x = to_tensor(images, self.rt.device)
        return predict_probs(
            self.model,
            x,
            self.rt,
            self.normalize,
            batch_size=max(1, len(x)),
            tta=self.cfg.eval if tta else None,
        )
