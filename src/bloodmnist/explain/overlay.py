"""Pictures from a Grad-CAM map: coloured heat map, overlay, and the three-panel figure.

NumPy, Pillow and a matplotlib colour map only (no figure machinery), so the server can draw
them per request in a few milliseconds.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

#: Display size: 28-px inputs are enlarged 8x so the heat map can be read.
VIEW = 224
ALPHA = 0.45  # heat-map weight in the overlay: the cell stays visible under it
_CMAP = colormaps["jet"]


def enlarge(image: np.ndarray, size: int = VIEW) -> Image.Image:
    """The model-input image, nearest-neighbour enlarged (crisp pixels, nothing invented)."""
    return Image.fromarray(image).resize((size, size), Image.Resampling.NEAREST)


def heat_rgb(cam: np.ndarray, size: int = VIEW) -> Image.Image:
    """Map values in [0, 1] to the jet colour map, bilinear enlarged to size x size."""
    smooth = Image.fromarray(np.ascontiguousarray(cam, dtype=np.float32)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    values = np.clip(np.asarray(smooth), 0.0, 1.0)
    return Image.fromarray((_CMAP(values)[..., :3] * 255).round().astype(np.uint8))


def overlay(image: np.ndarray, cam: np.ndarray, size: int = VIEW) -> Image.Image:
    """Heat map blended over the enlarged input image."""
    return Image.blend(enlarge(image, size).convert("RGB"), heat_rgb(cam, size), ALPHA)


def triptych(image: np.ndarray, cam: np.ndarray, caption: str, size: int = VIEW) -> Image.Image:
    """original | heat map | overlay, side by side, with a caption line above."""
    band = 22
    out = Image.new("RGB", (3 * size + 16, size + band + 4), "white")
    for i, panel in enumerate(
        (enlarge(image, size), heat_rgb(cam, size), overlay(image, cam, size))
    ):
        out.paste(panel.convert("RGB"), (4 + i * (size + 4), band))
    ImageDraw.Draw(out).text((6, 5), caption, fill=(0, 0, 0))
    return out


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def png_base64(img: Image.Image) -> str:
    return base64.b64encode(png_bytes(img)).decode("ascii")
