"""`bloodmnist study` and `bloodmnist compare` end to end on the real data, in subprocesses.

One tiny 2-seed study (64 images per split, 1 epoch, no TTA, temperature scaling on) is shared
by the tests; each seed is an ordinary run folder, so the run-level calibration and the MedMNIST
evaluator CSV are checked on it as well.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from openpyxl import load_workbook
from sklearn.metrics import accuracy_score, roc_auc_score

from bloodmnist.config import HOW_TO_RUN, Config, apply_overrides
from bloodmnist.errors import BloodMNISTError
from bloodmnist.evaluation.calibration import calibrate, ece
from bloodmnist.evaluation.medmnist_csv import read_evaluator_csv
from bloodmnist.evaluation.stats import mcnemar_exact
from bloodmnist.studies.adopt import config_differences
from bloodmnist.studies.study import (
    _set_aside,
    check_train_args,
    new_plan,
    parse_seeds,
    seed_state,
    split_cores,
)
from bloodmnist.training.checkpoint import load_checkpoint
from conftest import describe, run_cli

pytestmark = pytest.mark.slow
SEEDS = (3, 4)
TINY = [
    "--recipe",
    "reference",
    "--subset",
    "64",
    "--epochs",
    "1",
    "--pretrained",
    "none",
    "--set",
    "eval.tta=false",
    # The fast recipe's network (a 26th of the ResNet-18's FLOPs): studies do not depend on it.
    "--set",
    "model.arch=resnet9",
    "--set",
    "model.width=0.25",
]


@pytest.fixture(scope="module")
def study(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("study")
    args = ["study", "--seeds", ",".join(map(str, SEEDS)), "--jobs", "1", "--out", "st"]
    args += ["--data", str(shared_data), *TINY, "--set", "eval.temperature_scaling=true"]
    result = run_cli([*args, "--n-boot", "200"], cwd=work)
    assert result.returncode == 0, describe(result)
    out = json.loads(result.stdout)
    assert out["seeds"] == list(SEEDS)
    return work / "st"


def _summaries(study: Path) -> list[dict]:
    return [json.loads((study / f"seed-{s}" / "summary.json").read_text()) for s in SEEDS]


def test_study_json_mean_std_equal_numpy(study: Path) -> None:
    record = json.loads((study / "study.json").read_text())
    summaries = _summaries(study)
    assert record["seeds"] == list(SEEDS) and record["failed"] == []
    assert record["variants"] == ["plain"]  # TTA was off: no fake TTA numbers
    for key in ("test_acc", "test_macro_f1", "test_auc", "test_ece", "test_ece_ts"):
        vals = [s[key] for s in summaries]
        assert record["mean_std"][key]["mean"] == pytest.approx(np.mean(vals), abs=1e-12)
        assert record["mean_std"][key]["std"] == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
    assert record["mean_std"]["test_acc_tta"]["mean"] is None
    ci = record["ci95_seed_mean"]["plain"]["acc"]
    assert ci["point"] == pytest.approx(np.mean([s["test_acc"] for s in summaries]))
    assert ci["low"] <= ci["point"] <= ci["high"] and ci["n_boot"] == 200 and ci["n"] == 64
    recall0 = [s["test"]["per_class"][0]["recall"] for s in summaries]
    assert record["per_class"]["plain"][0]["recall"]["mean"] == pytest.approx(np.mean(recall0))
    assert [r["seed"] for r in record["per_seed"]] == list(SEEDS)


def test_study_reports(study: Path) -> None:
    text = (study / "study.html").read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == 1
    assert "<script" not in text.lower() and not re.search(r"src=[\"']https?:", text)
    record = json.loads((study / "study.json").read_text())
    assert f"{record['mean_std']['test_acc']['mean']:.4f} ± " in text
    wb = load_workbook(study / "study.xlsx", read_only=True)
    assert wb.sheetnames == ["summary", "per_seed", "per_class", "plan"]
    rows = {r[0]: r for r in wb["summary"].iter_rows(min_row=2, values_only=True)}
    assert rows["test_acc"][1] == pytest.approx(record["mean_std"]["test_acc"]["mean"])
    wb.close()
    plan = json.loads((study / "study_plan.json").read_text())
    assert plan["seeds"] == list(SEEDS) and plan["jobs"] == 1 and plan["threads"] >= 1
    for seed in SEEDS:
        log = (study / "logs" / f"seed-{seed}.log").read_text()
        assert f"--seed {seed}" in log and f"runtime.threads={plan['threads']}" in log


def test_run_calibration_and_temperature(study: Path) -> None:
    run = study / f"seed-{SEEDS[0]}"
    summary = json.loads((run / "summary.json").read_text())
    preds = np.load(run / "predictions.npz")
    assert summary["test_ece"] == pytest.approx(ece(preds["test_probs"], preds["test_labels"]))
    assert summary["test_nll"] == pytest.approx(summary["test"]["nll"], rel=1e-9)
    assert 0 <= summary["test_brier"] <= 2 and summary["test_ece_tta"] is None
    assert 0.05 <= summary["temperature"] <= 20 and summary["test_ece_ts"] is not None
    # the fitted temperature is stored in best.pt, where predict/serve/export read it
    state = load_checkpoint(run / "checkpoints" / "best.pt")
    assert state["temperature"] == {"plain": summary["temperature"], "tta": None}
    scaled = calibrate(preds["test_probs"], summary["temperature"])
    assert ece(scaled, preds["test_labels"]) == pytest.approx(summary["test_ece_ts"], abs=1e-6)
    html = (run / "report.html").read_text(encoding="utf-8")
    assert (run / "figures" / "reliability_diagram.png").is_file()
    # the five run figures, the reliability diagram and the Grad-CAM figure
    assert html.count("data:image/png;base64,") == 6 and "ECE (15 bins)" in html


def test_medmnist_evaluator_csv(study: Path) -> None:
    run = study / f"seed-{SEEDS[0]}"
    [path] = run.glob("bloodmnist_test_*.csv")  # TTA was off: only the plain file
    assert path.name.endswith(f"@seed-{SEEDS[0]}.csv")
    parsed = read_evaluator_csv(path)
    preds = np.load(run / "predictions.npz")
    labels = preds["test_labels"].reshape(-1)
    assert (parsed["flag"], parsed["split"], parsed["size"]) == ("bloodmnist", "test", 28)
    assert parsed["index"].tolist() == list(range(64))
    np.testing.assert_array_equal(parsed["scores"], preds["test_probs"].astype(np.float64))
    # the evaluator's own recipe: mean one-vs-rest AUC over classes, argmax accuracy
    auc = np.mean([roc_auc_score(labels == c, parsed["scores"][:, c]) for c in range(8)])
    acc = accuracy_score(labels, parsed["scores"].argmax(axis=1))
    # the file name rounds to 3 decimals (a tie such as 0.0625 -> "0.062" is off by exactly 5e-4)
    assert parsed["auc"] == pytest.approx(auc, abs=5e-4 + 1e-12)
    assert parsed["acc"] == pytest.approx(acc, abs=5e-4 + 1e-12)


def _compare(a: Path, b: Path, cwd: Path, *extra: str):
    return run_cli(["compare", str(a), str(b), "--n-boot", "300", *extra], cwd=cwd)


def test_compare_two_runs(study: Path, tmp_path: Path) -> None:
    a, b = (study / f"seed-{s}" for s in SEEDS)
    result = _compare(a, b, tmp_path, "--json", "cmp.json")
    assert result.returncode == 0, describe(result)
    out = json.loads((tmp_path / "cmp.json").read_text())
    assert out == json.loads(result.stdout)
    sa, sb = _summaries(study)
    assert out["acc_diff"] == pytest.approx(sa["test_acc"] - sb["test_acc"])
    low, high = out["acc_diff_ci95"]
    assert low <= out["acc_diff"] <= high and out["variant"] == "plain"
    pa, pb = np.load(a / "predictions.npz"), np.load(b / "predictions.npz")
    y = pa["test_labels"].reshape(-1)
    expected = mcnemar_exact(pa["test_probs"].argmax(1) == y, pb["test_probs"].argmax(1) == y)
    assert out["mcnemar"]["p_value"] == pytest.approx(expected["p_value"])
    assert 0 < out["mcnemar"]["p_value"] <= 1
    assert out["same_training"] == [] and "warning" not in result.stderr
    again = _compare(a, b, tmp_path, "--json", "cmp.json")  # never overwrites
    assert again.returncode == 2 and "already exists" in again.stderr
    again = _compare(a, b, tmp_path, "--json", "no/cmp.json")  # said first, exit 2, not 1
    assert again.returncode == 2 and "folder no does not exist" in again.stderr
    assert not again.stdout  # no result printed before the refusal


def test_compare_study_with_run(study: Path, tmp_path: Path) -> None:
    result = _compare(study, study / f"seed-{SEEDS[0]}", tmp_path)
    assert result.returncode == 0, describe(result)
    out = json.loads(result.stdout)
    mean_acc = np.mean([s["test_acc"] for s in _summaries(study)])
    assert out["a"]["kind"] == "study" and out["a"]["seeds"] == list(SEEDS)
    assert out["a"]["acc"] == pytest.approx(mean_acc)
    # the run is one of the study's seeds: named, and warned about in one line
    seed_dir = study / f"seed-{SEEDS[0]}"
    assert out["same_training"] == [
        {"a": str(seed_dir), "b": str(seed_dir), "why": "the same run folder"}
    ]
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [
        f"bloodmnist compare: warning: {seed_dir} and {seed_dir} are one training (the same run "
        "folder): the sides share it, so they differ less than they would otherwise"
    ]


def test_compare_names_a_copied_run(study: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(study / f"seed-{SEEDS[1]}", copy)
    result = _compare(copy, study / f"seed-{SEEDS[1]}", tmp_path)
    assert result.returncode == 0, describe(result)
    out = json.loads(result.stdout)
    assert out["acc_diff"] == 0 and out["mcnemar"]["p_value"] == 1
    assert [p["why"] for p in out["same_training"]] == ["identical test predictions"]
    assert "are one training (identical test predictions)" in result.stderr


def test_compare_refuses_different_test_labels(study: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(study / f"seed-{SEEDS[1]}", other)
    preds = dict(np.load(other / "predictions.npz"))
    preds["test_labels"] = np.roll(preds["test_labels"], 1)
    np.savez(other / "predictions.npz", **preds)
    result = _compare(study / f"seed-{SEEDS[0]}", other, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "different test sets" in lines[0]


def test_compare_refuses_different_data(study: Path, shared_data: Path, tmp_path: Path) -> None:
    """A re-saved copy of the first 64 images per split: same test labels, different MD5."""
    with np.load(shared_data) as npz:
        small = {k: npz[k][:64] for k in npz.files}
    np.savez(tmp_path / "small.npz", **small)
    args = ["train", "--data", str(tmp_path / "small.npz"), "--out", "small-run", *TINY]
    trained = run_cli([*args, "--quiet", "--set", "runtime.reports=false"], cwd=tmp_path)
    assert trained.returncode == 0, describe(trained)
    result = _compare(study / f"seed-{SEEDS[0]}", tmp_path / "small-run", tmp_path)
    assert result.returncode == 2, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "different test data" in lines[0] and "MD5" in lines[0]


def test_study_resume_of_finished_study_only_reaggregates(study: Path, tmp_path: Path) -> None:
    before = {s: (study / "logs" / f"seed-{s}.log").read_text() for s in SEEDS}
    result = run_cli(["study", "--resume", str(study), "--n-boot", "50"], cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    assert "training" not in result.stderr
    assert {s: (study / "logs" / f"seed-{s}.log").read_text() for s in SEEDS} == before
    assert json.loads((study / "study.json").read_text())["bootstrap"]["n_boot"] == 50


def _files(run: Path) -> dict[Path, int]:
    return {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}


def test_study_adopts_a_finished_run_without_retraining_or_touching_it(
    study: Path, shared_data: Path, tmp_path: Path
) -> None:
    run = (study / f"seed-{SEEDS[0]}").resolve()
    before = _files(run)
    args = ["study", "--seeds", f"{SEEDS[0]},5", "--jobs", "1", "--out", "st", "--adopt", str(run)]
    args += ["--data", str(shared_data), *TINY, "--set", "eval.temperature_scaling=true"]
    result = run_cli([*args, "--n-boot", "50"], cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    assert f"seed {SEEDS[0]}: adopted {run}" in result.stderr
    st = tmp_path / "st"
    assert (st / f"seed-{SEEDS[0]}").is_symlink() and (st / f"seed-{SEEDS[0]}").resolve() == run
    assert not (st / "logs" / f"seed-{SEEDS[0]}.log").exists()  # not trained again
    assert (st / "logs" / "seed-5.log").is_file()
    record = json.loads((st / "study.json").read_text())
    assert record["seeds"] == [SEEDS[0], 5] and record["plan"]["adopted"] == {
        str(SEEDS[0]): str(run)
    }
    adopted = json.loads((run / "summary.json").read_text())
    assert record["per_seed"][0]["test_acc"] == adopted["test_acc"]
    assert _files(run) == before  # the adopted run folder was only read


@pytest.mark.parametrize("epochs", ["1", "2"])
def test_study_resume_gives_unstarted_seeds_the_started_seeds_config(
    study: Path, shared_data: Path, tmp_path: Path, epochs: str
) -> None:
    """A plan whose options now give another config than its started seeds ran with (a newer
    bloodmnist may build them differently; here the plan says --epochs 2) is refused on
    --resume before any seed starts; an unchanged one trains the seed still to run. That seed
    was stopped before its first epoch ended (nothing to resume): its folder is moved into
    logs/ and it trains anew (it was 'broken' for good)."""
    st = tmp_path / "st"
    st.mkdir()
    shutil.copytree(study / f"seed-{SEEDS[0]}", st / f"seed-{SEEDS[0]}")
    stopped = {"status": "interrupted", "epochs_run": 0}
    (st / "seed-5").mkdir()
    (st / "seed-5" / "summary.json").write_text(json.dumps(stopped))
    train_args = ["--data", str(shared_data), *TINY, "--set", "eval.temperature_scaling=true"]
    new_plan([SEEDS[0], 5], [*train_args, "--epochs", epochs], 1).save(st)
    result = run_cli(["study", "--resume", str(st), "--n-boot", "50"], cwd=tmp_path)
    if epochs == "1":
        assert result.returncode == 0, describe(result)
        assert "seed 5: stopped before its first epoch ended; folder moved to" in result.stderr
        summary = json.loads((st / "seed-5" / "summary.json").read_text())
        assert summary["status"] == "completed"
        moved = st / "logs" / "seed-5.stopped-before-epoch-1.1" / "summary.json"
        assert json.loads(moved.read_text()) == stopped
        return
    assert result.returncode == 2, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.epochs (ran 1, now 2)" in lines[0], lines
    assert f"seed {SEEDS[0]} ran with" in lines[0] and "--adopt" in lines[0]
    assert json.loads((st / "seed-5" / "summary.json").read_text()) == stopped  # untouched
    assert not (st / "logs").exists()


def test_a_study_folder_is_run_by_one_study_at_a_time(shared_data: Path, tmp_path: Path) -> None:
    """A second study on a folder in use (a --resume while it runs) is refused in one line
    before it starts any seed."""
    from bloodmnist.training.runlock import RunLock

    st = tmp_path / "st"
    st.mkdir()
    new_plan([5], ["--data", str(shared_data), *TINY], 1).save(st)
    with RunLock(st):  # this test process plays the running study
        result = run_cli(["study", "--resume", str(st)], cwd=tmp_path)
    assert result.returncode == 2, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{st} is in use by process {os.getpid()}" in lines[0], lines
    assert not (st / "seed-5").exists() and not (st / "logs").exists()


def test_study_adopts_a_run_on_a_file_with_its_own_class_names(
    shared_data: Path, tmp_path: Path
) -> None:
    """Training takes the class names (and size) from a file that has them (`data build`'s);
    the study's options, built without the file, must still match such a run."""
    named = tmp_path / "named.npz"
    with np.load(shared_data) as z:
        arrays = {k: z[k] for k in z.files}
    names = ["ba", "eo", "er", "ig", "ly", "mo", "ne", "pl"]
    np.savez(named, **arrays, class_names=np.array(names))
    options = ["--data", str(named), *TINY]
    result = run_cli(["train", *options, "--seed", "5", "--out", "r5", "--quiet"], cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    args = ["study", "--seeds", "5", "--out", "st", "--adopt", "r5", *options, "--n-boot", "50"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    assert "seed 5: adopted" in result.stderr
    record = json.loads((tmp_path / "st" / "study.json").read_text())
    assert record["seeds"] == [5] and not (tmp_path / "st" / "logs" / "seed-5.log").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seeds", "5,6"], f"it was trained with seed {SEEDS[0]}, not one of [5, 6]"),
        (["--seeds", f"{SEEDS[0]}", "--epochs", "2"], "train.epochs (run 1, study 2)"),
    ],
)
def test_study_refuses_to_adopt_a_run_with_other_options(
    study: Path, shared_data: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    run = study / f"seed-{SEEDS[0]}"
    args = ["study", "--out", "st", "--adopt", str(run), "--data", str(shared_data)]
    args += [*TINY, "--set", "eval.temperature_scaling=true", *extra]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 2, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "st").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "1,2", "--seed", "5"], "study sets --seed"),
        (["--seeds", "1", "--bogus"], "unrecognized arguments: --bogus"),
        (["--seeds", "1", "--res", "x"], "unrecognized arguments: --res x"),  # no abbreviations
        (["--seeds", "1", "--set", "optim.nope=1"], "unknown config key 'optim.nope'"),
        (["--seeds", "1", "--set", "eval.final_test=false"], "drop eval.final_test=false"),
    ],
)
def test_study_bad_input_is_one_line_and_creates_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = run_cli(["study", *args, "--out", "st"], cwd=tmp_path)
    assert result.returncode == 2, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert lines[0].startswith("bloodmnist study: error:")
    assert not (tmp_path / "st").exists()


