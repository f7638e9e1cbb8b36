"""One checkpoint dict per file, written atomically and read without unpickling code."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bloodmnist.atomic import write_bytes_atomic
from bloodmnist.config import Config, from_dict
from bloodmnist.errors import CheckpointError, ConfigError, OutputError

REQUIRED = ("model", "config", "epoch")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / torch.compile wrappers (what checkpoints store)."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Temp file in the same folder, fsync, rename: a crash never leaves a half-written file.

    A full disk (or file-size limit) raises OutputError; the previous file stays as it was.
    """
    # Serialise in memory first: torch.save into a file hides the OS error behind an opaque
    # "unexpected pos" RuntimeError, a plain write() reports ENOSPC/EFBIG as such.
    buf = io.BytesIO()
    torch.save(state, buf)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, buf.getbuffer())
    except OSError as exc:
        raise OutputError.from_os(path, exc) from None


def add_to_checkpoint(path: Path, entries: dict[str, Any]) -> None:
    """Store `entries` beside the weights of a finished run's checkpoint (read, add, atomic
    rewrite); what else the file holds is kept as it was."""
    state = load_checkpoint(path)
    state.update(entries)
    save_checkpoint(state, path)


def file_stamp(path: Path) -> tuple[int, int, int]:
    """(inode, size, mtime ns) of a file: every save is a rename, so any new save changes it."""
    st = Path(path).stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with weights_only=True (no pickled code runs); one-line errors for bad files."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    _check_crc(p)
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated or foreign files alike
        if isinstance(exc, pickle.UnpicklingError) and "GLOBAL" in str(exc):
            raise CheckpointError(
                f"refusing to load {p}: it holds pickled Python objects besides tensors, and "
                "loading them could run code (weights_only=True); use a checkpoint written by "
                "bloodmnist"
            ) from None
        reason = (str(exc).splitlines() or [""])[0].split(". ")[0][:120]
        reason = reason if len(reason) > 12 else f"{type(exc).__name__} {reason}".strip()
        raise CheckpointError(
            f"cannot read checkpoint {p} ({reason}); it is corrupt, truncated or not a "
            "bloodmnist checkpoint"
        ) from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED):
        raise CheckpointError(f"{p} is not a bloodmnist checkpoint (needs keys {REQUIRED})")
    return state


def _check_crc(p: Path) -> None:
    """torch.load does not verify the zip CRCs, so flipped bytes in tensor data would load
    silently; zipfile checks every member (about 0.1 s per 45 MB)."""
    try:
        with zipfile.ZipFile(p) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return  # not a (complete) zip: torch.load reports it
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {p} is corrupt (CRC mismatch in {bad}); restore it from a backup or "
            "retrain"
        )


def load_model_weights(model: nn.Module, state: dict[str, Any], source: str | Path) -> None:
    """Load a checkpoint's weights, turning shape/key mismatches into one clear line."""
    try:
        unwrap(model).load_state_dict(state["model"])
    except RuntimeError as exc:
        # torch's first line is only "Error(s) in loading state_dict"; the next names the tensor
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = lines[1] if len(lines) > 1 else (lines or ["RuntimeError"])[0]
        raise CheckpointError(
            f"checkpoint {source} does not fit this model ({first}); was it trained with another "
            "architecture or number of classes?"
        ) from None


def checkpoint_config(state: dict[str, Any], source: object = "the checkpoint") -> Config:
    """The Config a checkpoint was trained with, for rebuilding its model; one CheckpointError
    naming `source` when this version cannot read it (unknown keys or values).

    Checkpoints record the stem their model was built with (`stem`). Those written before the
    ResNet-9 family took `model.stem` have no such entry and ran its 28-px layout (s1) at every
    size while saying `auto`, which now means stride 2 at 64 px: a layer of the same shape, so
    the old weights would load into the wrong network without an error. They get `s1`.
    """
    from bloodmnist.model.registry import ARCHS

    try:
        cfg = from_dict(state["config"])
        if cfg.model.arch not in ARCHS:  # training-only values are not checked: they ran
            raise ConfigError(f"model.arch {cfg.model.arch!r} is not one of {sorted(ARCHS)}")
    except (ConfigError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{source} holds a config this bloodmnist cannot use ({exc}); was it written by "
            "another version? Use that version, or retrain"
        ) from None
    if "stem" not in state and cfg.model.arch.startswith("resnet9") and cfg.model.stem == "auto":
        cfg.model.stem = "s1"
    return cfg
