"""Sub-command bodies: parse-free functions taking the argparse namespace."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bloodmnist.atomic import check_new_file, write_text_new
from bloodmnist.cli.console import say
from bloodmnist.config import (
    DEFAULT_RECIPE,
    HOW_TO_RUN,
    Config,
    absolute_paths,
    apply_overrides,
    base_recipe,
    build_config,
    check_train_on,
    lacking_keys,
    load_yaml,
    parse_override,
)
from bloodmnist.errors import BloodMNISTError

if TYPE_CHECKING:
    from bloodmnist.training.run import ResumeFrom


def train_flags(args: argparse.Namespace) -> dict[str, Any]:
    """`train`'s dedicated flags as dotted Config keys (None where not given)."""
    return {
        # absolute, so the saved config (and --resume) works from any directory
        "data.path": str(Path(args.data).expanduser().resolve()) if args.data else None,
        "train.epochs": args.epochs,
        "train.seed": args.seed,
        "runtime.device": args.device,
        "runtime.precision": args.precision,
        "model.pretrained": args.pretrained,
        "data.subset": args.subset,
    }


def train_config(args: argparse.Namespace) -> Config:
    flags = train_flags(args)
    recipe = base_recipe(args.recipe, args.config)
    if args.recipe is None and recipe != DEFAULT_RECIPE:  # a saved config: say what that means
        lacking = lacking_keys(load_yaml(args.config))
        if lacking:
            say(
                f"note: {args.config} is a saved config; the keys it lacks take the Config "
                f"defaults, as when it was written ({', '.join(lacking)}); add --recipe "
                f"{DEFAULT_RECIPE} to take that recipe's instead"
            )
    return absolute_paths(build_config(args.config, flags, args.set, recipe=recipe))


def _shared_run_dir(rt, out: str | None, cfg) -> Path:
    """Rank 0 creates the run folder; under torchrun every rank learns its path (or its error)."""
    from bloodmnist.runtime import from_main
    from bloodmnist.training.rundir import new_run_dir

    return from_main(
        rt, lambda: new_run_dir(out or cfg.runtime.out, cfg.runtime.name, explicit=out is not None)
    )


def _resume_state(args: argparse.Namespace) -> tuple[Path, ResumeFrom, Config]:
    """Load RUN_DIR/checkpoints/last.pt; the run's own config wins. Only --epochs, --device,
    --precision and the HOW_TO_RUN keys (threads, compile, reports, TensorBoard) may change:
    a run may move to a machine with more cores without computing anything else."""
    from bloodmnist.training.checkpoint import checkpoint_config, file_stamp, load_checkpoint
    from bloodmnist.training.run import ResumeFrom
    from bloodmnist.training.runlock import RunLock

    run_dir = Path(args.resume)
    if not run_dir.is_dir():
        raise BloodMNISTError(f"--resume: run folder {run_dir} does not exist")
    fixed = [k for k, _ in map(parse_override, args.set) if k not in HOW_TO_RUN]
    clash = [
        f"--{k}"
        for k in ("config", "recipe", "data", "out", "seed", "pretrained", "subset")
        if getattr(args, k)
    ] + [f"--set {k}" for k in fixed]
    if clash:
        raise BloodMNISTError(
            f"--resume continues the run's saved config; drop {', '.join(clash)} (--set may "
            f"change only {', '.join(HOW_TO_RUN)})"
        )
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        from bloodmnist.training.rundir import failed_setup_only

        fresh = (
            f"run train again without --resume: --out {run_dir} may be used again (it holds only "
            "the log of a start that failed)"
            if failed_setup_only(run_dir)
            else "start a new run with another --out (or delete that folder)"
        )
        raise BloodMNISTError(
            f"--resume: {last} does not exist, so no epoch finished in {run_dir} and there is "
            f"nothing to resume; {fresh}"
        )
    # a run still training: say so before loading its state (waiting out the other ranks'
    # probes of the same lock)
    RunLock(run_dir).check_free(wait=True)
    stamp = file_stamp(last)  # train_run checks it again once it holds the lock
    state = load_checkpoint(last)
    _refuse_finished(run_dir, state, args.epochs)
    cfg = checkpoint_config(state, last)
    if args.set:  # validated with the new values; an unchanged saved config is not re-checked
        cfg = apply_overrides(cfg, args.set)
    if args.epochs is not None:
        cfg.train.epochs = _resumed_epochs(state, args.epochs)
        check_train_on(cfg)
    if args.device or args.precision:
        cfg.runtime.device = args.device or cfg.runtime.device
        cfg.runtime.precision = args.precision or cfg.runtime.precision
    return run_dir, ResumeFrom(state, stamp), cfg