def test_adoption_compares_what_a_run_computes_not_how_it_ran() -> None:
    """Threads, compile, reports and TensorBoard (the keys `train --resume` may change) and
    where a run wrote do not stop an adoption; any training setting does."""
    how = ["runtime.threads=7", "runtime.compile=true", "runtime.reports=false"]
    how += ["runtime.tensorboard=false", "runtime.out=elsewhere", "runtime.name=x"]
    ran = apply_overrides(Config(), [*how, "data.path=/somewhere/else.npz"])
    assert len(HOW_TO_RUN) == 4 and config_differences(ran, Config()) == []
    what = apply_overrides(Config(), ["optim.lr=0.01", "eval.tta=false"])
    assert config_differences(what, Config()) == ["eval.tta", "optim.lr"]


def test_seed_and_core_planning() -> None:
    assert parse_seeds("42,43, 44") == [42, 43, 44]
    for bad, message in (("1,x", "expects integers"), ("1,1", "repeated"), ("", "at least one")):
        with pytest.raises(BloodMNISTError, match=message):
            parse_seeds(bad)
    assert split_cores(3, 2, 2) == (2, 1)  # jobs x threads <= cores
    assert split_cores(3, 1, 2) == (1, 2)
    assert split_cores(2, 8, 16) == (2, 8)  # never more jobs than seeds
    with pytest.raises(BloodMNISTError, match="use --seeds"):
        check_train_args(["--set", "train.seed=3"])
    with pytest.raises(BloodMNISTError, match="use --seeds"):
        check_train_args(["--set=train.seed=5"])  # the one-token form, too
    with pytest.raises(BloodMNISTError, match="study sets --out"):
        check_train_args(["--out=x"])


