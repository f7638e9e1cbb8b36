"""TensorBoard tracking: every run writes RUN_DIR/tb/ event files that TensorBoard's own reader
reads back with the values of history.csv and summary.json; without the package, a run says so
once and trains on."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import describe, run_cli

pytestmark = pytest.mark.slow


def tiny_run(npz: Path, out: str, *extra: str) -> list[str]:
    return [
        "train", "--data", str(npz), "--subset", "64", "--epochs", "2", "--precision", "fp32",
        "--pretrained", "none", "--set", "runtime.threads=1", "--set", "model.arch=resnet9",
        "--set", "model.width=0.25", "--set", "optim.batch_size=16", "--set", "eval.tta=false",
        "--out", out, "--quiet", *extra,
    ]  # fmt: skip


def test_event_files_hold_the_logged_values(tmp_path: Path, shared_data: Path) -> None:
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="the tensorboard package (extra [track]) is not installed",
    )
    r = run_cli(tiny_run(shared_data, "run"), tmp_path)  # reports on: figures are logged too
    assert r.returncode == 0, describe(r)
    run_dir = tmp_path / "run"
    acc = event_accumulator.EventAccumulator(
        str(run_dir / "tb"), size_guidance={event_accumulator.IMAGES: 0}
    )
    acc.Reload()
    history = list(csv.DictReader((run_dir / "history.csv").open()))
    assert len(history) == 2
    for key, tag in (
        ("train_loss", "loss/train"),
        ("val_loss", "loss/val"),
        ("train_acc", "accuracy/train"),
        ("val_acc", "accuracy/val"),
        ("val_auc", "auc/val"),
        ("lr", "lr"),
    ):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2], tag
        expected = [float(h[key]) for h in history]  # history.csv keeps 6 significant digits
        assert [e.value for e in events] == pytest.approx(expected, rel=1e-5), tag
    speed = acc.Scalars("speed/images_per_s")
    for event, row in zip(speed, history, strict=True):
        assert event.value == pytest.approx(64 / float(row["seconds"]), rel=1e-4)
    summary = json.loads((run_dir / "summary.json").read_text())
    (test_acc,) = acc.Scalars("test/acc")
    assert test_acc.step == 2 and test_acc.value == pytest.approx(summary["test_acc"], abs=1e-6)
    (f1,) = acc.Scalars("test/macro_f1")
    assert f1.value == pytest.approx(summary["test_macro_f1"], abs=1e-6)
    figures = sorted(p.stem for p in (run_dir / "figures").glob("*.png"))
    assert figures and sorted(acc.Tags()["images"]) == [f"figures/{n}" for n in figures]
    (image,) = acc.Images("figures/training_curves")
    assert image.width > 100 and image.height > 100


def test_without_tensorboard_the_run_says_so_once(tmp_path: Path, shared_data: Path) -> None:
    # A module named `tensorboard` that fails to import stands for an install without it.
    blocker = tmp_path / "no_tensorboard"
    blocker.mkdir()
    (blocker / "tensorboard.py").write_text("raise ImportError('tensorboard is not installed')\n")
    args = tiny_run(shared_data, "run", "--set", "runtime.reports=false")
    r = run_cli(args, tmp_path, env={"PYTHONPATH": str(blocker)})
    assert r.returncode == 0, describe(r)
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("tracking off: the tensorboard package is not installed") == 1
    assert not (tmp_path / "run" / "tb").exists()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"


def test_runtime_tensorboard_false_writes_no_event_files(tmp_path: Path, shared_data: Path) -> None:
    args = tiny_run(shared_data, "run", "--set", "runtime.reports=false")
    r = run_cli([*args, "--set", "runtime.tensorboard=false"], tmp_path)
    assert r.returncode == 0, describe(r)
    assert not (tmp_path / "run" / "tb").exists()
    assert "tracking off" not in (tmp_path / "run" / "train.log").read_text()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
