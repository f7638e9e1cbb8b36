"""Experiment tracking: TensorBoard event files in every run folder (RUN_DIR/tb/)."""

from bloodmnist.tracking.tensorboard import TB_DIR, Tracker, open_tracker

__all__ = ["TB_DIR", "Tracker", "open_tracker"]