def test_study_failed_seeds_run_in_parallel_and_say_how_to_resume(tmp_path: Path) -> None:
    """Seeds that fail (an unreadable data file) fail alone, J at a time, and the study says
    so; a data file that is not there is refused before the study folder exists."""
    missing = tmp_path / "missing.npz"
    args = ["study", "--seeds", "1,2", "--jobs", "2", "--out", "st", "--data", str(missing)]
    result = run_cli([*args, "--epochs", "1"], cwd=tmp_path)
    assert result.returncode == 2 and "data file not found" in result.stderr
    assert not (tmp_path / "st").exists()  # a typo no longer blocks the folder
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz at all")
    args[-1] = str(bad)
    result = run_cli([*args, "--epochs", "1"], cwd=tmp_path)
    assert result.returncode == 2, describe(result)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("bloodmnist study: error: seed(s) 1 (failed: exit code 2)")
    assert f"bloodmnist study --resume {tmp_path / 'st'}" in last
    plan = json.loads((tmp_path / "st" / "study_plan.json").read_text())
    cores = len(os.sched_getaffinity(0))  # 1 under `make test` (each xdist worker: 1 core)
    jobs = min(2, cores)  # never more parallel seeds than cores
    assert plan["jobs"] == jobs and plan["threads"] == max(1, cores // jobs)
    for seed in (1, 2):
        log = (tmp_path / "st" / "logs" / f"seed-{seed}.log").read_text()
        assert f"{bad}: not a readable npz" in log
    assert not (tmp_path / "st" / "study.json").exists()  # nothing finished, nothing aggregated


@pytest.mark.parametrize(
    ("signum", "to_group", "code", "said"),
    [
        (signal.SIGTERM, False, 143, "interrupted by SIGTERM"),  # a job scheduler
        (signal.SIGINT, True, 130, "interrupted (Ctrl-C)"),  # a terminal: the whole group
    ],
)
def test_a_signal_to_the_study_stops_its_seeds_resumably(
    shared_data: Path, tmp_path: Path, signum: int, to_group: bool, code: int, said: str
) -> None:
    """The signal reaches the seed that is training exactly once: it saves its state and the
    study says how to resume, instead of leaving an orphan (SIGTERM) or making the seed exit at
    once as on a second signal (Ctrl-C, which a terminal sends to the whole process group)."""
    args = [sys.executable, "-m", "bloodmnist", "study", "--seeds", "7", "--out", "st"]
    args += ["--data", str(shared_data), "--subset", "64", "--epochs", "50", "--pretrained", "none"]
    args += ["--set", "optim.batch_size=32", "--set", "runtime.reports=false"]
    # Its own process group, like a shell job, so a group signal reaches nothing else; SIGINT
    # at its default: a suite started in the background (`make test &`) inherits it ignored.
    proc = subprocess.Popen(
        args,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seed_dir = tmp_path / "st" / "seed-7"
    log = seed_dir / "train.log"
    try:
        deadline = time.monotonic() + 300
        while not (log.is_file() and "training epochs 1..50" in log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, "the seed never started"
            time.sleep(0.2)
        seed_pid = json.loads((seed_dir / "run.lock").read_text())["pid"]
        assert os.getpgid(seed_pid) != os.getpgid(proc.pid)  # a group signal misses the seed
        if to_group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        _kill_if_running(proc, seed_dir / "run.lock")  # only if something above failed
    assert proc.returncode == code, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"bloodmnist study: error: {said}")
    assert last.endswith(f"bloodmnist study --resume {tmp_path / 'st'}")
    summary = json.loads((seed_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"  # the seed got the signal and stopped cleanly
    assert not (seed_dir / "run.lock").exists()  # and has exited


def test_a_seed_stopped_before_its_first_epoch_starts_again(tmp_path: Path) -> None:
    """A signal before a seed's first epoch ends leaves a folder with nothing to resume: the
    study's own such folder is moved into logs/ (not deleted) and the seed trains anew; it was
    'broken' and `study --resume`, the study's own advice, failed for good."""
    study = tmp_path / "st"
    run = study / "seed-7"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"status": "interrupted", "epochs_run": 0}))
    (run / "config.yaml").write_text("train:\n  seed: 7\n")
    assert seed_state(run) == "unstarted"
    (study / "seed-8").symlink_to(run, target_is_directory=True)  # an adopted run: not ours
    assert seed_state(study / "seed-8") == "broken"
    said: list[str] = []
    for _ in range(2):  # a second stop before epoch 1: kept beside the first
        _set_aside(study, 7, said.append)
        assert seed_state(run) == "new"
        run.mkdir()
        (run / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    kept = sorted(p.name for p in (study / "logs").iterdir())
    assert kept == ["seed-7.stopped-before-epoch-1.1", "seed-7.stopped-before-epoch-1.2"]
    assert (study / "logs" / kept[0] / "config.yaml").is_file()
    moved = study / "logs" / kept[0]
    assert said[0] == f"seed 7: stopped before its first epoch ended; folder moved to {moved}"


def _kill_if_running(proc: subprocess.Popen, seed_lock: Path) -> None:
    """Stop the study and its seed (own session: found through its run lock) after a failure."""
    with contextlib.suppress(ProcessLookupError, ValueError, OSError):
        os.kill(json.loads(seed_lock.read_text())["pid"], signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
