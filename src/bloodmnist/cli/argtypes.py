"""argparse types that refuse a bad value in one line (argparse prints it with the usage)."""

from __future__ import annotations

import argparse


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
