"""`bloodmnist tune` (hyper-parameter search on Optuna) and `bloodmnist runs` (table of runs)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

from bloodmnist.cli.console import say
from bloodmnist.config import base_recipe
from bloodmnist.errors import BloodMNISTError

#: Train options a search sets per trial itself.
RESERVED = ("--out", "--resume")


def _base_spec(train_args: list[str]):
    """The fixed train options as a BaseSpec, parsed by `train`'s own parser."""
    from bloodmnist.cli.main import build_parser
    from bloodmnist.tuning.objective import BaseSpec

    for arg in train_args:
        if arg.split("=", 1)[0] in RESERVED:
            raise BloodMNISTError(f"tune sets {arg.split('=', 1)[0]} for each trial; drop it")
    ns, unknown = build_parser().parse_known_args(["train", *train_args])
    if unknown:
        raise BloodMNISTError(f"tune: unknown train option {unknown[0]!r}")
    from bloodmnist.cli.commands import train_flags

    config = str(Path(ns.config).resolve()) if ns.config else None
    flags = {k: v for k, v in train_flags(ns).items() if v is not None}
    return BaseSpec(config, base_recipe(ns.recipe, config), flags, list(ns.set))


def _tune_dir(args: argparse.Namespace) -> Path:
    path = Path(args.out) if args.out else Path("runs") / f"tune-{Path(args.space).stem}"
    return path.expanduser().resolve()


def _what_it_computes(overrides: list[str]) -> list[str]:
    """--set options without those that change how trials run, not what (runtime.threads...),
    which a continued search may change, as `train --resume` may."""
    from bloodmnist.config import HOW_TO_RUN, parse_override

    return [o for o in overrides if parse_override(o)[0] not in HOW_TO_RUN]


def _plan_differences(old, new) -> list[str]:
    """'what: saved X, now Y' for each setting a continued search must keep."""
    saved = {"storage": old.storage, "study name": old.study_name}
    now = {"storage": new.storage, "study name": new.study_name}
    for key in sorted(set(old.base) | set(new.base)):
        a, b = old.base.get(key), new.base.get(key)
        if key == "overrides":
            a, b = _what_it_computes(a or []), _what_it_computes(b or [])
        if isinstance(a, dict) and isinstance(b, dict):  # the flags: name the one that differs
            for sub in sorted(set(a) | set(b)):
                saved[f"train option {sub}"], now[f"train option {sub}"] = a.get(sub), b.get(sub)
        else:
            saved[f"train option {key}"], now[f"train option {key}"] = a, b
    out = ["the search space"] if old.space != new.space else []
    return out + [f"{k}: saved {v!r}, now {now[k]!r}" for k, v in saved.items() if v != now[k]]


def _plan(args: argparse.Namespace, tune_dir: Path):
    """Check fixed options and space (one error line, before any trial) and make the plan; a
    folder holding a search with other options or another space is refused."""
    from dataclasses import asdict

    from bloodmnist.data.npz import require_data_path
    from bloodmnist.studies.study import split_cores
    from bloodmnist.tuning.space import load_space
    from bloodmnist.tuning.study import PLAN_FILE, TunePlan, default_storage

    base = _base_spec(args.train_args)
    fixed = base.build()
    require_data_path(fixed.data.path)  # before the folder exists: a typo must not block it
    space = load_space(args.space, fixed)
    jobs, threads = split_cores(args.trials, args.jobs, len(os.sched_getaffinity(0)))
    if any(o.replace(" ", "").startswith("runtime.threads=") for o in base.overrides):
        threads = 0  # the user's own choice stands
    plan = TunePlan(
        space_file=str(Path(args.space).resolve()),
        space=space.source,
        base=asdict(base),
        n_trials=args.trials,
        jobs=jobs,
        threads=threads,
        storage=args.storage or default_storage(tune_dir),
        study_name=args.study_name or Path(args.space).stem,
    )
    if (tune_dir / PLAN_FILE).is_file():
        diffs = _plan_differences(TunePlan.load(tune_dir), plan)
        if diffs:
            raise BloodMNISTError(
                f"{tune_dir} holds a search with other settings ({'; '.join(diffs)}); run its "
                "original command to continue it, or pick a new --out"
            )
    elif tune_dir.exists() and any(tune_dir.iterdir()):
        raise BloodMNISTError(f"{tune_dir} is not empty and not a tune folder; pick a new --out")
    return plan, space


