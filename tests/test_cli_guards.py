"""CLI guards in real subprocesses: run locks, bad data files, `data info|verify`, --version.

Each command here fails (or answers) before any training, so the file is quick.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bloodmnist import CLASS_NAMES, __version__
from bloodmnist.errors import RunLockedError
from bloodmnist.training.runlock import RunLock
from conftest import SHARED_NPZ_MD5, describe, error_lines, run_cli

# -- run lock --------------------------------------------------------------------------------


def _write_lock(folder: Path, pid: int) -> Path:
    folder.mkdir(parents=True)
    lock = folder / "run.lock"
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    return lock


def test_lock_held_by_live_process_refuses(shared_data: Path, tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "600"])  # outlives a slow CI start
    try:
        lock = _write_lock(tmp_path / "locked", sleeper.pid)
        before = lock.read_text()
        args = ["train", "--data", str(shared_data), "--out", str(lock.parent), "--quiet"]
        result = run_cli([*args, "--pretrained", "none", "--subset", "32"], cwd=tmp_path)
        assert sleeper.poll() is None  # still alive: nothing was killed
    finally:
        sleeper.terminate()
        sleeper.wait(timeout=10)
    assert result.returncode == 2, describe(result)
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bloodmnist train: error:")
    assert f"in use by process {sleeper.pid}" in lines[0]
    assert lock.read_text() == before  # the other process's lock is left alone
    assert not (lock.parent / "train.log").exists()


def test_stale_lock_of_dead_process_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=10)
    lock = _write_lock(tmp_path / "stale", dead.pid)
    # A data file that is not an npz stops the run right after the lock is taken (a missing one
    # is refused before it): cheap, and shows the lock is released again on the way out.
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz archive")
    result = run_cli(["train", "--data", str(bad), "--out", str(lock.parent)], cwd=tmp_path)
    assert result.returncode == 2, describe(result)
    assert f"taking over stale lock {lock}" in result.stderr
    assert f"process {dead.pid} no longer holds it" in result.stderr
    assert "in use by" not in result.stderr
    assert error_lines(result)[-1].startswith(f"bloodmnist train: error: {bad}")
    assert (lock.parent / "train.log").is_file()  # got past the lock
    assert not lock.exists()  # released on exit


def test_unreadable_lock_left_by_a_crash_is_taken_over(tmp_path: Path) -> None:
    """A process killed between creating the lock file and writing its pid leaves an empty,
    un-flocked file: nobody holds it, so it is taken over (with a message)."""
    lock_file = tmp_path / "run.lock"
    lock_file.write_text("")
    lock = RunLock(tmp_path)
    lock.acquire()
    assert lock.held and "unreadable, left by a crash" in lock.took_over
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock_file.exists()


_HOLDER = """
import sys, time
from pathlib import Path
from bloodmnist.training.runlock import RunLock
lock = RunLock(Path(sys.argv[1]))
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_flock_is_held_until_its_process_dies_however_it_dies(tmp_path: Path) -> None:
    """The kernel releases the flock of a SIGKILLed owner: the next run takes over at once;
    while the owner lives, a second process is refused (and the check changes nothing)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (tmp_path / "run.lock").read_text()
        with pytest.raises(RunLockedError, match=f"in use by process {holder.pid} on"):
            RunLock(tmp_path).acquire()
        with pytest.raises(RunLockedError, match=f"in use by process {holder.pid}"):
            RunLock(tmp_path).check_free()
        assert (tmp_path / "run.lock").read_text() == before
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(tmp_path)
    lock.acquire()
    assert lock.took_over == f"taking over stale lock {tmp_path / 'run.lock'} " + (
        f"(process {holder.pid} no longer holds it)"
    )
    lock.release()


def test_a_crashed_runs_lock_is_not_kept_by_a_reused_pid(tmp_path: Path) -> None:
    """A SIGKILLed owner leaves its run.lock behind; when the kernel later gives its pid to an
    unrelated live process, the free flock still decides: the file says it was flock-held."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    left = json.loads((tmp_path / "run.lock").read_text())
    assert left == {"pid": holder.pid, "host": socket.gethostname(), "flock": True}
    sleeper = subprocess.Popen(["sleep", "600"])  # stands in for the process given that pid
    try:
        (tmp_path / "run.lock").write_text(json.dumps({**left, "pid": sleeper.pid}))
        RunLock(tmp_path).check_free()  # no error: nobody holds the folder
        lock = RunLock(tmp_path)
        lock.acquire()
        assert lock.took_over and f"process {sleeper.pid} no longer holds it" in lock.took_over
        lock.release()
        assert sleeper.poll() is None  # nothing was killed
    finally:
        sleeper.terminate()
        sleeper.wait(timeout=10)


