"""What one request does: check the uploads, decode them, classify (batched), explain.

Everything stays in memory; nothing is kept once the response is built.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np
from PIL import Image

from bloodmnist.inference.inputs import InferenceError, class_index
from bloodmnist.inference.predict import error_row, ok_row
from bloodmnist.inference.preprocess import ImageReadError, Prepared
from bloodmnist.serving.batching import Batcher
from bloodmnist.serving.limits import Limits, is_image_type
from bloodmnist.serving.model_service import ModelService, decode_upload


class RequestError(Exception):
    """A request the server refuses as a whole: HTTP `status` with a one-line `detail`."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class Upload:
    name: str
    content_type: str | None
    data: bytes


def check_uploads(uploads: list[Upload], limits: Limits) -> None:
    """415 for a declared non-image type, 413 for too many files or too many pixels."""
    if not uploads:
        raise RequestError(422, "no files: send one or more images as multipart field 'files'")
    if len(uploads) > limits.max_files:
        raise RequestError(
            413, f"{len(uploads)} files in one request; the limit is {limits.max_files}"
        )
    for up in uploads:
        if not is_image_type(up.content_type):
            raise RequestError(
                415,
                f"{up.name}: unsupported type {up.content_type}; send JPEG, PNG, BMP or TIFF "
                "images (image/* or application/octet-stream)",
            )
        pixels = header_pixels(up.data)
        if pixels is not None and pixels > limits.max_pixels:
            raise RequestError(
                413,
                f"{up.name}: {pixels / 1e6:.1f} Mpx is above the {limits.max_pixels / 1e6:.1f} "
                "Mpx per-image limit; downscale it first",
            )


def header_pixels(data: bytes) -> int | None:
    """Width x height from the image header (nothing decoded); None if Pillow cannot tell."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                return img.width * img.height
    except Image.DecompressionBombError as exc:  # above Pillow's own limit: its size is in the text
        found = re.search(r"\((\d+) pixels\)", str(exc))
        return int(found.group(1)) if found else None
    except Exception:  # noqa: BLE001 - unreadable files get their error row later
        return None


def decode_all(
    uploads: list[Upload], size: int, method: str, max_pixels: int
) -> list[Prepared | str]:
    """Prepared images, or the reason a file could not be read (its error row)."""
    out: list[Prepared | str] = []
    for up in uploads:
        try:
            out.append(decode_upload(up.data, size, method, max_pixels))
        except ImageReadError as exc:
            out.append(str(exc))
    return out


def display_name(name: str) -> PurePath:
    # Browsers send base names; keep whatever came, as a label only (never a path we open).
    return PurePath(name or "upload")


async def classify(
    service: ModelService,
    batcher: Batcher,
    uploads: list[Upload],
    decoded: list[Prepared | str],
    top_k: int,
    tta: bool,
) -> tuple[list[dict], np.ndarray, list[int]]:
    """Rows in upload order, the model-ready images of the readable files and their indexes."""
    names = service.engine.info.class_names
    ready = [i for i, d in enumerate(decoded) if isinstance(d, Prepared)]
    images = np.stack([decoded[i].pixels for i in ready]) if ready else np.zeros((0,))
    probs = await batcher.probs(images, tta) if ready else np.zeros((0, len(names)))
    rows: list[dict] = []
    by_index = dict(zip(ready, probs, strict=True))
    for i, (up, d) in enumerate(zip(uploads, decoded, strict=True)):
        if isinstance(d, Prepared):
            info = {"width": d.width, "height": d.height, "preprocess": d.method}
            row = ok_row(display_name(up.name), by_index[i], names, top_k, **info)
        else:
            row = error_row(display_name(up.name), d)
        rows.append({"file": row.pop("path"), **row})
    # an image whose output was not finite is an error row (ok_row): nothing to explain
    kept = [j for j, i in enumerate(ready) if rows[i]["status"] == "ok"]
    if len(kept) < len(ready):
        images, ready = images[kept], [ready[j] for j in kept]
    return rows, images, ready


def resolve_target(requested: str | None, names: list[str]) -> int | None:
    """`class=` as an index (None: each image's predicted class); unknown ones are a 422."""
    try:
        return class_index(requested, names)
    except InferenceError as exc:
        raise RequestError(422, str(exc)) from None