def tune(args: argparse.Namespace) -> int:
    if args.report:
        return _rebuild_report(Path(args.report), args.storage)
    if not args.space or not args.trials:
        raise BloodMNISTError("tune needs --space SPACE.yaml and --trials N (or --report DIR)")
    import optuna

    from bloodmnist.tuning.objective import BaseSpec
    from bloodmnist.tuning.results import write_outputs
    from bloodmnist.tuning.study import counts, fail_orphans, open_study
    from bloodmnist.tuning.workers import run_workers

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happens
    tune_dir = _tune_dir(args)
    plan, space = _plan(args, tune_dir)
    tune_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(plan, space)  # storage and space are checked before any trial
    plan.save(tune_dir)
    for number in fail_orphans(study, tune_dir):
        say(f"trial {number} was left running by a killed tune: marked FAIL (not counted)")
    done, running = counts(study)
    say(f"study '{plan.study_name}': {done}/{plan.n_trials} trials done, {running} running")
    codes: dict[int, int] = {}
    if done < plan.n_trials:
        deadline = time.time() + args.timeout if args.timeout else None
        if plan.jobs == 1:  # the worker runs in this process: one interpreter start fewer
            codes = {0: _worker_here(study, tune_dir, deadline, plan)}
        else:
            codes = run_workers(tune_dir, plan.jobs, deadline, plan.cwd, say)
    paths = write_outputs(study, tune_dir, BaseSpec(**plan.base), plan.study_name)
    return _finish(study, plan, tune_dir, codes, paths)


def _worker_here(study, tune_dir: Path, deadline: float | None, plan) -> int:
    """The one worker in this process; a signal stops its trial (marked FAIL) and the search
    continues with the same command, as with --jobs N (not with the trial's train --resume,
    which the study would never count)."""
    from bloodmnist.errors import TrainingStopped
    from bloodmnist.tuning.objective import BaseSpec
    from bloodmnist.tuning.results import write_outputs
    from bloodmnist.tuning.workers import worker_main

    try:
        return worker_main(tune_dir, 0, deadline, study)
    except TrainingStopped as exc:
        write_outputs(study, tune_dir, BaseSpec(**plan.base), plan.study_name)
        code = exc.exit_code
        how = "Ctrl-C" if code == 130 else signal.Signals(code - 128).name if code > 128 else "stop"
        raise TrainingStopped(
            f"interrupted ({how}); the running trial stopped after its current step and is "
            "marked FAIL. Run the same command to continue",
            exc.exit_code,
        ) from None


def _finish(study, plan, tune_dir: Path, codes: dict[int, int], paths: dict) -> int:
    from bloodmnist.tuning.results import best_trial
    from bloodmnist.tuning.study import LOGS_DIR, counts

    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    best = best_trial(study)
    out = {
        "tune_dir": str(tune_dir),
        "study": plan.study_name,
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        "best_trial": best.number if best else None,
        "best_val_acc": best.value if best else None,
        "best_params": best.params if best else None,
        **{k: str(v) for k, v in paths.items()},
    }
    print(json.dumps(out))
    bad = {i: rc for i, rc in codes.items() if rc != 0}
    done, _ = counts(study)
    if bad and done < plan.n_trials:
        which = ", ".join(f"{LOGS_DIR}/worker-{i}.log (exit {rc})" for i, rc in bad.items())
        raise BloodMNISTError(f"{done}/{plan.n_trials} trials done; workers failed: {which}")
    return 0


def _rebuild_report(tune_dir: Path, storage: str | None) -> int:
    import optuna

    from bloodmnist.tuning.objective import BaseSpec
    from bloodmnist.tuning.results import write_outputs
    from bloodmnist.tuning.study import TunePlan, open_storage, safe_url

    plan = TunePlan.load(tune_dir)
    try:
        study = optuna.load_study(
            study_name=plan.study_name, storage=open_storage(storage or plan.storage)
        )
    except KeyError:
        raise BloodMNISTError(
            f"no study '{plan.study_name}' in {safe_url(storage or plan.storage)}"
        ) from None
    for name, path in write_outputs(
        study, tune_dir, BaseSpec(**plan.base), plan.study_name
    ).items():
        print(f"{name}: {path}")
    return 0


def runs(args: argparse.Namespace) -> int:
    from bloodmnist.tracking.runs import find_runs, format_table

    root = Path(args.dir)
    if not root.is_dir():
        raise BloodMNISTError(f"runs: {root} is not a folder")
    rows = find_runs(root, sort=args.sort or "name")
    if not rows:
        say(f"no run folders under {root}")
        return 0
    print(format_table(rows, root))
    return 0