def _resumed_epochs(state: dict, epochs: int) -> int:
    """--epochs on --resume: not below the epochs the run has already trained."""
    done = int(state.get("train_state", {}).get("epoch", 0))
    if epochs < max(1, done):
        raise BloodMNISTError(
            f"--resume --epochs {epochs}: the run has trained {done} epoch(s) already; pass "
            f"--epochs {max(1, done)} or more, or leave it out"
        )
    return epochs


def _refuse_finished(run_dir: Path, state: dict, epochs: int | None) -> None:
    """A completed run has been tested once; resuming it would test again. Only training on
    past its last epoch (a higher --epochs, not after early stopping) makes a new final test.
    A diverged run would diverge again from the same state."""
    from bloodmnist.atomic import read_json

    summary = run_dir / "summary.json"
    status = read_json(summary).get("status") if summary.is_file() else None
    if status == "diverged":
        raise BloodMNISTError(
            f"--resume: {run_dir} diverged (see its summary.json) and would diverge again; "
            "start a new run with a lower optim.lr"
        )
    if status != "completed":
        return
    done = state.get("train_state", {})
    more = epochs is not None and epochs > done.get("epoch", 0) and not done.get("stopped_early")
    if not more:
        raise BloodMNISTError(
            f"--resume: {run_dir} has finished (summary.json: completed, tested once after "
            f"{done.get('epoch')} epochs); to train further pass a higher --epochs (not after "
            "early stopping), or start a new run with another --out"
        )


def _build_reports(run_dir: Path) -> Any:
    """The reports of a finished run; matplotlib and the rest are imported only when wanted."""
    from bloodmnist.reporting.report import build_reports

    return build_reports(run_dir)


def train(args: argparse.Namespace) -> int:
    resume = None
    if args.resume:
        run_dir, resume, cfg = _resume_state(args)
    else:
        cfg = train_config(args)
    from bloodmnist.data.npz import require_data_path

    require_data_path(cfg.data.path)  # None: the official file, downloaded into the cache
    # Heavy imports only now: a bad config or a missing file fails in seconds, not ten
    from bloodmnist.progress import wants_bars
    from bloodmnist.runtime import cleanup, per_rank_batch, setup_runtime
    from bloodmnist.training.run import train_run

    rt = setup_runtime(cfg.runtime.device, cfg.runtime.precision, cfg.runtime.threads)
    try:
        per_rank_batch(cfg.optim.batch_size, rt.world_size)  # before any folder is made
        if resume is None:
            run_dir = _shared_run_dir(rt, args.out, cfg)
        # Bars only in a terminal: a log file, pipe or nohup gets one line per epoch
        bars = wants_bars(not args.quiet)
        # The CLI orchestrates: training, then the reports (built while the run holds its lock)
        summary = train_run(cfg, rt, run_dir, bars, resume=resume, reports=_build_reports)
        if rt.is_main:
            print(
                json.dumps(
                    {
                        "run_dir": str(run_dir),
                        "test_acc": summary["test_acc"],
                        "test_acc_tta": summary["test_acc_tta"],
                    }
                )
            )
    finally:
        cleanup(rt)
    return 0


