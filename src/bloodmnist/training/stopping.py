"""Training under signal handling: an interrupted or diverged run ends with a summary and one
line saying how to continue it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bloodmnist.errors import OutputError, TrainingStopped
from bloodmnist.runtime import Runtime
from bloodmnist.training.finish import state_fields
from bloodmnist.training.loop import DivergenceError
from bloodmnist.training.rundir import write_json
from bloodmnist.training.signals import GracefulStop, StopRequested
from bloodmnist.training.trainer import Trainer, TrainState

log = logging.getLogger("bloodmnist")


def fit_guarded(
    trainer: Trainer,
    run_dir: Path,
    rt: Runtime,
    base: dict[str, Any],
    stop: GracefulStop,
    again: str | None,
) -> TrainState:
    """fit() with signal handling; an interrupted or diverged run leaves a summary saying so
    (ending with `again`, how to continue it)."""
    trainer.check_stop = stop.check
    log.info(
        "training epochs %d..%d; Ctrl-C or SIGTERM stops after the current step",
        trainer.state.epoch + 1,
        trainer.cfg.train.epochs,
    )
    try:
        return trainer.fit()
    except (StopRequested, DivergenceError) as exc:
        status, code, msg = _stop_message(exc, trainer, run_dir, again)
    except OutputError as exc:  # disk full while saving: the last good last.pt is intact
        if (run_dir / "checkpoints" / "last.pt").is_file():
            exc.args = (f"{exc}; then {_advice(again, run_dir, first=False)}",)
        raise
    if rt.is_main:
        write_json(
            run_dir / "summary.json",
            {"status": status, "message": msg, **state_fields(trainer.state), **base},
        )
    log.error(msg)
    raise TrainingStopped(msg, code)


def _stop_message(
    exc: StopRequested | DivergenceError, trainer: Trainer, run_dir: Path, again: str | None
) -> tuple[str, int, str]:
    """(summary status, exit code, one-line message) for a run that stopped early."""
    st, ckpts = trainer.state, run_dir / "checkpoints"
    if isinstance(exc, DivergenceError):
        kept = (
            f"best checkpoint kept at {ckpts / 'best.pt'} (epoch {st.best_epoch})"
            if (ckpts / "best.pt").is_file()
            else "no checkpoint was kept (no epoch ended with finite values)"
        )
        return "diverged", 3, f"stopped: {exc}; {kept}; lower optim.lr or check the data"
    if not (ckpts / "last.pt").is_file():
        msg = f"interrupted by {exc} in epoch 1, before any checkpoint was written; " + (
            again or f"nothing to resume: start again with a new --out (or delete {run_dir})"
        )
    else:
        where = (
            "after the last epoch, before the final test evaluation"
            if st.epoch >= trainer.cfg.train.epochs or st.stopped_early
            else f"epoch {st.epoch + 1} was abandoned"
        )
        msg = f"interrupted by {exc}; {where}. {_advice(again, run_dir, first=True)}"
    return "interrupted", 128 + exc.signum, msg


def _advice(again: str | None, run_dir: Path, first: bool) -> str:
    """How to continue, as a sentence's first words (`first`) or later in one."""
    how = again or f"continue with: bloodmnist train --resume {run_dir}"
    return (how[:1].upper() if first else how[:1].lower()) + how[1:]
