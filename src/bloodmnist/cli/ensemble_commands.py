"""Body of `bloodmnist ensemble` (parser in cli/main.py)."""

from __future__ import annotations

import argparse
import json

from bloodmnist.cli.console import say


def ensemble(args: argparse.Namespace) -> int:
    """Check the members (before any output exists), then write the ensemble folder."""
    from bloodmnist.ensembles.build import check_out, load_member_data, write_ensemble
    from bloodmnist.ensembles.members import load_members
    from bloodmnist.runtime import setup_runtime
    from bloodmnist.training.rundir import setup_logging

    setup_logging(None, verbose=not args.quiet)
    members = load_members(args.runs)
    out = check_out(args.out)
    data, info = load_member_data(members, args.data)
    rt = setup_runtime(args.device or "auto", args.precision or "auto", args.threads, "inference")
    say(f"ensemble: {len(members)} members -> {out}")
    summary = write_ensemble(members, out, data, info, rt)
    if args.reports:
        from bloodmnist.reporting.report import build_reports

        build_reports(out)
    keys = ("test_acc", "test_acc_tta", "test_macro_f1", "test_auc", "val_acc", "val_acc_tta")
    print(json.dumps({"ensemble_dir": str(out), **{k: summary.get(k) for k in keys}}, indent=2))
    return 0
