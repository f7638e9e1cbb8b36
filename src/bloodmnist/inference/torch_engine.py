"""PyTorch engine for checkpoints and run folders; the only inference module that imports torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bloodmnist.data.loader import Normalizer, to_tensor
from bloodmnist.evaluation.calibration import calibrate
from bloodmnist.evaluation.predict import predict_probs
from bloodmnist.inference.engines import ModelInfo
from bloodmnist.model import model_from_config
from bloodmnist.runtime import inference_device, setup_runtime
from bloodmnist.training.checkpoint import checkpoint_config, load_checkpoint, load_model_weights


class TorchEngine:
    """A bloodmnist checkpoint at inference precision, on `runtime.inference_device`."""

    supports_tta = True

    def __init__(
        self,
        path: Path,
        device: str | None = None,
        precision: str | None = None,
        threads: int = 0,
        calibrated: bool = True,
    ):
        state = load_checkpoint(path)
        self.cfg = checkpoint_config(state, path)
        # The precision the run trained with is not reused: `auto` means fp32 for inference on
        # a CPU, so the same file predicts the same numbers on every CPU (runtime.py).
        self.rt = setup_runtime(
            inference_device(device, self.cfg.runtime.device),
            precision or "auto",
            threads,
            purpose="inference",
        )
        model = model_from_config(self.cfg)
        load_model_weights(model, state, path)
        self.model = model.to(self.rt.device).eval()
        if self.rt.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.normalize = Normalizer(
            self.cfg.data.mean, self.cfg.data.std, self.rt.device, self.rt.channels_last
        )
        self.info = ModelInfo(
            class_names=list(self.cfg.model.names()),
            input_size=self.cfg.data.size,
            mean=tuple(self.cfg.data.mean),
            std=tuple(self.cfg.data.std),
            source=str(path),
            kind="pytorch",
            extra={"epoch": state["epoch"], "runtime": self.rt.describe()},
            precision=self.rt.precision,
            temperature=state.get("temperature"),  # written by training's final evaluation
            calibrated=calibrated and bool(state.get("temperature")),
        )

    def probs(self, images: np.ndarray, tta: bool = False) -> np.ndarray:
        """Softmax probabilities for (N, size, size, 3) uint8; `tta` averages the TTA views of the
        checkpoint's `eval.tta_mode` (7 reference views or 8 dihedral poses); then the
        checkpoint's temperature for that mode, where it has one and `calibrated` was asked."""
        x = to_tensor(images, self.rt.device)
        probs = predict_probs(
            self.model,
            x,
            self.rt,
            self.normalize,
            batch_size=max(1, len(x)),
            tta=self.cfg.eval if tta else None,
            per_image=True,  # an image's answer must not depend on its batch neighbours
        )
        return calibrate(probs, self.info.applied_temperature(tta))
