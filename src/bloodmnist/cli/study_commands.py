"""Bodies of `bloodmnist study` and `bloodmnist compare` (parsers in cli/main.py)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from bloodmnist.atomic import check_new_file, write_text_new
from bloodmnist.cli.console import say
from bloodmnist.errors import BloodMNISTError

if TYPE_CHECKING:  # imported lazily below: `compare` needs none of the study machinery
    from bloodmnist.config import Config
    from bloodmnist.studies.study import StudyPlan


def _echo(text: str) -> None:
    say(f"study: {text}")


def _parse_train(train_args: list[str]) -> argparse.Namespace:
    """Parse the forwarded options as `bloodmnist train` would; one clear error for a typo."""
    from bloodmnist.cli.main import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(["train", *train_args])
    except SystemExit:
        lines = err.getvalue().strip().splitlines() or ["invalid train options"]
        msg = lines[-1].split("error: ", 1)[-1]
        raise BloodMNISTError(f"{msg} (train options; see bloodmnist train --help)") from None


def check_train_options(train_args: list[str]) -> Config:
    """Build the config once, so a typo fails here in one line instead of in every seed's
    subprocess."""
    from bloodmnist.cli.commands import train_config

    return train_config(_parse_train(train_args))


def _adopt(run_dirs: list[str], seeds: list[int], train_args: list[str]) -> dict[str, str]:
    """seed -> absolute run folder for each --adopt, each checked against the study's options."""
    from bloodmnist.cli.commands import train_config
    from bloodmnist.studies.adopt import check_adoptable

    def seed_config(seed: int):
        return train_config(_parse_train([*train_args, "--seed", str(seed)]))

    adopted: dict[str, str] = {}
    for run_dir in run_dirs:
        path = Path(run_dir).expanduser().resolve()
        seed = str(check_adoptable(path, seeds, seed_config))
        if seed in adopted:
            raise BloodMNISTError(f"--adopt {path}: seed {seed} is already {adopted[seed]}")
        adopted[seed] = str(path)
    return adopted


def _check_unstarted_seeds(study_dir: Path, plan: StudyPlan) -> None:
    """On --resume, seeds yet to start must get the config the started ones got: a newer
    bloodmnist may build the saved options differently (a recipe's values, the base under
    --config), and one study must not mix configurations."""
    from bloodmnist.config import absolute_paths, from_dict, load_yaml
    from bloodmnist.studies.adopt import describe_differences
    from bloodmnist.studies.study import seed_dir, seed_state

    # "unstarted": stopped before an epoch ended, trained again from scratch like a new seed
    states = {s: seed_state(seed_dir(study_dir, s)) for s in plan.seeds}
    fresh = ("new", "unstarted")
    started = [
        s
        for s in plan.seeds
        if states[s] not in fresh and (seed_dir(study_dir, s) / "config.yaml").is_file()
    ]
    if not started or all(state not in fresh for state in states.values()):
        return
    seed = started[0]
    have = from_dict(load_yaml(seed_dir(study_dir, seed) / "config.yaml"))
    if not Path(plan.cwd).is_dir():
        return  # the seeds' own start will say so
    here = os.getcwd()
    os.chdir(plan.cwd)  # the saved options' relative paths resolve where the study started
    try:
        have = absolute_paths(have)  # a seed started by an older version saved them as typed
        want = check_train_options([*plan.train_args, "--seed", str(seed)])
    finally:
        os.chdir(here)
    shown = describe_differences(have, want, ("ran", "now"))
    if shown:
        raise BloodMNISTError(
            f"study --resume {study_dir}: its options now give other settings than seed {seed} "
            f"ran with: {shown}; start a new study whose options give the started seeds' "
            "config (e.g. with --recipe or --set) and --adopt them"
        )


