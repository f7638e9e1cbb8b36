"""The tune objective's bookkeeping with seeds per trial and pruning by progress, on a stand-in
for `train_run` that reports set validation curves (the real trainings are in test_tune.py)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

import bloodmnist.training.run as run_module
from bloodmnist.errors import TrainingStopped
from bloodmnist.tuning.objective import BaseSpec, TrialSetup, objective
from bloodmnist.tuning.results import trial_rows
from bloodmnist.tuning.space import parse_space
from bloodmnist.tuning.study import _mark_folder, make_pruner

GOOD, BAD, DIVERGES, SEED2_BAD = 0.05, 0.02, 0.03, 0.04  # optim.lr values the stand-in reads
LAST_BAD = 0.06  # as GOOD, but its last epoch falls to 0.1


def curve(lr: float, seed: int, epochs: int) -> list[float]:
    """Validation accuracy per epoch: rising with progress; the bad lr stays low (SEED2_BAD:
    for seed 2 only)."""
    top = 0.9 if lr in (GOOD, LAST_BAD) or (lr == SEED2_BAD and seed == 1) else 0.5
    accs = [top * (e / epochs) + 0.001 * seed for e in range(1, epochs + 1)]
    return accs[:-1] + [0.1] if lr == LAST_BAD else accs


@pytest.fixture
def fake_training(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Replace train_run; returns the log of (seed, epochs planned, epochs run) per call."""
    calls: list[tuple[int, int, int]] = []

    def train_run(cfg, rt, run_dir: Path, progress: bool, on_epoch, continue_with: str):
        assert continue_with.startswith("run the same tune command")  # not train --resume
        seed, epochs = cfg.train.seed, cfg.train.epochs
        accs = curve(cfg.optim.lr, seed, epochs)
        calls.append((seed, epochs, 0))
        for e, acc in enumerate(accs, start=1):
            if cfg.optim.lr == DIVERGES and seed == 2 and e == 3:
                (run_dir / "summary.json").write_text(json.dumps({"status": "diverged"}))
                raise TrainingStopped("loss is NaN", 3)
            calls[-1] = (seed, epochs, e)
            on_epoch({"epoch": e, "val_acc": acc})
        return {"best_val_acc": max(accs), "epochs_run": epochs}

    monkeypatch.setattr(run_module, "train_run", train_run)
    return calls


def setup_and_study(tmp_path: Path, seeds: bool = True) -> tuple[TrialSetup, optuna.Study]:
    """Trials of seeds 1 and 2 (or of the recipe's one seed), pruned by progress."""
    space = parse_space(
        {
            **({"seeds": [1, 2]} if seeds else {}),
            "pruner": {"kind": "median", "by": "progress", "startup_trials": 1,
                       "warmup_percent": 25},
            "params": {
                "optim.lr": {"type": "categorical",
                             "choices": [GOOD, BAD, DIVERGES, SEED2_BAD, LAST_BAD]},
                "train.epochs": {"type": "categorical", "choices": [20, 40]},
            },
        },
        BaseSpec(recipe="fast").build(),
    )  # fmt: skip
    setup = TrialSetup(tmp_path, BaseSpec(recipe="fast"), space, n_trials=10)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=make_pruner(space.pruner))
    return setup, study


def run_trial(study: optuna.Study, setup: TrialSetup, lr: float, epochs: int) -> None:
    study.enqueue_trial({"optim.lr": lr, "train.epochs": epochs})
    study.optimize(lambda t: objective(t, setup), n_trials=1)


def test_seeds_score_their_mean_and_only_the_first_seed_reports(
    tmp_path: Path, fake_training: list
) -> None:
    setup, study = setup_and_study(tmp_path)
    run_trial(study, setup, GOOD, 20)
    (t,) = study.trials
    assert fake_training == [(1, 20, 20), (2, 20, 20)]  # both seeds trained in full
    assert t.value == pytest.approx((0.901 + 0.902) / 2)
    assert t.user_attrs["seed_val_acc"] == {"1": pytest.approx(0.901), "2": pytest.approx(0.902)}
    assert t.user_attrs["epochs_run"] == 40 and t.user_attrs["run_dir"] == "trials/trial-0000"
    # 20 steps, every one from seed 1 (seed 2's curve is 0.001 higher at each epoch)
    assert t.intermediate_values == pytest.approx({e: 0.9 * e / 20 + 0.001 for e in range(1, 21)})
    assert (tmp_path / "trials/trial-0000/seed-1").is_dir()
    assert (tmp_path / "trials/trial-0000/seed-2").is_dir()


def test_a_worse_longer_trial_is_pruned_at_a_quarter_of_its_run_not_before(
    tmp_path: Path, fake_training: list
) -> None:
    setup, study = setup_and_study(tmp_path)
    run_trial(study, setup, GOOD, 20)
    fake_training.clear()
    run_trial(study, setup, BAD, 40)  # 40 epochs: step k at epoch 2k
    t = study.trials[1]
    assert t.state == optuna.trial.TrialState.PRUNED
    assert fake_training == [(1, 40, 10)]  # step 5 = 25% = epoch 10; seed 2 never started
    assert sorted(t.intermediate_values) == [1, 2, 3, 4, 5]
    assert t.user_attrs["epochs_run"] == 10
    assert t.user_attrs["best_val_acc"] == pytest.approx(0.5 * 10 / 40 + 0.001)
    assert "pruned during seed 1" in t.user_attrs["note"]
    summary = json.loads((tmp_path / "trials/trial-0001/seed-1/summary.json").read_text())
    assert summary["status"] == "pruned" and summary["epochs_run"] == 10
    assert not (tmp_path / "trials/trial-0001/seed-2").exists()
    header, rows = trial_rows(study)
    row = dict(zip(header, rows[1], strict=True))
    assert row["best_val_acc"] == pytest.approx(0.5 * 10 / 40 + 0.001)  # every epoch's best


