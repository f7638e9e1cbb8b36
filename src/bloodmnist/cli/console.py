"""The one way the CLI writes a line to stderr."""

from __future__ import annotations

import sys


def say(line: str) -> None:
    """Write one whole line to stderr in a single write.

    stderr is unbuffered (write-through), so print() would issue the text and the newline as two
    writes; under torchrun every rank shares one pipe and their lines would interleave.
    """
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
