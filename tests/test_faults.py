"""Reliability under crashes, signals, full disks and bad input (issue #4), at the CLI level.

Everything is real: `python -m bloodmnist` subprocesses killed with real signals, short real
trainings on the shared data, real files on disk, a real file-size limit. Download faults (503,
reset, truncation, wrong hash, stall) are covered against a real HTTP server in
tests/test_download.py (here only one, through the CLI); docs/reliability.md lists every case
and what the user sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bloodmnist.config import Config
from bloodmnist.model import build_model
from bloodmnist.training.checkpoint import load_checkpoint
from fault_helpers import (
    DATA,
    SUMMARY_KEYS,
    TRAIN,
    cli,
    epoch_done,
    one_error_line,
    read_history,
    small_npz,
    start,
    stderr_of,
    temp_files,
    training_started,
    wait_for,
)
from httpserver import WRONG, TestHTTPServer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DATA.is_file(), reason=f"shared test data not found: {DATA}"),
]
RUN_TIMEOUT = 900  # a 3-epoch run takes 1-3 min on a busy 2-core box; generous for CI


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# -- an uninterrupted reference run, and a second process on the same folder ----------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> SimpleNamespace:
    """Run A, uninterrupted. While it trains, a second `train --out A` is started against it."""
    base = tmp_path_factory.mktemp("reference")
    run_dir = base / "A"
    proc = start(base / "logs", *TRAIN, "--out", str(run_dir))
    wait_for("training to start", training_started(proc), proc)
    second = cli(*TRAIN, "--out", str(run_dir), timeout=RUN_TIMEOUT)
    alive_after_second = proc.poll() is None
    proc.wait(timeout=RUN_TIMEOUT)
    return SimpleNamespace(
        dir=run_dir,
        pid=proc.pid,
        rc=proc.returncode,
        stderr=stderr_of(proc),
        second=second,
        alive_after_second=alive_after_second,
    )


def test_second_run_on_a_busy_folder_is_refused(reference) -> None:
    second = reference.second
    assert second.returncode == 2, second.stderr
    one_error_line(second.stderr, str(reference.dir), f"in use by process {reference.pid}")
    # The first run was not disturbed: still running then, completed now, lock released.
    assert reference.alive_after_second
    assert reference.rc == 0, reference.stderr
    assert summary(reference.dir)["status"] == "completed"
    assert len(read_history(reference.dir)) == 3
    assert not (reference.dir / "run.lock").exists()


def assert_same_results(run_dir: Path, ref_dir: Path) -> None:
    """history.csv (but the seconds column), summary metrics and weights equal bit for bit."""
    assert read_history(run_dir, drop=("seconds",)) == read_history(ref_dir, drop=("seconds",))
    got, want = summary(run_dir), summary(ref_dir)
    assert {k: got[k] for k in SUMMARY_KEYS} == {k: want[k] for k in SUMMARY_KEYS}
    for name in ("best.pt", "last.pt"):
        a = load_checkpoint(run_dir / "checkpoints" / name)["model"]
        b = load_checkpoint(ref_dir / "checkpoints" / name)["model"]
        assert all(torch.equal(a[k], b[k]) for k in b), name


# -- SIGTERM, SIGKILL and resume ------------------------------------------------------------------


def test_sigterm_sigkill_and_resume_match_uninterrupted_run(reference, tmp_path) -> None:
    """One run stopped twice - SIGTERM in epoch 2, SIGKILL one epoch later - and resumed each
    time ends bit-identical to the uninterrupted reference run."""
    run_dir, lock = tmp_path / "B", tmp_path / "B" / "run.lock"
    # 1. SIGTERM mid-run: finish the step, keep last.pt of the last completed epoch, say how to
    #    resume, exit 128+15.
    proc = start(tmp_path / "logs1", *TRAIN, "--out", str(run_dir))
    wait_for("epoch 1 in history.csv", epoch_done(run_dir, 1), proc, RUN_TIMEOUT)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    err = stderr_of(proc)
    assert "SIGTERM received, stopping after this step" in err
    info = summary(run_dir)
    done = info["epochs_run"]  # 1, or 2 if the signal came during epoch 2's validation
    assert info["status"] == "interrupted" and done in (1, 2)
    line = one_error_line(err, f"interrupted by SIGTERM; epoch {done + 1} was abandoned")
    assert line.endswith(f"Continue with: bloodmnist train --resume {run_dir}")
    assert info["message"] in line
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == done
    assert not lock.exists() and temp_files(run_dir / "checkpoints") == []

    # 2. Resume, SIGKILL after one more epoch: no handler runs, the lock stays behind.
    proc = start(tmp_path / "logs2", "train", "--resume", str(run_dir), "--quiet")
    wait_for(f"epoch {done + 1}", epoch_done(run_dir, done + 1), proc, RUN_TIMEOUT)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert f"resumed after epoch {done}" in stderr_of(proc)
    assert json.loads(lock.read_text())["pid"] == proc.pid

    # 3. Resume again: the stale lock is taken over with a message, the temp file of a save that
    #    a kill interrupted (planted here: the kill above may or may not hit one) is removed, and
    #    the run completes.
    orphan = run_dir / "checkpoints" / ".last.pt.k1ll3d.tmp"
    orphan.write_bytes(b"half a checkpoint")
    resumed = cli("train", "--resume", str(run_dir), "--quiet", timeout=RUN_TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr
    msg = f"taking over stale lock {lock} (process {proc.pid} no longer holds it)"
    assert msg in resumed.stderr and msg in (run_dir / "train.log").read_text()
    assert f"removed {orphan}, left by a save that was killed midway" in resumed.stderr
    assert temp_files(run_dir / "checkpoints") == []
    assert_same_results(run_dir, reference.dir)
    assert summary(run_dir)["status"] == "completed"
    assert not lock.exists()


def test_sigint_in_first_epoch_says_nothing_to_resume(tmp_path) -> None:
    run_dir = tmp_path / "D"
    proc = start(tmp_path / "logs", *TRAIN, "--out", str(run_dir))
    wait_for("training to start", training_started(proc), proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    err = stderr_of(proc)
    assert "SIGINT received, stopping after this step" in err
    one_error_line(err, "interrupted by SIGINT in epoch 1", "nothing to resume", "new --out")
    info = summary(run_dir)
    assert info["status"] == "interrupted" and info["epochs_run"] == 0
    assert list((run_dir / "checkpoints").iterdir()) == []  # no checkpoint, no temp file
    assert not (run_dir / "run.lock").exists()
    resumed = cli("train", "--resume", str(run_dir), timeout=120)
    assert resumed.returncode == 2
    one_error_line(resumed.stderr, "last.pt does not exist", "nothing to resume", "--out")


def test_second_sigint_exits_at_once(tmp_path) -> None:
    run_dir = tmp_path / "E"
    proc = start(tmp_path / "logs", *TRAIN, "--out", str(run_dir))
    wait_for("training to start", training_started(proc), proc)
    proc.send_signal(signal.SIGINT)
    wait_for("the first signal", lambda: "SIGINT received" in stderr_of(proc), proc, 60)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert time.monotonic() - t0 < 10  # not the rest of the epoch
    assert "second signal, exiting immediately" in stderr_of(proc)
    assert not (run_dir / "run.lock").exists()
    assert temp_files(run_dir / "checkpoints") == []


# -- divergence -----------------------------------------------------------------------------------


def test_divergence_in_first_epoch_keeps_no_checkpoint(tmp_path) -> None:
    run_dir = tmp_path / "G"
    result = cli(*TRAIN, "--out", str(run_dir), "--set", "optim.lr=1e9", timeout=RUN_TIMEOUT)
    assert result.returncode == 3, result.stderr
    one_error_line(result.stderr, "in epoch 1", "nan", "no checkpoint was kept", "optim.lr")
    info = summary(run_dir)
    assert info["status"] == "diverged" and info["epochs_run"] == 0
    assert list((run_dir / "checkpoints").iterdir()) == []


def test_divergence_later_keeps_the_best_checkpoint(reference, tmp_path) -> None:
    """The reference run continued for a fourth epoch at lr 1e9 (set in its last.pt): the loss
    blows up, training stops, and best.pt/last.pt of the good epochs are kept unchanged."""
    run_dir = tmp_path / "H"
    shutil.copytree(reference.dir, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    for group in state["optimizer"]["param_groups"]:
        group["lr"] = 1e9
    torch.save(state, last)
    before = {p.name: sha256(p) for p in (run_dir / "checkpoints").iterdir()}
    result = cli("train", "--resume", str(run_dir), "--epochs", "4", timeout=RUN_TIMEOUT)
    assert result.returncode == 3, result.stderr
    best = run_dir / "checkpoints" / "best.pt"
    best_epoch = summary(reference.dir)["best_epoch"]
    one_error_line(result.stderr, "in epoch 4", f"kept at {best} (epoch {best_epoch})")
    info = summary(run_dir)
    assert info["status"] == "diverged" and info["best_epoch"] == best_epoch
    assert {p.name: sha256(p) for p in (run_dir / "checkpoints").iterdir()} == before
    assert "epochs: 4" in (run_dir / "config.yaml").read_text()  # the resumed run's config
    again = cli("train", "--resume", str(run_dir), timeout=120)  # would only diverge again
    assert again.returncode == 2
    one_error_line(again.stderr, "diverged", "would diverge again", "lower optim.lr")


def test_resuming_a_finished_run_is_refused_and_changes_nothing(reference, tmp_path) -> None:
    """Its test split was evaluated once; a resume would evaluate it again."""
    before = {p.name: sha256(p) for p in reference.dir.rglob("*") if p.is_file()}
    result = cli("train", "--resume", str(reference.dir), timeout=120)
    assert result.returncode == 2
    one_error_line(result.stderr, "has finished", "tested once after 3 epochs", "higher --epochs")
    assert {p.name: sha256(p) for p in reference.dir.rglob("*") if p.is_file()} == before


def test_resume_may_change_how_a_run_is_carried_out_not_what_it_computes(
    reference, tmp_path
) -> None:
    """A run moved to a machine with more cores continues with more threads (and may build the
    reports it skipped); a `--set` that would change the computation is refused untouched."""
    run_dir = tmp_path / "R"
    shutil.copytree(reference.dir, run_dir)
    before = {p.name: sha256(p) for p in run_dir.rglob("*") if p.is_file()}
    refused = cli(
        "train", "--resume", str(run_dir), "--epochs", "4", "--set", "runtime.threads=2",
        "--set", "optim.lr=0.5", timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2
    one_error_line(refused.stderr, "drop --set optim.lr", "change only runtime.threads")
    assert {p.name: sha256(p) for p in run_dir.rglob("*") if p.is_file()} == before
    resumed = cli(
        "train", "--resume", str(run_dir), "--epochs", "4", "--set", "runtime.threads=2",
        "--set", "runtime.reports=true", timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert [row["epoch"] for row in read_history(run_dir)] == ["1", "2", "3", "4"]
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")["config"]
    assert saved["runtime"]["threads"] == 2 and saved["optim"]["lr"] == 0.008
    assert "threads: 2" in (run_dir / "config.yaml").read_text()
    assert (run_dir / "report.html").is_file()  # the reports the first stretch skipped


def test_a_finished_one_cycle_run_trains_on_at_its_final_lr(tmp_path) -> None:
    """--resume with a higher --epochs of a finished one-cycle run trains on at the saved
    cycle's final LR (it crashed: the saved cycle kept its planned step count); an --epochs
    below the epochs run is refused, and a refusal leaves config.yaml as it was."""
    run_dir = tmp_path / "oc"
    fast = ["train", "--recipe", "fast", "--data", str(DATA), "--subset", "512", "--epochs", "2"]
    fast += ["--quiet", "--set", "runtime.threads=1", "--set", "runtime.reports=false"]
    first = cli(*fast, "--set", "eval.tta=false", "--out", str(run_dir), timeout=RUN_TIMEOUT)
    assert first.returncode == 0, first.stderr
    config = (run_dir / "config.yaml").read_text()
    finished = (run_dir / "summary.json").read_text()
    stopped = {**json.loads(finished), "status": "interrupted"}  # as after a SIGTERM
    (run_dir / "summary.json").write_text(json.dumps(stopped))
    low = cli("train", "--resume", str(run_dir), "--epochs", "1", timeout=120)
    assert low.returncode == 2
    one_error_line(low.stderr, "--epochs 1: the run has trained 2 epoch(s) already")
    assert (run_dir / "config.yaml").read_text() == config
    (run_dir / "summary.json").write_text(finished)
    more = cli("train", "--resume", str(run_dir), "--epochs", "3", timeout=RUN_TIMEOUT)
    assert more.returncode == 0, more.stderr
    lrs = [float(row["lr"]) for row in read_history(run_dir)]
    assert len(lrs) == 3 and lrs[2] < lrs[0] / 100  # (LR at each epoch's start) annealed
    assert summary(run_dir)["epochs_run"] == 3


# -- disk full while saving -----------------------------------------------------------------------


def _file_size_limit(limit: int):
    """preexec_fn: files may not grow beyond `limit` bytes; write() then fails with EFBIG
    (SIGXFSZ ignored) - what a disk that fills up mid-save looks like to the process."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_disk_full_while_saving_keeps_the_previous_checkpoint(reference, tmp_path) -> None:
    run_dir = tmp_path / "I"
    shutil.copytree(reference.dir, run_dir)
    ckpts = run_dir / "checkpoints"
    before = {p.name: sha256(p) for p in ckpts.iterdir()}
    history = (run_dir / "history.csv").read_text()
    assert min((ckpts / n).stat().st_size for n in before) > 40e6  # the limit below bites
    result = cli(
        "train",
        "--resume",
        str(run_dir),
        "--epochs",
        "4",
        "--quiet",
        timeout=RUN_TIMEOUT,
        preexec_fn=_file_size_limit(40_000_000),
    )
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stderr, "cannot write", "File too large", "free disk space")
    assert f"bloodmnist train --resume {run_dir}" in line
    assert {p.name: sha256(p) for p in ckpts.iterdir()} == before  # no temp file, no change
    assert (run_dir / "history.csv").read_text() == history
    assert not (run_dir / "run.lock").exists()


