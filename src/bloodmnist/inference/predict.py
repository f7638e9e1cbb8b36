"""Classify image files with any engine and write one row per file (CSV or JSON).

Torch-free: with an ONNX engine the whole path needs only onnxruntime, NumPy and Pillow.
A file that cannot be read gets an error row with the reason; the others continue.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from tqdm import tqdm

from bloodmnist.inference.engines import TTA_ONNX_ERROR, Engine
from bloodmnist.inference.inputs import InferenceError
from bloodmnist.inference.preprocess import MAX_PIXELS, METHODS, ImageReadError, load_image

OUT_FORMATS = (".csv", ".json")
_NO_INFO = {"width": None, "height": None, "preprocess": ""}


@dataclass
class PredictOptions:
    preprocess: str = "auto"
    top_k: int = 3
    tta: bool = False
    batch_size: int = 64
    progress: bool = False
    max_pixels: int = MAX_PIXELS


def check_options(engine: Engine, opts: PredictOptions) -> None:
    """Fail fast, before any file is read, on options this engine/model cannot honour."""
    n = len(engine.info.class_names)
    if not 1 <= opts.top_k <= n:
        raise InferenceError(f"--top-k must be between 1 and {n} (the number of classes)")
    if opts.batch_size < 1:
        raise InferenceError("--batch-size must be >= 1")
    if opts.preprocess not in METHODS:
        raise InferenceError(f"--preprocess must be one of {', '.join(METHODS)}")
    if opts.tta and not engine.supports_tta:
        raise InferenceError(TTA_ONNX_ERROR)


def ok_row(path: Path, probs: np.ndarray, names: list[str], k: int, **info: Any) -> dict:
    """The image's answer; an error row when the model's output is not finite (an overflow,
    e.g. in fp16), whose argmax would be an arbitrary class presented as a prediction."""
    if not np.all(np.isfinite(probs)):
        return error_row(
            path,
            "the model's output is not finite for this image (an overflow; with --precision "
            "fp16 or bf16, try --precision fp32)",
        )
    order = np.argsort(-probs, kind="stable")
    top = [[names[i], float(probs[i])] for i in order[:k]]
    return {
        "path": str(path),
        "status": "ok",
        "pred": top[0][0],
        "prob": top[0][1],
        "top_k": top,
        "probs": {name: float(p) for name, p in zip(names, probs, strict=True)},
        **info,
        "error": "",
    }


def error_row(path: Path, reason: str) -> dict:
    empty = {"pred": "", "prob": None, "top_k": [], "probs": {}}
    return {"path": str(path), "status": "error", **empty, **_NO_INFO, "error": reason}


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_paths(engine: Engine, paths: list[Path], opts: PredictOptions) -> list[dict]:
    """One row per path, in input order; images are decoded one batch at a time."""
    check_options(engine, opts)
    names = engine.info.class_names
    size = engine.info.input_size
    rows: list[dict] = []
    bar = tqdm(total=len(paths), unit="img", disable=not opts.progress, file=sys.stderr)
    with bar:
        for chunk in _chunks(paths, opts.batch_size):
            slots: list[dict | None] = []
            ready = []
            for path in chunk:
                try:
                    prep = load_image(path, size, opts.preprocess, opts.max_pixels)
                except ImageReadError as exc:
                    slots.append(error_row(path, str(exc)))
                    continue
                ready.append((len(slots), path, prep))
                slots.append(None)
            if ready:
                probs = engine.probs(np.stack([r[2].pixels for r in ready]), tta=opts.tta)
                for (slot, path, prep), p in zip(ready, probs, strict=True):
                    info = {"width": prep.width, "height": prep.height, "preprocess": prep.method}
                    slots[slot] = ok_row(path, p, names, opts.top_k, **info)
            rows.extend(r for r in slots if r is not None)
            bar.update(len(chunk))
    return rows


def write_csv(rows: list[dict], names: list[str], fh: TextIO) -> None:
    """Flat CSV: top_k as 'name:p;name:p', one prob_<class> column per class."""
    cols = ["path", "status", "pred", "prob", "top_k"] + [f"prob_{n}" for n in names]
    cols += ["width", "height", "preprocess", "error"]
    writer = csv.DictWriter(fh, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = {k: row[k] for k in ("path", "status", "pred", "width", "height", "preprocess")}
        flat["error"] = row["error"]
        flat["prob"] = "" if row["prob"] is None else f"{row['prob']:.6f}"
        flat["top_k"] = ";".join(f"{n}:{p:.6f}" for n, p in row["top_k"])
        for n in names:
            flat[f"prob_{n}"] = f"{row['probs'][n]:.6f}" if row["probs"] else ""
        writer.writerow({k: "" if v is None else v for k, v in flat.items()})


def render(rows: list[dict], names: list[str], fmt: str, header: dict[str, Any]) -> str:
    if fmt == ".json":
        return json.dumps({**header, "results": rows}, indent=2) + "\n"
    buf = io.StringIO()
    write_csv(rows, names, buf)
    return buf.getvalue()


def check_out(out: Path | None) -> str:
    """The output format from the suffix; refuses to overwrite an existing file."""
    if out is None:
        return ".csv"
    fmt = out.suffix.lower()
    if fmt not in OUT_FORMATS:
        raise InferenceError(f"--out {out}: use a .csv or .json file name")
    if out.exists() or out.is_symlink():  # a dangling link too: the name is taken
        raise InferenceError(f"--out {out} already exists; choose a new file name")
    if not out.parent.is_dir():
        raise InferenceError(f"--out {out}: folder {out.parent} does not exist")
    return fmt