_PROBER = """
import sys
from pathlib import Path
from bloodmnist.training.runlock import RunLock
print("probing", flush=True)
while True:
    try:
        RunLock(Path(sys.argv[1])).check_free()
    except Exception:
        pass
"""


def _refusals_beside_a_prober(folder: Path, attempt, times: int) -> int:
    """How often `attempt()` raised RunLockedError while another process probed `folder`'s
    lock (check_free) in a loop."""
    prober = subprocess.Popen(
        [sys.executable, "-c", _PROBER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    refused = 0
    try:
        assert prober.stdout.readline().strip() == "probing"
        for _ in range(times):
            try:
                attempt()
            except RunLockedError:
                refused += 1
    finally:
        prober.kill()
        prober.wait()
    return refused


def test_a_runs_listing_probing_the_lock_does_not_refuse_a_resume(tmp_path: Path) -> None:
    """check_free (used by `runs`, `study --adopt`, resume) takes the flock for microseconds;
    a resume taking over a crashed run's lock at that instant waits it out, not refused."""

    def take_over() -> None:
        (tmp_path / "run.lock").write_text(json.dumps({"pid": 2**22 + 7, "flock": True}))
        lock = RunLock(tmp_path)
        lock.acquire()
        lock.release()

    assert _refusals_beside_a_prober(tmp_path, take_over, 1500) == 0


def test_two_probes_of_a_stale_lock_never_take_each_other_for_its_owner(tmp_path: Path) -> None:
    """Every rank of `torchrun ... train --resume` probes a crashed run's lock at the same time;
    one probe's microsecond flock made the other report the folder "in use" (hundreds of times
    in 20,000 probes). A probe now waits the other out, as acquire() does."""
    (tmp_path / "run.lock").write_text(json.dumps({"pid": 2**22 + 7, "flock": True}))
    lock = RunLock(tmp_path)
    assert _refusals_beside_a_prober(tmp_path, lambda: lock.check_free(wait=True), 3000) == 0


def test_resume_refuses_a_last_pt_saved_again_while_it_loaded(tmp_path: Path) -> None:
    """last.pt is loaded before the lock is taken: if another resume saved a new one meanwhile,
    continuing from the old state would overwrite newer training, so the run stops at once."""
    import torch

    from bloodmnist.config import Config
    from bloodmnist.errors import BloodMNISTError
    from bloodmnist.runtime import Runtime
    from bloodmnist.training.checkpoint import file_stamp
    from bloodmnist.training.run import ResumeFrom, train_run

    last = tmp_path / "checkpoints" / "last.pt"
    last.parent.mkdir()
    last.write_bytes(b"epoch 3")
    stamp = file_stamp(last)
    newer = last.with_name(".last.pt.tmp")
    newer.write_bytes(b"epoch 4")
    os.replace(newer, last)  # how every checkpoint is saved: a rename over the old file
    rt = Runtime(torch.device("cpu"), "fp32", False, 1)
    with pytest.raises(BloodMNISTError, match=f"{last} was rewritten by another process"):
        train_run(Config(), rt, tmp_path, progress=False, resume=ResumeFrom({}, stamp))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]  # lock released
    assert last.read_bytes() == b"epoch 4"
    lock = RunLock(tmp_path)  # and free for the next attempt
    lock.acquire()
    lock.release()


def test_broken_data_file_is_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_images=np.zeros((2, 28, 28, 3), np.uint8))
    result = run_cli(
        ["train", "--data", str(bad), "--out", str(tmp_path / "run"), "--quiet"], cwd=tmp_path
    )
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr
    last = error_lines(result)[-1]
    assert last.startswith("bloodmnist train: error:")
    assert str(bad) in last and "train_labels" in last


# -- data sub-commands -----------------------------------------------------------------------


