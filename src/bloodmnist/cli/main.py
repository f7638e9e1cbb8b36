"""`bloodmnist` command line: train, evaluate, report, data."""

from __future__ import annotations

import argparse
import sys

from bloodmnist import __version__
from bloodmnist.errors import BloodMNISTError


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None)


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train the adapted ResNet-18 (reference recipe by default)")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML config (sections as in config.yaml)")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bloodmnist.cli import commands

    handler = {
        "train": commands.train,
        "evaluate": commands.evaluate,
        "report": commands.report,
        "data": commands.data,
    }[args.command]
    try:
        return handler(args)
    except BloodMNISTError as exc:
        print(f"bloodmnist {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"bloodmnist {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