@pytest.mark.filterwarnings("error")  # Optuna warns when a step is reported twice
def test_a_later_seed_is_never_pruned(tmp_path: Path, fake_training: list) -> None:
    setup, study = setup_and_study(tmp_path)
    run_trial(study, setup, GOOD, 20)
    fake_training.clear()
    run_trial(study, setup, SEED2_BAD, 20)  # seed 2 falls far below the median from step 1
    t = study.trials[1]
    assert t.state == optuna.trial.TrialState.COMPLETE
    assert fake_training == [(1, 20, 20), (2, 20, 20)]
    assert t.value == pytest.approx((0.901 + 0.502) / 2)


def test_a_trial_is_not_pruned_after_its_last_epoch(tmp_path: Path, fake_training) -> None:
    """Pruning after the last epoch of a one-seed trial saves nothing and would record the trial
    as PRUNED (its value the last epoch's); it completes. With seeds, the first seed's last
    epoch may still prune: the other seeds are then not trained."""
    setup, study = setup_and_study(tmp_path, seeds=False)
    run_trial(study, setup, GOOD, 20)
    run_trial(study, setup, LAST_BAD, 20)  # level with GOOD, then 0.1 after epoch 20
    t = study.trials[1]
    assert t.state == optuna.trial.TrialState.COMPLETE, t.state
    assert t.intermediate_values[20] == pytest.approx(0.1)  # reported, so later trials compare
    assert fake_training[-1] == (42, 20, 20)

    setup, study = setup_and_study(tmp_path / "seeded")
    run_trial(study, setup, GOOD, 20)
    fake_training.clear()
    run_trial(study, setup, LAST_BAD, 20)
    assert study.trials[1].state == optuna.trial.TrialState.PRUNED
    assert fake_training == [(1, 20, 20)]  # seed 2 never started


def test_the_last_epoch_is_also_the_one_early_stopping_ends_on() -> None:
    from bloodmnist.config import Config
    from bloodmnist.tuning.objective import _last_epoch

    cfg = Config()  # 60 epochs, early stop after 15 without a better validation accuracy
    assert _last_epoch(cfg, 60, 60) and not _last_epoch(cfg, 59, 59)
    assert _last_epoch(cfg, 40, 25) and not _last_epoch(cfg, 39, 25)  # stopped early at 40
    cfg.train.select = "last"  # ships the last epoch: never stops early
    assert not _last_epoch(cfg, 40, 25)


def test_a_diverged_second_seed_scores_the_trial_zero(tmp_path: Path, fake_training) -> None:
    setup, study = setup_and_study(tmp_path)
    run_trial(study, setup, DIVERGES, 20)
    (t,) = study.trials
    assert t.state == optuna.trial.TrialState.COMPLETE and t.value == 0.0
    assert t.user_attrs["note"] == "diverged (seed 2)"
    assert t.user_attrs["epochs_run"] == 20 + 2  # seed 1 in full, seed 2 until it diverged


def test_a_killed_seeded_trial_marks_its_unfinished_seed_folders(tmp_path: Path) -> None:
    root = tmp_path / "trials" / "trial-0003"
    (root / "seed-1").mkdir(parents=True)
    (root / "seed-2").mkdir()
    (root / "seed-1" / "summary.json").write_text('{"status": "completed"}')
    _mark_folder(tmp_path, 3)
    assert json.loads((root / "seed-1" / "summary.json").read_text())["status"] == "completed"
    assert json.loads((root / "seed-2" / "summary.json").read_text())["status"] == "failed"
    assert not (root / "summary.json").exists()  # the trial folder is not a run folder


def test_seeds_and_a_train_seed_parameter_do_not_mix() -> None:
    from bloodmnist.tuning.space import SpaceError

    space = {"seeds": [1, 2], "params": {"train.seed": {"type": "int", "low": 0, "high": 9}}}
    with pytest.raises(SpaceError, match="drop train.seed"):
        parse_space(space, BaseSpec(recipe="fast").build())


def test_a_pruned_trial_is_listed_with_its_best_epoch_not_its_last() -> None:
    """Optuna stores a pruned trial's last reported value as its value; trials.csv and the
    report must show its best (what summary.json says), as for completed trials."""
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    for epoch, acc in enumerate([0.30, 0.45, 0.40], start=1):
        trial.report(acc, epoch)
    trial.set_user_attr("best_val_acc", 0.45)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert study.trials[0].value in (None, 0.40)  # Optuna's own: the last (or none)
    header, rows = trial_rows(study)
    assert dict(zip(header, rows[0], strict=True))["best_val_acc"] == 0.45
