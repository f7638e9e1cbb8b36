"""`bloodmnist tune`: space checks, parallel trials with pruning, SIGKILL + resume, several
workers on one storage (SQLite and a real PostgreSQL server), and best.yaml training."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import describe, error_lines, run_cli

pytestmark = pytest.mark.slow

# Random sampler, seed 11: trials 0 and 1 draw lr 0.1, trials 2 and 3 lr 1e-5 (a trial's draw
# is seeded by its number), so with two workers each one's second trial (lr 1e-5: val acc 0.125
# after epoch 1 on these 64 images) starts after a first (lr 0.1: 0.172) completed, falls below
# the median and is pruned.
SPACE = {
    "sampler": {"kind": "random", "seed": 11},
    "pruner": {"kind": "median", "startup_trials": 1},
    "params": {"optim.lr": {"type": "categorical", "choices": [0.1, 1e-5]}},
}


def tiny(npz: Path) -> list[str]:
    """Fixed train options of every trial: a small, fast, deterministic CPU run."""
    return [
        "--recipe", "reference", "--data", str(npz), "--subset", "64", "--epochs", "2",
        "--precision", "fp32",
        "--pretrained", "none", "--set", "runtime.threads=1", "--set", "model.arch=resnet9",
        "--set", "model.width=0.25", "--set", "optim.batch_size=16",
    ]  # fmt: skip


def write_space(folder: Path, space: dict = SPACE, name: str = "space.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(space))
    return path


def states(tune_dir: Path) -> dict[int, str]:
    """Trial number -> state, read from the study's own SQLite file."""
    with sqlite3.connect(tune_dir / "study.db") as db:
        return dict(db.execute("SELECT number, state FROM trials ORDER BY number"))


def trial_csv(tune_dir: Path) -> list[dict[str, str]]:
    with (tune_dir / "trials.csv").open() as fh:
        return list(csv.DictReader(fh))


# -- bad spaces: one error line, before any trial ------------------------------------------------
BAD = [
    ({"optim.lrr": {"type": "float", "low": 0.01, "high": 0.1}}, "unknown config key 'optim.lrr'"),
    ({"model.arch": {"type": "float", "low": 0.1, "high": 1.0}}, "holds str values"),
    ({"optim.lr": {"type": "float", "low": 0.1, "high": 0.1}}, "empty range"),
    ({"train.epochs": {"type": "int", "low": 5, "high": 2}}, "lower bound 5 > upper bound 2"),
    ({"model.arch": {"type": "categorical", "choices": ["resnet99"]}}, "'model.arch' choice"),
    ({"optim.lr": {"type": "float", "low": 0.0, "high": 0.1}}, "optim.lr must be > 0"),
    ({"recipe": {"type": "categorical", "choices": ["fast", "slow"]}}, "'recipe' choice 'slow'"),
    ({"optim": {"type": "float", "low": 0.1, "high": 1.0}}, "is a config section"),
    (
        {"train.epochs": {"type": "int", "low": 2, "high": 64, "log": True, "step": 2}},
        "a log range cannot have a step",
    ),
]


