"""Prepare images for the model: the reading and resampling live in `bloodmnist.data.imageprep`
(shared with `bloodmnist data build`, so training data and served images go through the same
code); this module re-exports them and adds the model's normalisation.

Imports only NumPy and Pillow: the ONNX prediction path must run without PyTorch.
"""

from __future__ import annotations

import numpy as np

from bloodmnist.data.imageprep import (
    CROP_FRACTION,
    DRAFT_ABOVE_PIXELS,
    JPEG_QUALITY,
    JPEG_SIZES,
    MAX_PIXELS,
    METHODS,
    PBC_CROP,
    PBC_SHORT_SIDES,
    ImageReadError,
    Prepared,
    choose_method,
    crop_box,
    jpeg_round_trip,
    load_image,
    sixteen_to_eight,
    to_rgb,
    workable,
)

__all__ = [
    "CROP_FRACTION",
    "DRAFT_ABOVE_PIXELS",
    "JPEG_QUALITY",
    "JPEG_SIZES",
    "MAX_PIXELS",
    "METHODS",
    "PBC_CROP",
    "PBC_SHORT_SIDES",
    "ImageReadError",
    "Prepared",
    "choose_method",
    "crop_box",
    "jpeg_round_trip",
    "load_image",
    "normalize",
    "sixteen_to_eight",
    "to_rgb",
    "workable",
]


def normalize(batch: np.ndarray, mean, std) -> np.ndarray:
    """(N,H,W,3) uint8 -> (N,3,H,W) float32 (x/255 - mean)/std, the model's input."""
    x = batch.astype(np.float32) / np.float32(255)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
