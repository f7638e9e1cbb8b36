"""`bloodmnist` command line: train, evaluate, report, data."""

from __future__ import annotations

import argparse

from bloodmnist import __version__
from bloodmnist.cli import parsers
from bloodmnist.cli.console import say
from bloodmnist.errors import BloodMNISTError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bloodmnist",
        description="Train, evaluate and serve blood-cell classifiers on BloodMNIST.",
    )
    parser.add_argument("--version", action="version", version=f"bloodmnist {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    parsers.train_parser(sub)
    parsers.evaluate_parser(sub)
    parsers.report_parser(sub)
    parsers.data_parser(sub)
    parsers.predict_parser(sub)
    parsers.export_parser(sub)
    parsers.study_parser(sub)
    parsers.compare_parser(sub)
    parsers.ensemble_parser(sub)
    parsers.serve_parser(sub)
    parsers.explain_parser(sub)
    parsers.tune_parsers(sub)
    # No option abbreviations: `study` forwards options it does not know to `train`, where
    # `--res X` would otherwise silently mean --resume (and slip past study's own checks).
    for p in (parser, *sub.choices.values()):
        p.allow_abbrev = False
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("study", "tune"):  # they forward the rest to train
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.train_args = extra
    from bloodmnist.cli import (
        commands,
        data_commands,
        infer_commands,
        serve_commands,
        study_commands,
        tune_commands,
    )
    from bloodmnist.cli.ensemble_commands import ensemble

    handler = {
        "train": commands.train,
        "evaluate": commands.evaluate,
        "report": commands.report,
        "data": data_commands.data,
        "predict": infer_commands.predict,
        "export": infer_commands.export,
        "study": study_commands.study,
        "compare": study_commands.compare,
        "ensemble": ensemble,
        "serve": serve_commands.serve,
        "explain": serve_commands.explain,
        "tune": tune_commands.tune,
        "runs": tune_commands.runs,
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