@pytest.mark.parametrize(("params", "message"), BAD)
def test_bad_space_is_one_error(params: dict, message: str) -> None:
    from bloodmnist.config import Config
    from bloodmnist.tuning.space import SpaceError, parse_space

    with pytest.raises(SpaceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_space({"params": params}, Config())


@pytest.mark.parametrize(
    ("seeds", "message"),
    [("42", "'seeds' must be a list"), ([], "'seeds' must be a list"), ([1, True], "must be"),
     ([-1], "integers >= 0"), ([1.5], "must be"), ([7, 7], "'seeds' repeats a seed")],
)  # fmt: skip
def test_bad_seeds_are_one_error(seeds: object, message: str) -> None:
    from bloodmnist.config import Config
    from bloodmnist.tuning.space import SpaceError, parse_space

    with pytest.raises(SpaceError, match=message):
        parse_space({**SPACE, "seeds": seeds}, Config())
    assert parse_space({**SPACE, "seeds": [3, 1]}, Config()).seeds == [3, 1]
    assert parse_space(SPACE, Config()).seeds == []


@pytest.mark.parametrize(
    ("pruner", "message"),
    [({"by": "time"}, "pruner.by must be one of epoch, progress"),
     ({"by": "progress", "warmup_epochs": 3}, "warmup_epochs does not go with by: progress"),
     ({"warmup_percent": 30}, "warmup_percent does not go with by: epoch"),
     ({"kind": "hyperband", "by": "progress"}, "median pruner only"),
     ({"by": "progress", "warmup_percent": 150}, "in 0..100"),
     ({"startup_trials": -1}, r"'pruner.startup_trials' must be >= 0, got -1"),
     ({"kind": "hyperband", "min_epochs": 0}, r"'pruner.min_epochs' must be >= 1, got 0"),
     ({"kind": "hyperband", "reduction_factor": 1}, r"'pruner.reduction_factor' must be >= 2")],
)  # fmt: skip
def test_bad_pruner_is_one_error(pruner: dict, message: str) -> None:
    from bloodmnist.config import Config
    from bloodmnist.tuning.space import SpaceError, parse_space

    with pytest.raises(SpaceError, match=message):
        parse_space({**SPACE, "pruner": {"kind": "median", **pruner}}, Config())


def test_a_sampler_written_as_a_word_is_told_its_form() -> None:
    from bloodmnist.config import Config
    from bloodmnist.tuning.space import SpaceError, parse_space

    with pytest.raises(SpaceError, match=r"'sampler' must be a mapping, e.g. sampler: \{kind"):
        parse_space({**SPACE, "sampler": "random"}, Config())
    with pytest.raises(SpaceError, match=r"'sampler.startup_trials' must be >= 0, got -1"):
        parse_space({**SPACE, "sampler": {"kind": "tpe", "startup_trials": -1}}, Config())


def test_progress_pruner_warmup_is_in_twentieths() -> None:
    from bloodmnist.tuning.study import make_pruner

    pruner = make_pruner({"kind": "median", "by": "progress", "warmup_percent": 25})
    assert pruner._n_warmup_steps == 5  # 25% of a run: 5 of its 20 steps
    assert make_pruner({"kind": "median", "warmup_epochs": 3})._n_warmup_steps == 3


def test_bad_space_stops_before_any_trial(tmp_path: Path, shared_data: Path) -> None:
    space = write_space(
        tmp_path, {"params": {"train.epochs": {"type": "int", "low": 5, "high": 2}}}
    )
    r = run_cli(["tune", "--space", str(space), "--trials", "2", "--out", "t", *tiny(shared_data)],
                tmp_path)  # fmt: skip
    assert r.returncode == 2, describe(r)
    assert error_lines(r) == [
        f"bloodmnist tune: error: search space {space}: 'train.epochs': lower bound 5 > upper "
        "bound 2"
    ]
    assert not (tmp_path / "t").exists()  # nothing made, nothing run
    lr = {"optim.lr": {"type": "float", "low": 0.01, "high": 0.1}}
    good = write_space(tmp_path, {"params": lr}, "good.yaml")
    missing = ["--data", str(tmp_path / "missing.npz")]  # was a failure inside trial 0
    r = run_cli(["tune", "--space", str(good), "--trials", "2", "--out", "t", *missing], tmp_path)
    assert r.returncode == 2 and "data file not found" in error_lines(r)[-1], describe(r)
    assert not (tmp_path / "t").exists()  # and the folder is not blocked by the typo


def test_continuing_with_other_train_options_is_refused_naming_them(
    tmp_path: Path, shared_data: Path
) -> None:
    """The same command continues a search; one whose fixed options differ (e.g. --recipe, or
    the base a newer bloodmnist puts under a complete --config) is refused, saying what differs."""
    space = write_space(tmp_path)
    args = ["tune", "--space", str(space), "--trials", "1", "--out", "t", *tiny(shared_data)]
    first = run_cli(args, tmp_path)
    assert first.returncode == 0, describe(first)
    plan = (tmp_path / "t" / "tune_plan.json").read_text()
    again = run_cli([*args, "--epochs", "3", "--recipe", "fast"], tmp_path)
    assert again.returncode == 2, describe(again)
    assert error_lines(again) == [
        f"bloodmnist tune: error: {tmp_path / 't'} holds a search with other settings (train "
        "option train.epochs: saved 2, now 3; train option recipe: saved 'reference', now "
        "'fast'); run its original command to continue it, or pick a new --out"
    ]
    assert (tmp_path / "t" / "tune_plan.json").read_text() == plan  # untouched
    assert len(states(tmp_path / "t")) == 1  # no trial added
    # how trials run (runtime.threads...) may change, as with train --resume
    more = [a.replace("runtime.threads=1", "runtime.threads=2") for a in args]
    assert more != args and run_cli(more, tmp_path).returncode == 0
    assert "runtime.threads=2" in (tmp_path / "t" / "tune_plan.json").read_text()


@pytest.mark.parametrize("kind", ["random", "tpe"])
def test_a_continued_search_draws_new_points_reproducibly(tmp_path: Path, kind: str) -> None:
    """A seeded search continued by a new process (a new sampler on the same storage) does not
    draw its first trials again, and 2 + 2 trials give the same points as 4 in one go."""
    import optuna

    from bloodmnist.tuning.study import make_sampler

    spec = {"kind": kind, "seed": 5, "startup_trials": 2}

    def run(storage: str, n: int) -> list[float]:  # one process: its own sampler
        study = optuna.create_study(
            storage=storage, study_name="s", load_if_exists=True, sampler=make_sampler(spec)
        )
        study.optimize(lambda t: t.suggest_float("lr", 1e-4, 0.1, log=True), n_trials=n)
        return [t.params["lr"] for t in study.get_trials()]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run(f"sqlite:///{tmp_path / 'a.db'}", 2)
    continued = run(f"sqlite:///{tmp_path / 'a.db'}", 2)
    assert len(set(continued)) == 4, continued
    assert run(f"sqlite:///{tmp_path / 'b.db'}", 4) == continued


def test_shipped_spaces_are_valid() -> None:
    from bloodmnist.config import build_config
    from bloodmnist.tuning.space import load_space

    root = Path(__file__).resolve().parents[1] / "configs" / "search"
    for name, recipe in (("fast", "fast"), ("best", "reference")):
        space = load_space(root / f"{name}.yaml", build_config(recipe=recipe))
        assert len(space.params) >= 5, name


# -- a search: 4 trials on 2 workers, one pruned, validation only -------------------------------
def test_parallel_search_prunes_and_never_tests(tmp_path: Path, shared_data: Path) -> None:
    space = write_space(tmp_path)
    args = ["tune", "--space", str(space), "--trials", "4", "--jobs", "2", "--out", "t"]
    r = run_cli([*args, *tiny(shared_data)], tmp_path, timeout=400)
    assert r.returncode == 0, describe(r)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    tune_dir = tmp_path / "t"
    st = states(tune_dir)
    assert sorted(st.values()).count("PRUNED") >= 1, st
    assert sum(s in ("COMPLETE", "PRUNED") for s in st.values()) == 4, st
    assert out["complete"] + out["pruned"] == 4
    rows = trial_csv(tune_dir)
    assert [int(r["number"]) for r in rows] == sorted(st)
    for row in rows:
        if row["state"] not in ("COMPLETE", "PRUNED"):
            continue
        run_dir = tune_dir / row["run_dir"]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == row["state"].lower().replace("complete", "completed")
        assert not (run_dir / "predictions.npz").exists()  # the test split was never evaluated
        assert summary.get("test_acc") is None
        assert not (run_dir / "report.html").exists()
        history = list(csv.DictReader((run_dir / "history.csv").open()))
        assert float(row["best_val_acc"]) == pytest.approx(
            max(float(h["val_acc"]) for h in history), abs=1e-6
        )
        if row["state"] == "PRUNED":
            assert summary["epochs_run"] == len(history) == 1  # stopped after epoch 1
            assert float(row["optim.lr"]) == 1e-5
    best = yaml.safe_load((tune_dir / "best.yaml").read_text())
    assert best["optim"]["lr"] == 0.1 and best["eval"]["final_test"] is True
    assert best["model"]["arch"] == "resnet9" and best["data"]["subset"] == 64
    report = (tune_dir / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 2  # history, parallel coordinates, ...
    # best.yaml is a config `train --config` takes: it trains and tests once
    r = run_cli(["train", "--config", str(tune_dir / "best.yaml"), "--epochs", "1", "--out",
                 "best", "--set", "runtime.reports=false", "--quiet"], tmp_path)  # fmt: skip
    assert r.returncode == 0, describe(r)
    summary = json.loads((tmp_path / "best" / "summary.json").read_text())
    assert summary["status"] == "completed" and 0 <= summary["test_acc"] <= 1
    assert (tmp_path / "best" / "predictions.npz").is_file()
    # --report rebuilds the outputs from the study alone
    (tune_dir / "report.html").unlink()
    r = run_cli(["tune", "--report", str(tune_dir)], tmp_path)
    assert r.returncode == 0 and (tune_dir / "report.html").is_file(), describe(r)


# -- SIGKILL, then the same command again --------------------------------------------------------
def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.is_file() else []


def test_sigkilled_tune_resumes_to_the_count(tmp_path: Path, shared_data: Path) -> None:
    space = write_space(tmp_path)
    cmd = [sys.executable, "-m", "bloodmnist", "tune", "--space", str(space), "--trials", "2",
           "--out", "t", *tiny(shared_data)]  # fmt: skip
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    second = tmp_path / "t" / "trials" / "trial-0001" / "config.yaml"
    deadline = time.time() + 240
    while not second.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert second.exists(), (tmp_path / "first.log").read_text()
    assert not _children(proc.pid)  # --jobs 1: the trial runs in the tune process itself
    os.kill(proc.pid, signal.SIGKILL)  # nothing gets to clean up
    proc.wait()
    assert states(tmp_path / "t")[1] == "RUNNING"  # left behind by the killed process
    r = run_cli(cmd[3:], tmp_path, timeout=300)
    assert r.returncode == 0, describe(r)
    assert "trial 1 was left running by a killed tune: marked FAIL" in r.stderr
    st = states(tmp_path / "t")
    assert st[1] == "FAIL"
    assert sum(s in ("COMPLETE", "PRUNED") for s in st.values()) == 2, st
    assert "RUNNING" not in st.values()
    killed = json.loads((tmp_path / "t" / "trials" / "trial-0001" / "summary.json").read_text())
    assert killed["status"] == "failed"
    # Once the count is reached, the same command runs nothing more.
    r = run_cli(cmd[3:], tmp_path)
    assert r.returncode == 0 and states(tmp_path / "t") == st, describe(r)


def test_ctrl_c_stops_a_one_worker_tune_with_the_right_advice(tmp_path: Path, shared_data: Path):
    """With --jobs 1 the trial runs in the tune process: Ctrl-C said "train --resume TRIAL"
    (a run the search never counts) under Optuna's traceback, and wrote no trials.csv."""
    space = write_space(tmp_path)
    cmd = [sys.executable, "-m", "bloodmnist", "tune", "--space", str(space), "--trials", "2",
           "--out", "t", *tiny(shared_data), "--epochs", "200"]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # `make test &`
    )
    log = tmp_path / "t" / "trials" / "trial-0000" / "train.log"
    deadline = time.time() + 240
    while not (log.is_file() and "epoch 1/200" in log.read_text()):
        assert proc.poll() is None and time.time() < deadline, "the trial never trained"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        "bloodmnist tune: error: interrupted (Ctrl-C); the running trial stopped after its "
        "current step and is marked FAIL. Run the same command to continue"
    )
    assert "Traceback" not in err
    assert states(tmp_path / "t") == {0: "FAIL"} and (tmp_path / "t" / "trials.csv").is_file()
    # the trial's own stop line gives the search's advice too, not the trial folder's resume
    assert "train --resume" not in err
    summary = json.loads((tmp_path / "t" / "trials" / "trial-0000" / "summary.json").read_text())
    advice = (  # "; run" in epoch 1, ". Run" after it
        "run the same tune command to continue the search (this trial is marked fail; "
        "another takes its place)"
    )
    assert summary["message"].lower().endswith(advice), summary


