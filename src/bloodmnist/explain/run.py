"""`bloodmnist explain`: Grad-CAM pictures for image files with a PyTorch model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bloodmnist.atomic import write_bytes_atomic
from bloodmnist.inference.engines import open_engine
from bloodmnist.inference.inputs import InferenceError, class_index, resolve_model
from bloodmnist.inference.preprocess import ImageReadError, load_image

BATCH = 64


def explain_files(
    model: str,
    paths: list[Path],
    outs: list[Path],
    requested: str | None = None,
    preprocess: str = "auto",
    device: str | None = None,
    precision: str | None = None,
) -> list[dict]:
    """One PNG per readable file (original | heat map | overlay); one row per file."""
    from bloodmnist.explain.gradcam import engine_cams
    from bloodmnist.explain.overlay import png_bytes, triptych

    if resolve_model(model).suffix.lower() == ".onnx":
        raise InferenceError(
            "Grad-CAM needs gradients, which the ONNX file does not give; pass the PyTorch model "
            "(run folder or .pt checkpoint)"
        )
    engine = open_engine(model, device, precision)
    names = engine.info.class_names
    wanted = class_index(requested, names, "--class")
    rows: dict[int, dict] = {}
    for start in range(0, len(paths), BATCH):
        ready = []
        for i in range(start, min(start + BATCH, len(paths))):
            try:
                ready.append((i, outs[i], load_image(paths[i], engine.info.input_size, preprocess)))
            except ImageReadError as exc:
                rows[i] = {"file": str(paths[i]), "status": "error", "error": str(exc)}
        if not ready:
            continue
        images = np.stack([r[2].pixels for r in ready])
        probs = engine.probs(images)
        preds = probs.argmax(axis=1)
        targets = [int(p) if wanted is None else wanted for p in preds]
        cams = engine_cams(engine, images, targets)
        outs[0].parent.mkdir(parents=True, exist_ok=True)
        for (i, out, _), img, p, t, cam in zip(ready, images, probs, targets, cams, strict=True):
            pred = int(p.argmax())
            caption = (
                f"{paths[i].name}: predicted {names[pred]} ({p[pred]:.2f}); Grad-CAM: {names[t]}"
            )
            try:  # never over a file created since the CLI checked the names
                write_bytes_atomic(out, png_bytes(triptych(img, cam, caption)), exclusive=True)
            except FileExistsError as exc:
                rows[i] = {"file": str(paths[i]), "status": "error", "error": str(exc)}
                continue
            rows[i] = {
                "file": str(paths[i]),
                "status": "ok",
                "pred": names[pred],
                "prob": float(p[pred]),
                "class": names[t],
                "out": str(out),
                "error": "",
            }
    return [rows[i] for i in sorted(rows)]
