"""`bloodmnist runs`: the table of run folders under a folder, from their files alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import describe, error_lines, run_cli

pytestmark = pytest.mark.slow


def tiny_run(npz: Path, out: str, seed: int, epochs: int, *extra: str) -> list[str]:
    return [
        "train", "--recipe", "reference", "--data", str(npz), "--subset", "64", "--epochs",
        str(epochs), "--seed", str(seed), "--precision", "fp32", "--pretrained", "none",
        "--set", "runtime.threads=1",
        "--set", "model.arch=resnet9", "--set", "model.width=0.25", "--set",
        "runtime.reports=false", "--set", "eval.tta=false", "--out", out, "--quiet", *extra,
    ]  # fmt: skip


def table(stdout: str) -> tuple[list[str], list[list[str]]]:
    """(header cells, data rows) of the printed table (cells are separated by 2+ spaces)."""
    import re

    lines = stdout.strip().splitlines()[1:]
    split = [re.split(r"\s{2,}", line.strip()) for line in lines]
    return split[0], split[1:]


def test_runs_lists_a_folder_of_runs(tmp_path: Path, shared_data: Path) -> None:
    r = run_cli(tiny_run(shared_data, "runs/a", 1, 2), tmp_path)
    assert r.returncode == 0, describe(r)
    r = run_cli(tiny_run(shared_data, "runs/group/b", 2, 1, "--recipe", "fast"), tmp_path)
    assert r.returncode == 0, describe(r)
    (tmp_path / "runs" / "notes").mkdir()  # not a run folder: not listed

    r = run_cli(["runs", "runs", "--sort", "seed"], tmp_path)
    assert r.returncode == 0, describe(r)
    assert r.stdout.splitlines()[0] == "2 run(s) under runs"
    header, rows = table(r.stdout)
    assert header == [
        "run", "recipe", "arch", "seed", "epochs", "best val acc", "test acc", "test TTA",
        "PFLOP", "wall time", "status",
    ]  # fmt: skip
    assert [row[0] for row in rows] == ["a", "group/b"]  # sorted by seed: 1, 2
    for row, name in zip(rows, ("a", "group/b"), strict=True):
        summary = json.loads((tmp_path / "runs" / name / "summary.json").read_text())
        cells = dict(zip(header, row, strict=True))
        assert cells["arch"] == "resnet9 x0.25"
        assert cells["seed"] == str(summary["seed"])
        assert cells["epochs"] == f"{summary['epochs_run']}/{summary['epochs_run']}"
        assert cells["best val acc"] == f"{summary['best_val_acc']:.4f}"
        assert cells["test acc"] == f"{summary['test_acc']:.4f}"
        assert cells["test TTA"] == "-"  # eval.tta=false
        pflop = summary.get("train_pflop")
        assert cells["PFLOP"] == ("-" if pflop is None else f"{pflop:.3g}")
        assert cells["status"] == "completed"
    assert [row[1] for row in rows] == ["reference", "fast"]

    r = run_cli(["runs", "runs", "--sort", "epochs"], tmp_path)  # most epochs first
    assert [row[0] for row in table(r.stdout)[1]] == ["a", "group/b"], describe(r)
    r = run_cli(["runs", "runs", "--sort", "colour"], tmp_path)
    assert r.returncode == 2
    assert error_lines(r) == [
        "bloodmnist runs: error: --sort must be one of name, recipe, arch, seed, epochs, "
        "val_acc, test_acc, test_acc_tta, pflop, seconds, status, got 'colour'"
    ]


def test_folders_the_tool_did_not_write_are_listed_not_fatal(tmp_path: Path) -> None:
    """A config.yaml that is a list, a width that is not a number, a summary that is not an
    object, a history with a bad cell: each run is still listed, from what can be read."""
    odd = tmp_path / "runs"
    (odd / "a" / "checkpoints").mkdir(parents=True)
    (odd / "a" / "config.yaml").write_text("- x\n")
    (odd / "b").mkdir()
    (odd / "b" / "config.yaml").write_text("model: {arch: resnet9, width: null}\ntrain: 3\n")
    (odd / "b" / "history.csv").write_text("epoch,val_acc,seconds\n1,0.5,2\n2,oops,\n")
    (odd / "b" / "summary.json").write_text("[1, 2]")
    r = run_cli(["runs", "runs"], tmp_path)
    assert r.returncode == 0, describe(r)
    header, rows = table(r.stdout)
    cells = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert set(cells) == {"a", "b"}
    assert cells["a"]["status"] == "empty" and cells["a"]["arch"] == "-"
    assert cells["b"]["arch"] == "resnet9" and cells["b"]["best val acc"] == "0.5000"


def _hand_run(folder: Path, seed: object, summary: dict, history_vals: list[float]) -> None:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(json.dumps({"train": {"seed": seed, "epochs": 80}}))
    (folder / "summary.json").write_text(json.dumps(summary))
    rows = [f"{i},{v},10" for i, v in enumerate(history_vals, 1)]
    (folder / "history.csv").write_text("\n".join(["epoch,val_acc,seconds", *rows]) + "\n")


_HOLD = """
import sys, time
from pathlib import Path
from bloodmnist.training.runlock import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_values_of_odd_types_links_and_a_resumed_run(tmp_path: Path) -> None:
    """Hand-edited values of the wrong type are shown as '-' and sort last, not a crash; a
    study's symlinked seeds are listed once (links to other folders are not walked, so a cycle
    costs nothing); a resumed run still
    training is 'running' with its history's numbers, not the old summary's."""
    import subprocess
    import sys

    root = tmp_path / "runs"
    _hand_run(root / "c", "s2", {"status": "completed", "test_acc": "0.8"}, [0.5])
    _hand_run(root / "d", 1, {"status": "completed", "test_acc": 0.9, "epochs_run": 1}, [0.6])
    old = {"status": "interrupted", "epochs_run": 2, "best_val_acc": 0.7, "train_seconds": 20}
    _hand_run(root / "live", 2, old, [0.6, 0.7, 0.99])
    (root / "study").mkdir()
    (root / "study" / "seed-1").symlink_to(root / "d", target_is_directory=True)
    (root / "study" / "loop").symlink_to(root / "study", target_is_directory=True)
    # a link to a folder that is not a run is not walked into (a large tree elsewhere)
    _hand_run(tmp_path / "elsewhere" / "x", 3, {"status": "completed"}, [0.5])
    (root / "study" / "outside").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(root / "live")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for key in ("seed", "test_acc", "name"):
            r = run_cli(["runs", "runs", "--sort", key], tmp_path)
            assert r.returncode == 0, describe(r)
            header, rows = table(r.stdout)
            cells = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
            assert set(cells) == {"c", "d", "live"}  # d once, though linked from study/
        assert [row[0] for row in rows] == ["c", "d", "live"]
        r = run_cli(["runs", "runs", "--sort", "seed"], tmp_path)
        assert [row[0] for row in table(r.stdout)[1]] == ["d", "live", "c"]  # 'c': no number
        assert cells["c"]["seed"] == "-" and cells["c"]["test acc"] == "-"
        assert cells["live"]["status"] == "running"
        assert cells["live"]["epochs"] == "3/80" and cells["live"]["best val acc"] == "0.9900"
        assert cells["live"]["wall time"] == "0:00:30"
        r = run_cli(["runs", "runs/study"], tmp_path)
        assert r.returncode == 0, describe(r)
        assert [row[0] for row in table(r.stdout)[1]] == ["seed-1"]
    finally:
        holder.kill()
        holder.wait()
    r = run_cli(["runs", "runs", "--sort", "name"], tmp_path)
    header, rows = table(r.stdout)
    cells = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert cells["live"]["status"] == "interrupted" and cells["live"]["epochs"] == "2/80"
    r = run_cli(["runs", "."], root / "d")  # the folder itself: named, not ''
    assert table(r.stdout)[1][0][0] == "d", describe(r)


def test_the_recipe_column_shows_a_config_file_as_a_file() -> None:
    """A search's `best.yaml` was listed as recipe "best", the name of a shipped recipe."""
    from bloodmnist.tracking.runs import _recipe

    train = ["/usr/bin/bloodmnist", "train"]
    assert _recipe([*train, "--config", "tn/best.yaml"]) == "best.yaml"
    assert _recipe([*train, "--recipe", "fast", "--config=my.yaml"]) == "fast + my.yaml"
    assert _recipe([*train, "--recipe", "best", "--recipe", "reference"]) == "reference"
    assert _recipe(train) == "fast" and _recipe(None) == "fast"
