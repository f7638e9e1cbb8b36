"""data.train_on=train+val: the validation images join training after a recipe was chosen on
them; the run is the same as one on a file whose train split holds both, and nothing in it may
be chosen on validation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bloodmnist.config import Config, build_config
from bloodmnist.errors import ConfigError
from bloodmnist.evaluation.calibration import (
    apply_temperature,
    calibration_metrics,
    logits_from_probs,
)
from bloodmnist.reporting.html import _run_info
from bloodmnist.tuning.space import SpaceError, parse_space
from conftest import describe, load_bench, run_cli
from test_predict import PBC

N = 96  # images per split
TINY = ["--set", "model.arch=resnet9", "--set", "model.width=0.125"]
COMMON = ["--epochs", "1", "--precision", "fp32", "--pretrained", "none", "--quiet", "--seed", "3"]
COMMON += ["--recipe", "fast", "--set", "runtime.threads=1", "--set", "runtime.reports=false"]
COMMON += ["--set", "eval.compare_tta=false", "--set", "eval.temperature_scaling=false", *TINY]


def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_a_run_on_train_and_val_is_the_run_on_one_joined_file(
    shared_data: Path, tmp_path: Path
) -> None:
    with np.load(shared_data) as f:
        src = {k: f[k][:N] for k in f.files}
    joined = dict(src)
    for key in ("images", "labels"):  # train rows first, then val, as the option joins them
        joined[f"train_{key}"] = np.concatenate([src[f"train_{key}"], src[f"val_{key}"]])
    np.savez(tmp_path / "joined.npz", **joined)
    ours, theirs = tmp_path / "train_on", tmp_path / "joined"
    args = ["train", "--data", str(shared_data), "--out", str(ours), "--subset", str(N), *COMMON]
    fixed_t = ["--set", "eval.temperature=0.5", "--set", "eval.temperature_tta=0.4"]
    result = run_cli([*args, "--set", "data.train_on=train+val", *fixed_t], cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    assert "training on train + val: the validation numbers are not held out" in result.stderr
    other = ["train", "--data", str(tmp_path / "joined.npz"), "--out", str(theirs), *COMMON]
    result = run_cli(other, cwd=tmp_path)
    assert result.returncode == 0, describe(result)

    summary = json.loads((ours / "summary.json").read_text())
    assert summary["train_on"] == "train+val" and summary["train_images_seen"] == 2 * N
    assert json.loads((theirs / "summary.json").read_text())["train_on"] == "train"
    manifest = json.loads((ours / "manifest.json").read_text())
    splits = manifest["data"]["splits"]
    assert splits["train"]["n"] == 2 * N and splits["val"]["n"] == N, splits
    assert _history(ours) == _history(theirs)  # the same steps on the same images
    a = torch.load(ours / "checkpoints" / "best.pt", weights_only=False)["model"]
    b = torch.load(theirs / "checkpoints" / "best.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "validation is not held out" in _run_info(summary)
    assert "train (validation held out)" in _run_info({"seed": 1})  # runs from before the key
    _val_of_such_a_run_is_marked(ours, tmp_path)
    _the_fixed_temperature_is_stored_and_applied(ours, summary, tmp_path)
    # a student whose validation is held out may not learn from it
    student = [*args[:4], str(tmp_path / "student"), *args[5:], "--set", f"train.teacher={ours}"]
    result = run_cli(student, cwd=tmp_path)
    assert result.returncode != 0 and "teacher" in result.stderr, describe(result)
    assert "trained on the validation images (data.train_on=train+val)" in result.stderr
    assert not (tmp_path / "student" / "checkpoints" / "last.pt").exists()


def _the_fixed_temperature_is_stored_and_applied(run: Path, summary: dict, cwd: Path) -> None:
    """eval.temperature(_tta): stored as a fitted one would be, the test calibration after it
    computed with it, and predict applies it."""
    assert (summary["temperature"], summary["temperature_tta"]) == (0.5, 0.4)
    assert summary["temperature_source"] == "eval.temperature"
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    assert state["temperature"] == {"plain": 0.5, "tta": 0.4}
    preds = np.load(run / "predictions.npz")
    for key, suffix, t in (("test_probs", "", 0.5), ("test_probs_tta", "_tta", 0.4)):
        scaled = apply_temperature(logits_from_probs(preds[key]), t)
        ece = calibration_metrics(scaled, preds["test_labels"])["ece"]
        assert summary[f"test_ece{suffix}_ts"] == pytest.approx(ece)
        assert summary[f"test_ece{suffix}_ts"] != pytest.approx(summary[f"test_ece{suffix}"])
    posthoc = load_bench("posthoc_temperature").at_fixed(run, 0.5, 0.4)  # the script's --fixed
    assert all(posthoc[k] == summary[k] for k in ("test_ece_ts", "test_nll_tta_ts", "temperature"))
    if not PBC.is_dir():  # the npz alone is enough for the rest
        return
    out = cwd / "pred.json"
    result = run_cli(["predict", str(run), str(PBC / "basophil"), "--out", str(out)], cwd)
    assert result.returncode == 0, describe(result)
    assert json.loads(out.read_text())["temperature"] == 0.5


def _val_of_such_a_run_is_marked(run: Path, cwd: Path) -> None:
    result = run_cli(["evaluate", str(run), "--split", "val", "--no-tta", "--threads", "1"], cwd)
    assert result.returncode == 0, describe(result)
    assert json.loads(result.stdout)["held_out"] is False
    assert "these numbers are not held out" in result.stderr


def test_resume_with_more_epochs_may_not_reach_a_plateau(shared_data: Path, tmp_path: Path) -> None:
    """The reference schedule's plateau phase steers on validation: a train+val run that ends
    before it is accepted, and `--resume --epochs` may not take it there (it was not
    re-checked)."""
    run = tmp_path / "ref"
    args = ["train", "--data", str(shared_data), "--out", str(run), "--subset", "64"]
    args += ["--recipe", "reference", "--epochs", "1", "--precision", "fp32", "--quiet"]
    args += ["--pretrained", "none", "--set", "runtime.threads=1", "--set", "eval.tta=false"]
    args += ["--set", "runtime.reports=false", *TINY, "--set", "data.train_on=train+val"]
    args += ["--set", "train.select=last", "--set", "schedule.cosine_epochs=1"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    result = run_cli(["train", "--resume", str(run), "--epochs", "3", "--quiet"], cwd=tmp_path)
    assert result.returncode != 0, describe(result)
    assert "use schedule.kind=onecycle" in result.stderr, describe(result)
    assert len(_history(run)) == 1


@pytest.mark.parametrize(
    ("recipe", "sets", "says"),
    [
        ("reference", [], "set train.select=last"),  # picks the best validation epoch
        ("reference", ["train.select=last"], "use schedule.kind=onecycle"),  # plateau on val
        ("fast", ["train.teacher=soft.NPZ", "eval.temperature_scaling=false"], "a soft-label"),
        ("fast", [], "set eval.temperature_scaling=false"),  # fitted on training images
        ("fast", ["data.train_on=all"], "data.train_on must be train|train+val"),
    ],
)
def test_choices_on_validation_are_refused(recipe: str, sets: list[str], says: str) -> None:
    named = any(s.startswith("data.train_on") for s in sets)
    sets = sets if named else ["data.train_on=train+val", *sets]
    with pytest.raises(ConfigError, match=says):
        build_config(overrides=sets, recipe=recipe)


def test_what_may_train_on_validation() -> None:
    sets = ["data.train_on=train+val", "eval.temperature_scaling=false"]
    for recipe in ("fast", "best"):  # one-cycle, the last epoch shipped
        assert build_config(overrides=sets, recipe=recipe).data.train_on == "train+val"
    # the reference's schedule without its plateau phase (cosine over every epoch)
    sets = ["data.train_on=train+val", "train.select=last", "train.epochs=30"]
    assert build_config(overrides=sets, recipe="reference").train.epochs == 30


def test_a_search_refuses_to_train_on_validation() -> None:
    space = {"params": {"optim.lr": {"type": "float", "low": 0.01, "high": 0.1}}}
    sets = ["data.train_on=train+val", "eval.temperature_scaling=false"]
    base = build_config(overrides=sets, recipe="fast")
    with pytest.raises(SpaceError, match="a search chooses on validation"):
        parse_space(space, base)
    varied = {"params": {"data.train_on": {"type": "categorical", "choices": ["train"]}}}
    with pytest.raises(SpaceError, match="drop data.train_on"):
        parse_space(varied, Config())


def test_runs_does_not_rank_by_validation_it_trained_on(tmp_path: Path) -> None:
    from bloodmnist.tracking.runs import find_runs, format_table

    for name, train_on, val in (("held", "train", 0.97), ("joined", "train+val", 0.999)):
        run = tmp_path / name
        run.mkdir()
        (run / "config.yaml").write_text(json.dumps({"data": {"train_on": train_on}}))
        (run / "summary.json").write_text(json.dumps({"best_val_acc": val, "test_acc": 0.9}))
    rows = find_runs(tmp_path, sort="val_acc")
    assert [r["name"] for r in rows] == ["held", "joined"]  # joined has no score to rank by
    assert rows[1]["val_acc"] is None and rows[0]["val_acc"] == 0.97
    table = format_table(rows, tmp_path)
    assert "in train" in table and "0.9990" not in table and "0.9700" in table


def test_an_ensemble_with_a_member_trained_on_val_says_so() -> None:
    from types import SimpleNamespace

    from bloodmnist.ensembles.build import _member_fields

    def member(train_on: str) -> SimpleNamespace:
        sets = [f"data.train_on={train_on}", "eval.temperature_scaling=false"]
        cfg = build_config(overrides=sets, recipe="fast")
        summary = {"train_pflop": 0.1, "train_on": cfg.data.train_on}  # as train writes it
        return SimpleNamespace(run_dir=Path(train_on), cfg=cfg, summary=summary)

    assert _member_fields([member("train"), member("train")])["train_on"] == "train"
    assert _member_fields([member("train"), member("train+val")])["train_on"] == "train+val"


@pytest.mark.parametrize(
    ("sets", "says"),
    [
        (["eval.temperature=0"], "eval.temperature must be > 0"),
        (["eval.temperature=0.5", "eval.temperature_tta=-1"], "eval.temperature_tta must be > 0"),
        (["eval.temperature_tta=0.4"], "needs eval.temperature"),
        (["eval.temperature_scaling=true", "eval.temperature=0.5"], "set one of them"),
        (["eval.tta=false", "eval.temperature=0.5", "eval.temperature_tta=0.4"], "needs eval.tta"),
    ],
)
def test_a_fixed_temperature_that_cannot_hold_is_refused(sets: list[str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        build_config(overrides=sets, recipe="reference")


def test_a_fixed_temperature_calibrates_a_run_on_train_and_val() -> None:
    sets = ["data.train_on=train+val", "eval.temperature_scaling=false", "eval.temperature=0.5"]
    cfg = build_config(overrides=sets, recipe="best")
    assert (cfg.eval.temperature, cfg.eval.temperature_tta) == (0.5, None)
    with pytest.raises(ConfigError, match=r"eval.temperature=T stores a fixed one"):
        build_config(overrides=sets[:1], recipe="best")


def test_a_fixed_temperature_needs_no_final_test(shared_data: Path, tmp_path: Path) -> None:
    """eval.final_test=false skips the test split, not the fixed temperature; without TTA there
    is no T_tta."""
    run = tmp_path / "no_test"
    args = ["train", "--data", str(shared_data), "--out", str(run), "--subset", "64", *COMMON]
    args += ["--set", "eval.final_test=false", "--set", "eval.tta=false"]
    result = run_cli([*args, "--set", "eval.temperature=0.7"], cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_evaluated"] is False and summary["temperature"] == 0.7
    assert summary["temperature_tta"] is None
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    assert state["temperature"] == {"plain": 0.7, "tta": None}
