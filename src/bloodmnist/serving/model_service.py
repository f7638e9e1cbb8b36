"""The served model: its engine, what `GET /v1/model` says about it, and upload decoding.

Torch-free for .onnx models (the engine module imports torch only for checkpoints).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bloodmnist.data.download import file_sha256
from bloodmnist.inference.engines import Engine, open_engine
from bloodmnist.inference.inputs import resolve_model
from bloodmnist.inference.preprocess import ImageReadError, Prepared, load_image

#: summary.json keys copied into GET /v1/model ("the training summary").
SUMMARY_KEYS = (
    "status",
    "test_acc",
    "test_acc_tta",
    "test_macro_f1",
    "test_auc",
    "best_epoch",
    "seed",
    "data_md5",
    "data_official",
    "precision",
    "pretrained",
)


def find_summary(model_file: Path) -> dict[str, Any] | None:
    """summary.json of the run the model came from (RUN/checkpoints/x.pt or RUN/model.onnx)."""
    for folder in (model_file.parent, model_file.parent.parent):
        path = folder / "summary.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            return {k: data.get(k) for k in SUMMARY_KEYS if k in data}
    return None


@dataclass
class ModelService:
    """An opened engine plus the facts the API reports about it."""

    engine: Engine
    path: Path
    sha256: str
    summary: dict[str, Any] | None
    arch: str
    explain: bool = field(default=False)

    @classmethod
    def open(
        cls,
        model: str | Path,
        device: str | None,
        precision: str | None,
        threads: int = 0,
        calibrated: bool = True,
    ) -> ModelService:
        path = resolve_model(model)
        engine = open_engine(path, device, precision, threads, calibrated)
        if engine.info.kind == "onnx":
            arch = str(engine.info.extra.get("arch", "resnet18"))
        else:
            arch = engine.cfg.model.arch  # type: ignore[attr-defined]
        return cls(
            engine, path, file_sha256(path), find_summary(path), arch, engine.info.kind != "onnx"
        )

    def describe(self) -> dict[str, Any]:
        info = self.engine.info
        return {
            "classes": info.class_names,
            "input_size": info.input_size,
            "arch": self.arch,
            "engine": info.kind,
            "precision": getattr(info, "precision", "fp32"),
            "file": self.path.name,
            "sha256": self.sha256,
            "tta": bool(self.engine.supports_tta),
            # an ONNX graph exported with --tta: its views answer every request
            "tta_baked": info.tta_baked,
            # the temperatures the served probabilities use (None: the raw softmax)
            "temperature": {
                "plain": info.applied_temperature(False),
                "tta": info.applied_temperature(True) if self.engine.supports_tta else None,
            },
            "explain": self.explain,
            "training": self.summary,
        }


def decode_upload(data: bytes, size: int, method: str, max_pixels: int) -> Prepared:
    """`predict`'s own load_image on an upload, without writing it to disk.

    load_image reads paths, so the bytes go into an anonymous in-memory file (memfd, Linux) and
    its /proc path is read; elsewhere a temporary file is used and removed at once.
    """
    if not data:
        raise ImageReadError("empty file (0 bytes)")
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fd = os.memfd_create("bloodmnist-upload", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view) :]
            return load_image(Path(f"/proc/self/fd/{fd}"), size, method, max_pixels)
        finally:
            os.close(fd)
    with tempfile.NamedTemporaryFile(suffix=".img") as tmp:  # pragma: no cover - non-Linux
        tmp.write(data)
        tmp.flush()
        return load_image(Path(tmp.name), size, method, max_pixels)


def stack(prepared: list[Prepared]) -> np.ndarray:
    return np.stack([p.pixels for p in prepared])
