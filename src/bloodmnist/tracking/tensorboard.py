"""TensorBoard event files for one run: per-epoch curves, then test metrics and figures.

The `tensorboard` package is optional (`pip install bloodmnist[track]`): without it a run says
so once in its log and trains on. `tensorboard --logdir runs` then shows every run side by side;
the folders of a study (seed-S/) and of a search (trials/trial-N/) group their members.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("bloodmnist")

TB_DIR = "tb"
#: history row key -> TensorBoard tag (one tag per curve; train/val side by side by prefix).
EPOCH_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/val",
    "val_auc": "auc/val",
    "lr": "lr",
}
#: summary.json keys logged once at the end (step = epochs run).
TEST_KEYS = (
    "test_acc",
    "test_acc_tta",
    "test_macro_f1",
    "test_macro_f1_tta",
    "test_auc",
    "test_auc_tta",
)
_warned = False


class Tracker:
    """Writes one run's event files; every method is a no-op when `writer` is None."""

    def __init__(self, writer: Any = None, n_train: int = 0):
        self.writer = writer
        self.n_train = n_train

    def epoch(self, row: dict[str, Any]) -> None:
        """One history row: the curves, and training throughput in images per second."""
        if self.writer is None:
            return
        step = int(row["epoch"])
        for key, tag in EPOCH_TAGS.items():
            if key in row:
                self.writer.add_scalar(tag, float(row[key]), step)
        if row.get("seconds"):  # the epoch's wall time includes its validation pass
            self.writer.add_scalar("speed/images_per_s", self.n_train / row["seconds"], step)
        self.writer.flush()  # a killed run keeps every finished epoch

    def final(self, summary: dict[str, Any], figures_dir: Path) -> None:
        """Test metrics (plain and TTA) and the run's figures, at the last epoch's step."""
        if self.writer is None:
            return
        step = int(summary.get("epochs_run") or 0)
        for key in TEST_KEYS:
            if isinstance(summary.get(key), int | float):
                self.writer.add_scalar(f"test/{key.removeprefix('test_')}", summary[key], step)
        for png in sorted(figures_dir.glob("*.png")) if figures_dir.is_dir() else ():
            self.writer.add_image(f"figures/{png.stem}", _read_png(png), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _read_png(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def open_tracker(run_dir: Path, n_train: int, enabled: bool = True) -> Tracker:
    """A Tracker writing to RUN_DIR/tb/, or a silent one (other ranks, or no tensorboard)."""
    global _warned
    if not enabled:
        return Tracker()
    try:  # torch's writer needs the tensorboard package (the [track] extra)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if not _warned:
            log.info(
                "tracking off: the tensorboard package is not installed "
                "(pip install 'bloodmnist[track]' writes RUN_DIR/tb/ event files)"
            )
            _warned = True
        return Tracker()
    return Tracker(SummaryWriter(log_dir=str(run_dir / TB_DIR)), n_train)