def test_data_info_and_verify(shared_data: Path, tmp_path: Path) -> None:
    sizes = {"train": 11959, "val": 1712, "test": 3421}
    info = run_cli(["data", "info", "--data", str(shared_data)], cwd=tmp_path)
    assert info.returncode == 0, describe(info)
    out = json.loads(info.stdout)
    assert {s: out["splits"][s]["n"] for s in sizes} == sizes
    assert sum(out["splits"]["train"]["per_class"].values()) == sizes["train"]
    assert list(out["splits"]["test"]["per_class"]) == list(CLASS_NAMES)
    assert out["official"] is False and out["md5"] == SHARED_NPZ_MD5
    assert out["image_size"] == 28

    verify = run_cli(["data", "verify", "--data", str(shared_data)], cwd=tmp_path)
    assert verify.returncode == 0, describe(verify)
    out = json.loads(verify.stdout)
    assert out["sizes"] == sizes and out["official"] is False and out["valid_npz"] is True
    assert out["md5"] == SHARED_NPZ_MD5 and out["md5"] != out["expected_md5"]
    assert "not the official BloodMNIST file" in verify.stderr
    from bloodmnist.data.download import official_md5

    assert out["expected_md5"] == official_md5(28)
    strict = run_cli(["data", "verify", "--official", "--data", str(shared_data)], cwd=tmp_path)
    assert strict.returncode == 2 and json.loads(strict.stdout)["official"] is False
    assert strict.stderr.count("error:") == 1 and "drop --official" in strict.stderr
    big = shared_data.with_name("bloodmnist_pbc_64.npz")  # compared with the official 64-px file
    if big.is_file():
        verify = run_cli(["data", "verify", "--data", str(big)], cwd=tmp_path)
        assert verify.returncode == 0, describe(verify)
        assert json.loads(verify.stdout)["expected_md5"] == official_md5(64)
        assert f"official {official_md5(64)})" in verify.stderr


def test_version(tmp_path: Path) -> None:
    result = run_cli(["--version"], cwd=tmp_path, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"bloodmnist {__version__}"


def test_data_path_with_a_tilde_is_the_users_home(tmp_path: Path) -> None:
    """`data.path: ~/...` (a config file or --set; --data is expanded by the parser) reaches the
    loader expanded: here a file that is not an npz, so the error names it, not a missing file."""
    (tmp_path / "mine.npz").write_bytes(b"not an npz archive")
    args = ["train", "--set", "data.path=~/mine.npz", "--out", str(tmp_path / "run")]
    result = run_cli(args, cwd=tmp_path, env={"HOME": str(tmp_path)})
    assert result.returncode == 2, describe(result)
    assert error_lines(result)[-1].startswith(f"bloodmnist train: error: {tmp_path / 'mine.npz'}:")
    assert "not found" not in result.stderr


# -- the --out folder ------------------------------------------------------------------------


def test_a_folder_left_by_a_failed_setup_takes_the_same_command_again(
    shared_data: Path, tmp_path: Path
) -> None:
    """A run that fails while setting up (here: labels the config's class count cannot hold)
    leaves train.log and empty checkpoints/ and figures/. The corrected command used to be
    refused ("not empty ... continue it with --resume"), and --resume then said there was
    nothing to resume; now the same --out is used again and its log continues."""
    out = tmp_path / "run"
    args = ["train", "--data", str(shared_data), "--out", str(out), "--quiet", "--subset", "32"]
    bad = [*args, "--set", "model.num_classes=3", "--set", "model.class_names=null"]
    for attempt in (1, 2):  # the second would have been refused as "not empty"
        result = run_cli(bad, cwd=tmp_path)
        assert result.returncode == 2, describe(result)
        (line,) = [ln for ln in error_lines(result) if ": error:" in ln]
        assert "not empty" not in line and "labels outside 0..2" in line, line
        assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "figures", "train.log"]
        log = (out / "train.log").read_text()
        assert log.count("run folder:") == attempt  # appended, not replaced
    fixed = [*args, "--recipe", "fast", "--epochs", "1", "--set", "eval.tta=false"]
    fixed += ["--set", "runtime.reports=false", "--set", "runtime.tensorboard=false"]
    result = run_cli(fixed, cwd=tmp_path)  # the corrected command, into the same folder
    assert result.returncode == 0, describe(result)
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert (out / "train.log").read_text().count("run folder:") == 3


def test_a_used_out_folder_is_refused_with_what_it_holds(tmp_path: Path) -> None:
    from bloodmnist.errors import BloodMNISTError
    from bloodmnist.training.rundir import new_run_dir

    cases = {
        "notes.txt": "is not empty and is not a run folder; pick a new or empty folder",
        "train.log": "holds no checkpoint to resume (a run there stopped before its first epoch",
        "checkpoints/last.pt": "is not empty; pick a new --out, or continue it with --resume",
    }
    for i, (name, words) in enumerate(cases.items()):
        folder = tmp_path / str(i)
        (folder / name).parent.mkdir(parents=True)
        (folder / name).write_text("x")
        if name == "train.log":
            (folder / "config.yaml").write_text("x")  # a run stopped in epoch 1 wrote more
        with pytest.raises(BloodMNISTError, match=re.escape(words)):
            new_run_dir(folder, "", explicit=True)
    (tmp_path / "empty").mkdir()
    assert new_run_dir(tmp_path / "empty", "", explicit=True) == tmp_path / "empty"
