"""argparse types that refuse a bad value in one line (argparse prints it with the usage)."""

from __future__ import annotations

import argparse
import math


def threads_int(text: str) -> int:
    """--threads: 0 (all cores) or a positive count, refused by argparse in one line otherwise."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expects a whole number >= 0 (0: all cores), got {text!r}"
        )
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expects a whole number >= 1, got {text!r}")
    return value


def pixel_rms(text: str) -> float:
    """--near-rms: an RMS pixel difference, finite and within 0-255 (nan would find nothing
    and call the file clean; inf would compare every pair)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 255:  # false for nan too
        raise argparse.ArgumentTypeError(f"expects a number from 0 to 255, got {text!r}")
    return value
