"""One checkpoint dict per file, written atomically and read without unpickling code."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bloodmnist.errors import CheckpointError

REQUIRED = ("model", "config", "epoch")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / torch.compile wrappers (what checkpoints store)."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Temp file in the same folder, fsync, rename: a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with weights_only=True (no pickled code runs); one-line errors for bad files."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated or foreign files alike
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            f"cannot read checkpoint {p} ({reason}); it is corrupt or not a bloodmnist checkpoint"
        ) from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED):
        raise CheckpointError(f"{p} is not a bloodmnist checkpoint (needs keys {REQUIRED})")
    return state


def load_model_weights(model: nn.Module, state: dict[str, Any], source: str | Path) -> None:
    """Load a checkpoint's weights, turning shape/key mismatches into one clear line."""
    try:
        unwrap(model).load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {source} does not fit this model ({first}); was it trained with another "
            "architecture or number of classes?"
        ) from None