# -- checkpoints that must not load ---------------------------------------------------------------


class _Payload:
    """Unpickling this would create a file: proof that no pickled code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _checkpoint(path: Path, num_classes: int, data: Path, **extra) -> Path:
    cfg = Config().to_dict()
    cfg["data"]["path"] = str(data)
    cfg["runtime"]["threads"] = 1
    state = {
        "model": build_model("resnet18", num_classes).state_dict(),
        "config": cfg,
        "epoch": 1,
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> Path:
    return small_npz(tmp_path_factory.mktemp("data") / "tiny.npz")


def _pickled(path: Path, data: Path) -> tuple[Path, str]:
    marker = path.parent / "pwned"
    _checkpoint(path, 8, data, extra=_Payload(marker))
    return path, "refusing to load"


def _truncated(path: Path, data: Path) -> tuple[Path, str]:
    blob = _checkpoint(path, 8, data).read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    return path, "cannot read checkpoint"


def _bit_rot(path: Path, data: Path) -> tuple[Path, str]:
    blob = bytearray(_checkpoint(path, 8, data).read_bytes())
    mid = len(blob) // 2
    blob[mid : mid + 64] = bytes(64)  # tensor bytes zeroed: torch.load alone would accept it
    path.write_bytes(bytes(blob))
    return path, "CRC mismatch"


@pytest.mark.parametrize("make", [_pickled, _truncated, _bit_rot])
def test_evaluate_refuses_bad_checkpoint(make, tiny_npz, tmp_path) -> None:
    path, needle = make(tmp_path / "run" / "checkpoints" / "best.pt", tiny_npz)
    result = cli("evaluate", str(tmp_path / "run"), "--no-tta", timeout=120)
    assert result.returncode == 2, result.stderr
    one_error_line(result.stderr, str(path), needle)
    assert not (tmp_path / "run" / "pwned").exists()


def test_evaluate_checkpoint_of_other_class_count(tiny_npz, tmp_path) -> None:
    path = _checkpoint(tmp_path / "five.pt", 5, tiny_npz)  # 5-class weights, 8-class config
    result = cli("evaluate", str(path), "--no-tta", timeout=300)
    assert result.returncode == 2, result.stderr
    one_error_line(result.stderr, str(path), "fc.weight", "number of classes")


def test_resume_after_the_last_epoch_rewrites_a_short_history(reference, tmp_path) -> None:
    """A kill between last.pt and history.csv of the last epoch (as if: the csv one row short,
    no summary) and a resume that has no epoch left to train: history.csv holds every epoch."""
    run_dir = tmp_path / "R"
    shutil.copytree(reference.dir, run_dir)
    (run_dir / "summary.json").unlink()
    lines = (run_dir / "history.csv").read_text().splitlines(keepends=True)
    (run_dir / "history.csv").write_text("".join(lines[:-1]))  # epochs 1-2 of 3
    result = cli("train", "--resume", str(run_dir), timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert read_history(run_dir) == read_history(reference.dir)  # 3 rows, as trained
    assert summary(run_dir)["epochs_run"] == 3


def test_resume_on_a_changed_data_file_is_refused(reference, tmp_path) -> None:
    """The run's data file replaced by other bytes (here: the manifest records other ones) would
    mix two datasets in one run; the resume stops before training, changing nothing."""
    run_dir = tmp_path / "R"
    shutil.copytree(reference.dir, run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    now = manifest["data"]["md5"]
    manifest["data"]["md5"] = "0" * 32
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    before = {p.name: sha256(p) for p in run_dir.rglob("*") if p.is_file() and p.suffix != ".log"}
    result = cli("train", "--resume", str(run_dir), "--epochs", "4", timeout=RUN_TIMEOUT)
    assert result.returncode == 2, result.stderr
    one_error_line(
        result.stderr, f"has changed since {run_dir} started (MD5 {now}, the run trained on 000"
    )
    after = {p.name: sha256(p) for p in run_dir.rglob("*") if p.is_file() and p.suffix != ".log"}
    assert after == before


def test_resume_from_corrupt_last_checkpoint(tiny_npz, tmp_path) -> None:
    last = _checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", 8, tiny_npz)
    last.write_bytes(last.read_bytes()[:1000])
    result = cli("train", "--resume", str(tmp_path / "run"), timeout=120)
    assert result.returncode == 2, result.stderr
    one_error_line(result.stderr, str(last), "corrupt")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints"]


# -- bad configuration ----------------------------------------------------------------------------

BAD_YAML = {
    "unknown_section": ("colour:\n  hue: 1\n", "unknown config key 'colour'"),
    "invalid_yaml": ("optim: [lr: 0.1\n", "is not valid YAML"),
    "nan_value": ("optim:\n  lr: .nan\n", "'optim.lr' must be a finite number"),
    "wrong_type": ("train:\n  epochs: many\n", "'train.epochs' must be an integer"),
}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "optim.lr=nan"], "'optim.lr' must be a finite number"),
        (["--set", "optim.foo=1"], "unknown config key 'optim.foo'"),
        (["--set", "train.epochs=abc"], "'train.epochs' must be an integer, got 'abc'"),
        (["--config", "{missing}"], "config file not found"),
        *((["--config", f"{{{name}}}"], needle) for name, (_, needle) in BAD_YAML.items()),
    ],
    ids=["set_nan", "set_unknown", "set_type", "yaml_missing", *BAD_YAML],
)
def test_bad_config_is_one_line(args, needle, tmp_path) -> None:
    files = {name: tmp_path / f"{name}.yaml" for name in [*BAD_YAML, "missing"]}
    for name, (text, _) in BAD_YAML.items():
        files[name].write_text(text)
    args = [a.format(**files) for a in args]
    result = cli(
        "train",
        "--recipe",
        "reference",
        "--data",
        str(DATA),
        "--out",
        str(tmp_path / "run"),
        *args,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    named = [a for a in args if a.endswith(".yaml")]  # a YAML problem names its file
    one_error_line(result.stderr, needle, *named)
    assert not (tmp_path / "run").exists()


def test_unwritable_output_folder(tmp_path) -> None:
    """Root ignores permission bits, so a folder below a regular file stands in for any path the
    process cannot create (it fails for every user, root included)."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    out = blocker / "run"
    result = cli(*TRAIN, "--out", str(out), timeout=300)
    assert result.returncode == 2, result.stderr
    one_error_line(result.stderr, f"cannot write to run folder {out}", "choose a writable --out")
    assert blocker.read_text() == "a file"


