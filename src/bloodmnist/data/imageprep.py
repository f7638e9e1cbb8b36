"""Read any supported image file into a (size, size, 3) uint8 array: the one preprocessing that
`bloodmnist data build` applies to training images and `predict` applies to served images.

Imports only NumPy and Pillow: the ONNX prediction path must run without PyTorch.

Methods
- medmnist: centre square crop, PIL bilinear resize to the input size, and at 28 px a JPEG
  quality-75 round trip. This is how BloodMNIST was made from the PBC originals, so raw smear
  crops look like the training data (the 28-px images carry JPEG artefacts a faithful predictor
  must reproduce; the round trip was fitted to the official 28-px pixels only, and the 64-px
  shared file was built without it).
- resize: the whole image, bilinear, to size x size (aspect ratio not kept; no-op when equal).
- none: the image must already be size x size.
- auto: medmnist when the short side exceeds both twice the input size and 224 px (the largest
  MedMNIST+ size: cell crops at 28-224 px are resized, never cropped again) or is a PBC frame's
  (360-369 px), otherwise resize.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

METHODS = ("auto", "medmnist", "resize", "none")
#: MedMNIST+'s largest image side; cell crops up to it are never taken for raw frames.
MEDMNIST_LARGEST = 224
#: BloodMNIST kept a 200-px centre square of the 360x363 PBC originals.
CROP_FRACTION = 200 / 360
#: The PBC dataset also holds some 366x369 frames from the same microscope (same pixel scale).
#: BloodMNIST cropped exactly 200 px from those (verified: 100% identical pixels against the npz,
#: ~12% with a 203-px proportional crop), so short sides in this range get the fixed 200 px.
PBC_SHORT_SIDES = range(360, 370)
PBC_CROP = 200
JPEG_QUALITY = 75
#: Sizes whose medmnist recipe ends with the JPEG round trip (see the module docstring).
JPEG_SIZES = (28,)
#: Decompression-bomb guard, checked on the header size before any pixel is decoded. It is
#: Pillow's own hard limit (2 x Image.MAX_IMAGE_PIXELS, ~179 Mpx). Between 1x and 2x Pillow only
#: warns; we silence that warning because the size is checked here and such images decode in
#: bounded memory (a 100-Mpx PNG peaks at well under 1.5 GB, measured in tests/test_predict.py).
MAX_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)
#: JPEGs above this many pixels are decoded at a reduced DCT scale (Image.draft): exact results
#: for ordinary crops, bounded time and memory for huge scans.
DRAFT_ABOVE_PIXELS = 4096 * 4096
_RGB_LIKE = ("CMYK", "YCbCr", "LAB", "HSV", "RGBX")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageReadError(Exception):
    """One file cannot be used; the message is the reason shown in its error row."""


@dataclass
class Prepared:
    """A model-ready image and how it was made."""

    pixels: np.ndarray  # (size, size, 3) uint8 RGB
    width: int  # original size, before any processing
    height: int
    method: str  # medmnist | resize | none


def choose_method(requested: str, width: int, height: int, size: int) -> str:
    """Resolve `auto`: raw microscope crops get the BloodMNIST recipe, small images a resize."""
    if requested not in METHODS:
        raise ValueError(f"unknown preprocessing {requested!r} (choose from {', '.join(METHODS)})")
    if requested != "auto":
        return requested
    # PBC frames are raw smear images at every input size (at 224 px the 200-px crop is enlarged,
    # as the data was made); other images count as raw when clearly larger than the input and
    # than MedMNIST+'s cell crops (a 64-px BloodMNIST image given to a 28-px model is resized:
    # cropping it again kept a 36-px centre, 51/255 from the 28-px file's pixels on average).
    short = min(width, height)
    raw = short > max(2 * size, MEDMNIST_LARGEST) or short in PBC_SHORT_SIDES
    return "medmnist" if raw else "resize"


def crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The BloodMNIST centre square: side round(short side x 200/360), offsets rounded."""
    short = min(width, height)
    side = PBC_CROP if short in PBC_SHORT_SIDES else max(1, round(short * CROP_FRACTION))
    left = round((width - side) / 2)
    top = round((height - side) / 2)
    return left, top, left + side, top + side


def sixteen_to_eight(img: Image.Image) -> Image.Image:
    """16-bit grey (modes I;16*, I) -> 8-bit L by round(v / 257), so 65535 -> 255 exactly."""
    src = np.asarray(img)
    out = np.empty(src.shape, dtype=np.uint8)
    for start in range(0, src.shape[0], 1024):  # row chunks keep the int64 temporaries small
        rows = np.clip(src[start : start + 1024].astype(np.int64), 0, 65535)
        out[start : start + 1024] = (rows + 128) // 257
    return Image.fromarray(out)  # 2-D uint8 -> mode L