def _find_checkpoint(target: Path) -> Path:
    if target.is_dir():
        ckpt = target / "checkpoints" / "best.pt"
        if not ckpt.is_file():
            raise BloodMNISTError(f"{target} has no checkpoints/best.pt; is it a run folder?")
        return ckpt
    return target


def evaluate(args: argparse.Namespace) -> int:
    from bloodmnist.training.checkpoint import (
        checkpoint_config,
        load_checkpoint,
        load_model_weights,
    )

    ckpt_path = _find_checkpoint(Path(args.target))
    if args.json:
        check_new_file(Path(args.json), "--json")  # before the work, not after it
    if args.all_tta and not args.tta:
        raise BloodMNISTError("--all-tta scores the TTA modes: drop --no-tta")
    state = load_checkpoint(ckpt_path)  # a bad checkpoint fails before the heavy imports
    from bloodmnist.data.source import load_data
    from bloodmnist.evaluation.final import evaluate_split
    from bloodmnist.model import model_from_config
    from bloodmnist.progress import wants_bars
    from bloodmnist.runtime import inference_device, setup_runtime

    cfg = checkpoint_config(state, ckpt_path)
    # Inference precision, not the run's: on a CPU `auto` is fp32, so the numbers do not depend
    # on the CPU; evaluate --precision bf16 asks for bf16 explicitly.
    device = inference_device(args.device, cfg.runtime.device)
    rt = setup_runtime(device, args.precision or "auto", args.threads, "inference")
    # Without --data, evaluate exactly what the run saw (its --subset too), so the numbers match
    # summary.json; an explicit --data file is evaluated whole.
    subset = None if args.data else cfg.data.subset
    m = cfg.model
    data, info = load_data(
        args.data or cfg.data.path, cfg.data.size, m.num_classes, subset, model=m
    )
    model = model_from_config(cfg)
    load_model_weights(model, state, ckpt_path)
    model = model.to(rt.device)
    bars = wants_bars(True)  # a live bar per pass in a terminal only
    compare = cfg.eval.compare_tta or args.all_tta
    result = evaluate_split(
        model, data, args.split, cfg, rt, args.tta, compare, bars, every_tta=args.all_tta
    )
    out = {
        "checkpoint": str(ckpt_path),
        "epoch": state["epoch"],
        "split": args.split,
        "data": info.path,
        "data_md5": info.md5,
        "n": result["metrics"]["n"],
        "precision": rt.precision,
        **_metric_fields(result),
    }
    if args.split == "val" and cfg.data.train_on == "train+val":
        out["held_out"] = False
        say(  # stderr: stdout stays the JSON
            "note: this model trained on the validation images (data.train_on=train+val): "
            "these numbers are not held out"
        )
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        write_text_new(Path(args.json), text + "\n", "--json")
    return 0


def _metric_fields(result: dict[str, Any]) -> dict[str, Any]:
    """acc/macro_f1/auc plain, with the run's own TTA (`_tta`) and with the other TTA mode beside
    it (`_tta_<mode>`: choose a mode on --split val), and the per-class table."""
    from bloodmnist.evaluation.final import TTA_MODES

    out: dict[str, Any] = {"tta_mode": result["tta_mode"]} if "tta_mode" in result else {}
    others = [(f"metrics_tta_{mode}", f"_tta_{mode}") for mode in TTA_MODES]
    for key, label in (("metrics", ""), ("metrics_tta", "_tta"), *others):
        if key in result:
            m = result[key]
            out.update({f"{name}{label}": m[name] for name in ("acc", "macro_f1", "auc")})
    out["per_class"] = result.get("metrics_tta", result["metrics"])["per_class"]
    return out


def report(args: argparse.Namespace) -> int:
    from bloodmnist.reporting.report import build_reports

    paths = build_reports(Path(args.run_dir))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