# -- bad data files -------------------------------------------------------------------------------


def _arrays(n: int = 32) -> dict[str, np.ndarray]:
    with np.load(DATA) as src:
        return {k: src[k][:n] for k in src.files}


BAD_NPZ = {
    "missing_file": (None, "data file not found"),
    "not_a_zip": (b"just some text, not an archive\n", "not a readable npz archive"),
    "truncated": ("truncate", "not a readable npz archive"),
    "missing_key": ({"test_labels": None}, "missing key 'test_labels'"),
    "wrong_rank": ({"train_images": np.zeros((32, 28 * 28 * 3), np.uint8)}, "has shape (32, 2352)"),
    "float_images": ({"val_images": np.zeros((32, 28, 28, 3), np.float32)}, "dtype float32"),
    "four_channels": ({"test_images": np.zeros((32, 28, 28, 4), np.uint8)}, "has 4 channels"),
    "label_out_of_range": ({"train_labels": np.full((32, 1), 8, np.uint8)}, "outside 0..7"),
    "count_mismatch": ({"val_labels": np.zeros((31, 1), np.uint8)}, "31 labels for 32 images"),
    "empty_split": (
        {"test_images": np.zeros((0, 28, 28, 3), np.uint8), "test_labels": np.zeros((0, 1))},
        "split 'test' is empty",
    ),
}