def workable(img: Image.Image) -> Image.Image:
    """A mode Pillow resamples correctly: L, LA, RGB or RGBA (palette/1-bit would use NEAREST)."""
    mode = img.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return img
    if mode in _SIXTEEN_BIT:
        return sixteen_to_eight(img)
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        return img.convert("RGBA" if has_alpha else "RGB")
    if mode in ("1", "La"):
        return img.convert("L" if mode == "1" else "LA")
    if mode in _RGB_LIKE or mode == "RGBa":
        return img.convert("RGBA" if mode == "RGBa" else "RGB")
    raise ImageReadError(f"unsupported pixel mode {mode}; save it as 8- or 16-bit RGB or grey")


def to_rgb(img: Image.Image) -> Image.Image:
    """Final RGB: transparent areas become white (the colour of an empty slide), grey is copied."""
    if img.mode in ("LA", "RGBA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def jpeg_round_trip(img: Image.Image, quality: int = JPEG_QUALITY) -> Image.Image:
    """Encode and decode as JPEG with Pillow defaults (4:2:0), as BloodMNIST was saved."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as back:
        return back.convert("RGB")


def _open(path: Path, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and check the size before decoding anything."""
    if path.is_file() and path.stat().st_size == 0:
        raise ImageReadError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as exc:  # Pillow refuses 2x its limit at open already
        raise ImageReadError(_bomb_reason(str(exc), max_pixels)) from None
    except UnidentifiedImageError:
        raise ImageReadError("not an image Pillow can read (JPEG, PNG, BMP, TIFF)") from None
    except OSError as exc:
        raise ImageReadError(f"cannot open: {exc}") from None
    except (ValueError, SyntaxError) as exc:  # Pillow's header parsers (a PNG text chunk too
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]  # large, a bad PPM header)
        raise ImageReadError(f"cannot open ({reason})") from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ImageReadError(
            f"image is {w}x{h} ({w * h / 1e6:.0f} Mpx), above the {max_pixels / 1e6:.1f} Mpx "
            "limit; downscale it first"
        )
    return img


def _bomb_reason(text: str, max_pixels: int) -> str:
    """Pillow's refusal ("Image size (N pixels) exceeds limit of M pixels, could be
    decompression bomb DOS attack.") in the words of our own size check, with the lower of the
    two limits (Pillow does not say the width and height)."""
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+) pixels", text)
    if not found:
        return f"{text} Downscale it first."
    n, limit = (int(v) for v in found.groups())
    limit = min(limit, max_pixels)
    return f"image is {n / 1e6:.0f} Mpx, above the {limit / 1e6:.1f} Mpx limit; downscale it first"


def _shrink_jpeg(img: Image.Image, size: int) -> None:
    """Huge JPEGs: let libjpeg decode at 1/2..1/8 scale, keeping the short side >= 16x size."""
    w, h = img.size
    if img.format != "JPEG" or w * h <= DRAFT_ABOVE_PIXELS:
        return
    keep = max(16 * size, 1024) / min(w, h)
    if keep < 1:
        img.draft("RGB", (int(w * keep) + 1, int(h * keep) + 1))


def _resample(img: Image.Image, method: str, size: int) -> Image.Image:
    if method == "none":
        if img.size != (size, size):
            w, h = img.size
            raise ImageReadError(
                f"image is {w}x{h} but --preprocess none needs {size}x{size}; "
                "use --preprocess auto, resize or medmnist"
            )
        return img
    box = crop_box(*img.size) if method == "medmnist" else (0, 0, *img.size)
    if img.width * img.height > DRAFT_ABOVE_PIXELS:
        # Huge scans: resample straight from the box (no cropped copy) with a cheap integer
        # pre-reduction; saves ~1/3 of the peak memory at a negligible change in pixels.
        return img.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
    if method == "medmnist":
        img = img.crop(box)  # exact BloodMNIST order: crop, then resize
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return img


def load_image(
    path: str | Path, size: int, method: str = "auto", max_pixels: int = MAX_PIXELS
) -> Prepared:
    """Decode, orient, convert and resample one file; raises ImageReadError with the reason."""
    path = Path(path)
    img = _open(path, max_pixels)
    width, height = img.size
    chosen = choose_method(method, width, height, size)
    try:
        with img:
            _shrink_jpeg(img, size)
            img.load()  # decode now, so truncated files fail here with Pillow's reason
            ImageOps.exif_transpose(img, in_place=True)  # no copy: huge images stay single
            small = _resample(workable(img), chosen, size)
            rgb = to_rgb(small)
    except ImageReadError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        msg = f"cannot decode ({reason}); the file is damaged or incomplete"
        raise ImageReadError(msg) from None
    if chosen == "medmnist" and size in JPEG_SIZES:
        rgb = jpeg_round_trip(rgb)
    return Prepared(np.asarray(rgb, dtype=np.uint8).copy(), width, height, chosen)