# -- several workers, one storage -----------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A real PostgreSQL server on 127.0.0.1 in a temporary data folder (Debian `postgresql`);
    skips with the reason where it cannot start one."""
    pytest.importorskip("psycopg2", reason="psycopg2 (the PostgreSQL driver) is not installed")
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    bindir = bins[-1].parent
    data = Path(tempfile.mkdtemp(prefix="bloodmnist-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root: use the package's own user
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start postgres as another user")
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(data, "postgres")
    port = _free_port()
    init = subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust",
                           "-U", "postgres"], capture_output=True, text=True)  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    ctl = [*run_as, str(bindir / "pg_ctl"), "-D", str(data / "db")]
    start = subprocess.run([*ctl, "-o", opts, "-l", str(data / "log"), "-w", "start"],
                           capture_output=True, text=True)  # fmt: skip
    if start.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        pytest.skip(f"pg_ctl start failed: {start.stderr.strip()[-300:]}")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def _two_workers_share_one_study(tmp_path: Path, npz: Path, storage: str) -> None:
    """Two `tune` processes (as on two machines: own folders, one storage) reach the count
    together; every trial number is run once, in one folder, and none twice."""
    space = write_space(tmp_path)
    procs = []
    for name in ("a", "b"):
        cmd = [sys.executable, "-m", "bloodmnist", "tune", "--space", str(space), "--trials",
               "4", "--storage", storage, "--study-name", "shared", "--out", name]  # fmt: skip
        cmd += tiny(npz)
        log = (tmp_path / f"{name}.log").open("w")
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT))
    for p in procs:
        assert p.wait(timeout=400) == 0, [(tmp_path / f"{n}.log").read_text() for n in "ab"]
    import optuna

    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials()
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 4, [(t.number, t.state.name) for t in trials]
    assert len({t.number for t in trials}) == len(trials)
    assert not [t for t in trials if t.state.name == "RUNNING"]
    folders = {n: sorted(p.name for p in (tmp_path / n / "trials").glob("trial-*")) for n in "ab"}
    ran = folders["a"] + folders["b"]
    assert len(ran) == len(set(ran))  # no trial ran in both places
    assert sorted(f"trial-{t.number:04d}" for t in done) == sorted(
        f for f in ran if json.loads((tmp_path / ("a" if f in folders["a"] else "b") / "trials"
                                      / f / "summary.json").read_text())["status"]
        in ("completed", "pruned")
    )  # fmt: skip
    assert folders["a"] and folders["b"], folders  # both workers took part


def test_two_workers_one_sqlite_storage(tmp_path: Path, shared_data: Path) -> None:
    _two_workers_share_one_study(tmp_path, shared_data, f"sqlite:///{tmp_path / 'shared.db'}")


def test_two_workers_one_postgresql_server(
    tmp_path: Path, shared_data: Path, postgres_url: str
) -> None:
    _two_workers_share_one_study(tmp_path, shared_data, postgres_url)


def test_storage_urls_never_show_their_password() -> None:
    from bloodmnist.tuning.study import safe_url

    shown = safe_url("postgresql://ann:p@ss:w0rd@db.example:5432/tune")
    assert "p@ss" not in shown and "w0rd" not in shown and shown.startswith("postgresql://")
    shown = safe_url("postgresql://ann:p%40ss@db.example:5432/tune")  # percent-encoded '@'
    assert shown == "postgresql://ann:***@db.example:5432/tune"
    assert safe_url("sqlite:///runs/t/study.db") == "sqlite:///runs/t/study.db"


def test_a_diverged_trial_counts_as_the_worst_result(tmp_path: Path, shared_data: Path) -> None:
    """A learning rate that blows the model up is a result for the sampler (accuracy 0), not a
    failed trial that the study would silently replace."""
    space = {"params": {"optim.lr": {"type": "categorical", "choices": [1.0e9]}}}
    args = ["tune", "--space", str(write_space(tmp_path, space)), "--trials", "1", "--out", "t"]
    r = run_cli([*args, *tiny(shared_data)], tmp_path, timeout=300)
    assert r.returncode == 0, describe(r)
    assert states(tmp_path / "t") == {0: "COMPLETE"}
    (row,) = trial_csv(tmp_path / "t")
    assert float(row["best_val_acc"]) == 0.0 and row["note"] == "diverged", row


def test_seeds_per_trial_score_their_mean(tmp_path: Path, shared_data: Path) -> None:
    """With `seeds` in the space every trial trains each seed in its own folder, and its score
    is the mean of their best validation accuracies (a search not fooled by one lucky seed)."""
    space = {"seeds": [5, 6], "params": {"optim.lr": {"type": "categorical", "choices": [0.1]}}}
    args = ["tune", "--space", str(write_space(tmp_path, space)), "--trials", "1", "--out", "t"]
    r = run_cli([*args, *tiny(shared_data)], tmp_path, timeout=300)
    assert r.returncode == 0, describe(r)
    tune_dir = tmp_path / "t"
    (row,) = trial_csv(tune_dir)
    assert row["state"] == "COMPLETE" and row["run_dir"] == "trials/trial-0000"
    best = {}
    for seed in (5, 6):
        run_dir = tune_dir / "trials" / "trial-0000" / f"seed-{seed}"
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert cfg["train"]["seed"] == seed and cfg["eval"]["final_test"] is False
        history = list(csv.DictReader((run_dir / "history.csv").open()))
        assert len(history) == 2
        best[seed] = max(float(h["val_acc"]) for h in history)
        assert not (run_dir / "predictions.npz").exists()  # the test split stays unseen
    assert float(row["best_val_acc"]) == pytest.approx((best[5] + best[6]) / 2, abs=1e-9)
    assert row["val_acc_per_seed"] == f"5:{best[5]:.4f} 6:{best[6]:.4f}"
    assert int(row["epochs_run"]) == 4  # 2 epochs for each seed
    w5 = tune_dir / "trials" / "trial-0000" / "seed-5" / "checkpoints" / "best.pt"
    w6 = w5.parents[2] / "seed-6" / "checkpoints" / "best.pt"
    assert w5.read_bytes() != w6.read_bytes()  # two trainings, not one copied
    assert "mean over seeds 5, 6" in (tune_dir / "report.html").read_text()


def test_progress_pruning_meets_trials_at_equal_shares(tmp_path: Path, shared_data: Path) -> None:
    """`pruner.by: progress`: a 2-epoch and a 4-epoch trial report at the same steps of a
    20-step grid (the share of each one's schedule), so the median compares like with like."""
    space = {
        "sampler": {"kind": "random", "seed": 5},  # draws 4 epochs, then 2
        "pruner": {"kind": "median", "by": "progress", "startup_trials": 9},
        "params": {"train.epochs": {"type": "categorical", "choices": [2, 4]}},
    }
    args = ["tune", "--space", str(write_space(tmp_path, space)), "--trials", "2", "--out", "t"]
    r = run_cli([*args, *tiny(shared_data)], tmp_path, timeout=300)
    assert r.returncode == 0, describe(r)
    with sqlite3.connect(tmp_path / "t" / "study.db") as db:
        rows = db.execute(
            "SELECT t.number, v.step, v.intermediate_value FROM trial_intermediate_values v "
            "JOIN trials t ON t.trial_id = v.trial_id ORDER BY t.number, v.step"
        ).fetchall()
    by_trial: dict[int, list[tuple[int, float]]] = {}
    for number, step, value in rows:
        by_trial.setdefault(number, []).append((step, value))
    epochs = {int(r["number"]): int(r["epochs_run"]) for r in trial_csv(tmp_path / "t")}
    assert sorted(epochs.values()) == [2, 4], epochs  # the seed draws both lengths
    for number, points in by_trial.items():
        run_dir = tmp_path / "t" / "trials" / f"trial-{number:04d}"
        accs = [float(h["val_acc"]) for h in csv.DictReader((run_dir / "history.csv").open())]
        n = epochs[number]
        assert [s for s, _ in points] == [e * 20 // n for e in range(1, n + 1)]
        assert [v for _, v in points] == pytest.approx(accs)  # epoch e reported at step 20e/n