def _bad_npz(path: Path, spec) -> Path:
    if spec is None:
        return path
    if isinstance(spec, bytes):
        path.write_bytes(spec)
    elif spec == "truncate":
        blob = small_npz(path).read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
    else:
        small_npz(path, **spec)
    return path


@pytest.mark.parametrize("case", list(BAD_NPZ))
def test_bad_data_file_is_one_line(case, tmp_path) -> None:
    spec, needle = BAD_NPZ[case]
    path = _bad_npz(tmp_path / f"{case}.npz", spec)
    result = cli("data", "verify", "--data", str(path), timeout=60)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stderr, str(path), needle)
    assert "bloodmnist data download" in line or "--data" in line  # says what to do


# -- download through the CLI ---------------------------------------------------------------------


def test_download_of_wrong_bytes_leaves_nothing(tmp_path) -> None:
    """`data download` from a mirror that serves other bytes: retried, then one line; the cache
    holds no file. (Each fault of the download itself is tested in tests/test_download.py.)"""
    cache = tmp_path / "cache"
    env = {**os.environ, "BLOODMNIST_HOME": str(cache)}
    with TestHTTPServer() as server:
        server.serve("/bloodmnist.npz", b"PK\x03\x04" + bytes(4096), [WRONG])
        env["BLOODMNIST_URL"] = server.base_url
        result = cli("data", "download", timeout=120, env=env)
        attempts = server.counts["/bloodmnist.npz"]
    assert result.returncode == 2, result.stderr
    one_error_line(result.stderr, "MD5 mismatch", server.url("/bloodmnist.npz"), "--data")
    assert attempts == 4  # the first try and 3 retries
    assert not cache.exists() or list(cache.iterdir()) == []
