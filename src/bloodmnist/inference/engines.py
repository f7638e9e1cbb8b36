"""Prediction engines: ONNX Runtime (here, torch-free) and PyTorch (torch_engine.py, lazy).

An engine turns a batch of model-ready uint8 images (N, size, size, 3) into class probabilities
(N, C). `open_engine` picks one from the MODEL path; only a checkpoint or run folder imports torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bloodmnist.inference.inputs import InferenceError, resolve_model
from bloodmnist.inference.preprocess import normalize

#: Metadata keys embedded by `bloodmnist export` (ONNX metadata_props); values are strings.
META_PREFIX = "bloodmnist."
INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "probs")
TTA_ONNX_ERROR = (
    "--tta needs the PyTorch checkpoint or an ONNX file exported with 'bloodmnist export --tta' "
    "(this one has no TTA views in its graph); pass the .pt checkpoint or run folder, or drop "
    "--tta for this ONNX model"
)


@dataclass
class ModelInfo:
    """What predict needs to know about a model, whatever its format."""

    class_names: list[str]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str  # the file the weights came from
    kind: str  # pytorch | onnx
    extra: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"  # what the forward pass runs in (ONNX Runtime here: fp32)
    # Softmax temperatures stored at the end of training ({"plain": T, "tta": T}: fitted on
    # validation, or fixed by eval.temperature);
    # None: the model has none. `calibrated`: the engine applies them to every output.
    temperature: dict[str, float | None] | None = None
    calibrated: bool = False
    # An ONNX graph exported with --tta: its TTA mode; every output is the views' mean then.
    tta_baked: str | None = None

    def applied_temperature(self, tta: bool = False) -> float | None:
        """The temperature `probs(..., tta)` applies, or None when it returns the raw softmax."""
        if not self.calibrated or not self.temperature:
            return None
        return self.temperature.get("tta" if tta or self.tta_baked else "plain")


class Engine(Protocol):
    info: ModelInfo
    supports_tta: bool

    def probs(self, images: np.ndarray, tta: bool = False) -> np.ndarray: ...


class OnnxEngine:
    """An exported model run by ONNX Runtime on CPU; settings come from its embedded metadata."""

    def __init__(self, path: str | Path, threads: int = 0, calibrated: bool = True):
        import onnxruntime as ort

        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # 0: ONNX Runtime's default (physical cores)
        opts.log_severity_level = 3  # warnings from ORT would not be actionable for the user
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - any load failure is the same user error
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise InferenceError(f"cannot load ONNX model {self.path}: {reason}") from None
        self.info = self._read_info()
        self.info.calibrated = calibrated and self.info.temperature is not None
        # only a graph exported with --tta holds the views; a plain one refuses --tta
        self.supports_tta = self.info.tta_baked is not None

    def _read_info(self) -> ModelInfo:
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            names = json.loads(meta[META_PREFIX + "class_names"])
            size = int(meta[META_PREFIX + "input_size"])
            mean = tuple(json.loads(meta[META_PREFIX + "mean"]))
            std = tuple(json.loads(meta[META_PREFIX + "std"]))
        except (KeyError, ValueError) as exc:
            raise InferenceError(
                f"{self.path} lacks bloodmnist metadata ({exc}); export it with "
                "'bloodmnist export CHECKPOINT --format onnx'"
            ) from None
        extra = {k[len(META_PREFIX) :]: v for k, v in meta.items() if k.startswith(META_PREFIX)}
        baked = extra.get("tta_mode")  # an `export --tta` graph
        temperature = None
        # the graph's probs output is divided by it (the one-view T, or T_tta in a --tta graph)
        if (t := extra.get("temperature_tta" if baked else "temperature")) is not None:
            temperature = (
                {"plain": None, "tta": float(t)} if baked else {"plain": float(t), "tta": None}
            )
        return ModelInfo(
            names,
            size,
            mean,
            std,
            str(self.path),
            "onnx",
            extra,
            "fp32",
            temperature,
            tta_baked=baked,
        )

    def probs(self, images: np.ndarray, tta: bool = False) -> np.ndarray:
        """Softmax probabilities for (N, size, size, 3) uint8 images; a graph exported with
        --tta averages its views whatever `tta` says (the views are the model)."""
        if tta and not self.supports_tta:
            raise InferenceError(TTA_ONNX_ERROR)
        x = normalize(images, self.info.mean, self.info.std)
        if self.info.temperature is not None and not self.info.calibrated:
            (logits,) = self.session.run(["logits"], {INPUT_NAME: x})  # the raw softmax
            z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
            return (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).astype(np.float32)
        (out,) = self.session.run(["probs"], {INPUT_NAME: x})
        return out.astype(np.float32)


def open_engine(
    model: str | Path,
    device: str | None = None,
    precision: str | None = None,
    threads: int = 0,
    calibrated: bool = True,
) -> Engine:
    """ONNX Runtime for .onnx files (no torch import); PyTorch for checkpoints and run folders.
    `calibrated`: apply the model's temperature (fitted on validation or fixed), if it has one."""
    path = resolve_model(model)
    if path.suffix.lower() == ".onnx":
        if (device or "cpu") not in ("cpu", "auto") or (precision or "fp32") not in (
            "fp32",
            "auto",
        ):
            raise InferenceError(
                "ONNX models run in fp32 on the CPU here; drop --device/--precision or use the "
                ".pt checkpoint"
            )
        return OnnxEngine(path, threads=threads, calibrated=calibrated)
    from bloodmnist.inference.torch_engine import TorchEngine

    return TorchEngine(path, device, precision, threads, calibrated)
