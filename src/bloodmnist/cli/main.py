"""`bloodmnist` command line: train, evaluate, report, data."""

from __future__ import annotations

import argparse

from bloodmnist import __version__
from bloodmnist.cli.console import say
from bloodmnist.errors import BloodMNISTError


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None)


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train the adapted ResNet-18 (reference recipe by default)")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML config (sections as in config.yaml)")
    p.add_argument(
        "--recipe",
        choices=["reference", "fast"],
        default=None,
        help="base settings under --config/flags/--set: reference (default) or fast (one-cycle "
        "LR, horizontal and vertical flips, label smoothing; 3 epochs for small CPUs)",
    )
    p.add_argument("--data", metavar="FILE.npz", help="local BloodMNIST npz (never modified)")
    p.add_argument("--out", metavar="DIR", help="run folder (default runs/<time>-<name>/)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    _add_runtime(p)
    p.add_argument("--pretrained", metavar="auto|none|PATH")
    p.add_argument("--subset", type=int, metavar="N", help="keep the first N samples per split")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field by dotted name, e.g. optim.lr=0.01",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its checkpoints/last.pt",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint or run folder")
    p.add_argument("target", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--data", metavar="FILE.npz")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--json", metavar="FILE", help="also write the metrics to FILE (new file)")
    _add_runtime(p)


def _report_parser(sub) -> None:
    p = sub.add_parser("report", help="rebuild figures, report.xlsx and report.html")
    p.add_argument("run_dir", metavar="RUN_DIR")


def _data_parser(sub) -> None:
    p = sub.add_parser("data", help="download, verify or describe BloodMNIST")
    p.add_argument("action", choices=["download", "verify", "info"])
    p.add_argument("--size", type=int, choices=[28, 64, 128, 224], default=28)
    p.add_argument("--data", metavar="FILE.npz", help="check this file instead of the cache")


def _predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="classify image files with a checkpoint or .onnx model")
    p.add_argument("model", metavar="MODEL", help="run folder, .pt checkpoint or exported .onnx")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders (recursive), globs")
    p.add_argument(
        "--out", metavar="FILE.csv|FILE.json", help="new results file (default: CSV on stdout)"
    )
    p.add_argument("--tta", action="store_true", help="average the 7 TTA views (PyTorch models)")
    p.add_argument("--top-k", type=int, default=3, metavar="K")
    p.add_argument(
        "--preprocess",
        choices=["auto", "medmnist", "resize", "none"],
        default="auto",
        help="medmnist: BloodMNIST recipe for raw smear crops; auto: medmnist for images larger "
        "than twice the input size, else resize",
    )
    p.add_argument("--batch-size", type=int, default=64, metavar="N")
    p.add_argument("--threads", type=int, default=0, metavar="N", help="CPU threads (0: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_runtime(p)


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX after a parity check")
    p.add_argument("model", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", metavar="FILE.onnx", help="new file (default RUN_DIR/model.onnx)")
    p.add_argument("--data", metavar="FILE.npz", help="test images for the parity check")
    p.add_argument("--parity-images", type=int, default=1024, metavar="N")


def _study_parser(sub) -> None:
    p = sub.add_parser(
        "study",
        help="train one run per seed, then mean ± std, bootstrap CIs and a study report",
        description="Any other option is passed to every seed's `bloodmnist train` "
        "(e.g. --data, --epochs, --subset, --set KEY=VALUE).",
        allow_abbrev=False,  # --seed must not silently become --seeds
    )
    p.add_argument("--seeds", metavar="S1,S2,...", help="seeds, one training each (e.g. 42,43,44)")
    p.add_argument("--jobs", type=_positive_int, help="seeds trained in parallel (default 1)")
    p.add_argument("--out", metavar="DIR", help="study folder (default runs/<time>-study/)")
    p.add_argument("--resume", metavar="STUDY_DIR", help="continue an unfinished study")
    p.add_argument(
        "--adopt",
        action="append",
        metavar="RUN_DIR",
        help="a run trained earlier with the study's options stands for its seed (repeatable; "
        "linked, never moved or modified)",
    )
    _add_bootstrap(p)


def _add_bootstrap(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--n-boot", type=_positive_int, default=1000, help="bootstrap resamples (default 1000)"
    )
    p.add_argument("--boot-seed", type=int, default=0, help="bootstrap RNG seed (default 0)")


def _compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="paired comparison of two runs or studies on one test set")
    p.add_argument("a", metavar="RUN_OR_STUDY_A")
    p.add_argument("b", metavar="RUN_OR_STUDY_B")
    p.add_argument(
        "--variant",
        choices=["auto", "plain", "tta"],
        default="auto",
        help="test predictions to compare (auto: TTA when both have it)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the result to FILE (new file)")
    _add_bootstrap(p)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expects a whole number >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bloodmnist",
        description="Train, evaluate and serve blood-cell classifiers on BloodMNIST.",
    )
    parser.add_argument("--version", action="version", version=f"bloodmnist {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _evaluate_parser(sub)
    _report_parser(sub)
    _data_parser(sub)
    _predict_parser(sub)
    _export_parser(sub)
    _study_parser(sub)
    _compare_parser(sub)
    # No option abbreviations: `study` forwards options it does not know to `train`, where
    # `--res X` would otherwise silently mean --resume (and slip past study's own checks).
    for p in (parser, *sub.choices.values()):
        p.allow_abbrev = False
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "study":  # only study forwards unknown options (to train)
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.train_args = extra
    from bloodmnist.cli import commands, infer_commands, study_commands

    handler = {
        "train": commands.train,
        "evaluate": commands.evaluate,
        "report": commands.report,
        "data": commands.data,
        "predict": infer_commands.predict,
        "export": infer_commands.export,
        "study": study_commands.study,
        "compare": study_commands.compare,
    }[args.command]
    try:
        return handler(args)
    except BloodMNISTError as exc:
        say(f"bloodmnist {args.command}: error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        say(f"bloodmnist {args.command}: interrupted")
        return 130
    except OSError as exc:  # disk full, permissions, read-only folders: the OS's reason, one line
        where = f" {exc.filename}" if exc.filename else ""
        say(
            f"bloodmnist {args.command}: error:{where} {exc.strerror or exc}; check free space "
            "and permissions"
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