def _plan(args: argparse.Namespace, train_args: list[str]) -> tuple[Path, StudyPlan]:
    from bloodmnist.data.npz import require_data_path
    from bloodmnist.studies.study import (
        StudyPlan,
        check_train_args,
        new_plan,
        parse_seeds,
        prepare_study_dir,
    )

    adopt = args.adopt or []
    if args.resume:
        given = (["--seeds"] if args.seeds else []) + (["--out"] if args.out else []) + train_args
        given += (["--adopt"] if adopt else []) + (["--jobs"] if args.jobs is not None else [])
        if given:
            raise BloodMNISTError(
                f"--resume continues the study's saved plan; drop {' '.join(given)}"
            )
        study_dir = prepare_study_dir(args.resume, resume=True)
        plan = StudyPlan.load(study_dir)
        _check_unstarted_seeds(study_dir, plan)
        return study_dir, plan
    if not args.seeds:
        raise BloodMNISTError("study needs --seeds, e.g. --seeds 42,43,44 (or --resume STUDY_DIR)")
    seeds = parse_seeds(args.seeds)
    check_train_args(train_args)
    options = check_train_options(train_args)
    # before the folder exists: not a failure in every seed, and a typo must not block it
    require_data_path(options.data.path)
    if not options.eval.final_test:  # found only after every seed ran
        raise BloodMNISTError(
            "a study summarises each seed's test evaluation; drop eval.final_test=false (use "
            "tune for searches on validation)"
        )
    plan = new_plan(seeds, train_args, 1 if args.jobs is None else args.jobs)
    plan.adopted = _adopt(adopt, seeds, train_args)
    study_dir = prepare_study_dir(args.out, resume=False)
    plan.save(study_dir)
    return study_dir, plan


def study(args: argparse.Namespace) -> int:
    from bloodmnist.training.runlock import RunLock

    study_dir, plan = _plan(args, list(getattr(args, "train_args", [])))
    # One study per folder: a second (a --resume while it runs) would start the same seeds,
    # append to their logs and write study.json over the first's.
    with RunLock(study_dir):
        return _run_study(args, study_dir, plan)


def _run_study(args: argparse.Namespace, study_dir: Path, plan: StudyPlan) -> int:
    from bloodmnist.evaluation.stats import format_mean_std
    from bloodmnist.evaluation.study_stats import aggregate_runs, load_seed_run
    from bloodmnist.reporting.study_report import write_study_reports
    from bloodmnist.studies.adopt import link_adopted
    from bloodmnist.studies.study import failures, run_seeds, seed_dir, study_record

    threads = f"{plan.threads} threads each" if plan.threads else "threads as set"
    _echo(f"{study_dir}: seeds {plan.seeds}, {plan.jobs} at a time, {threads}")
    link_adopted(study_dir, plan.adopted)
    for seed, run_dir in plan.adopted.items():
        _echo(f"seed {seed}: adopted {run_dir}")
    outcome = run_seeds(study_dir, plan, echo=_echo)
    done = [s for s in plan.seeds if outcome[s] == "completed"]
    runs = [load_seed_run(s, seed_dir(study_dir, s)) for s in done]
    failed = failures(outcome)
    if runs:
        record = {
            **aggregate_runs(runs, args.n_boot, args.boot_seed),
            **study_record(plan, outcome),
        }
        paths = write_study_reports(study_dir, record, {r.seed: r.history for r in runs})
        out = {"study_dir": str(study_dir), "seeds": done, **{k: str(p) for k, p in paths.items()}}
        for key in ("test_acc", "test_acc_tta", "test_macro_f1", "test_auc", "test_ece"):
            if record["mean_std"].get(key, {}).get("mean") is not None:
                out[key] = format_mean_std(record["mean_std"][key])
        print(json.dumps(out, indent=2, ensure_ascii=False))
    if failed:
        names = ", ".join(f"{s} ({r})" for s, r in failed.items())
        raise BloodMNISTError(
            f"seed(s) {names} did not finish (logs in {study_dir / 'logs'}); "
            f"continue with: bloodmnist study --resume {study_dir}"
        )
    return 0


def compare(args: argparse.Namespace) -> int:
    from bloodmnist.evaluation.compare import compare_sides, load_side

    if args.json:
        check_new_file(Path(args.json), "--json")  # before the work, not after it
    result = compare_sides(
        load_side(Path(args.a)), load_side(Path(args.b)), args.variant, args.n_boot, args.boot_seed
    )
    text = json.dumps(result, indent=2, allow_nan=False)
    print(text)
    for pair in result["same_training"]:
        say(
            f"bloodmnist compare: warning: {pair['a']} and {pair['b']} are one training "
            f"({pair['why']}): the sides share it, so they differ less than they would otherwise"
        )
    if args.json:
        write_text_new(Path(args.json), text + "\n", "--json")
    return 0
