"""`bloodmnist data build` and `bloodmnist data audit`; the other data actions live in
`cli.commands.data`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from bloodmnist.cli.console import say
from bloodmnist.errors import DataError


def data(args: argparse.Namespace) -> int:
    """Dispatch `bloodmnist data ACTION`."""
    if args.action == "build":
        return build(args)
    if args.action == "audit":
        return audit(args)
    from bloodmnist.cli import commands

    return commands.data(args)


def build(args: argparse.Namespace) -> int:
    from bloodmnist.data.build import build_dataset
    from bloodmnist.data.build_sources import parse_fractions, parse_labels

    # The skipped files are reported as warnings on stderr, one line each.
    logging.basicConfig(level=logging.WARNING, format="bloodmnist data build: %(message)s")
    result = build_dataset(
        args.src,
        args.out,
        size=args.size,
        fractions=parse_fractions(args.split),
        seed=args.seed,
        labels=parse_labels(args.labels),
        strict=args.strict,
        method=args.preprocess,
    )
    print(json.dumps(result.as_dict(), indent=2))
    if result.skipped:
        say(f"bloodmnist data build: {len(result.skipped)} file(s) skipped (listed above)")
    return 0


def audit(args: argparse.Namespace) -> int:
    from bloodmnist.atomic import write_text_atomic
    from bloodmnist.data.audit import audit as run_audit
    from bloodmnist.data.npz import load_npz
    from bloodmnist.reporting.audit_page import write_audit_html

    src = Path(args.file).expanduser()
    out = Path(args.out).expanduser() if args.out else src.with_name(f"{src.stem}_audit")
    if out.exists() and not out.is_dir():  # found only after the audit's minutes otherwise
        raise DataError(f"{out} is a file, not a folder; choose another --out")
    targets = [out / "audit.json", out / "audit.html"]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise DataError(f"{existing[0]} already exists; choose another --out or delete it")
    ds = load_npz(src)
    result = run_audit(ds, near_rms=args.near_rms)
    out.mkdir(parents=True, exist_ok=True)
    try:  # never over a file another process may have written since the check above
        write_text_atomic(targets[0], json.dumps(result, indent=1) + "\n", exclusive=True)
        try:
            write_audit_html(result, ds, targets[1], exclusive=True)
        except FileExistsError:
            targets[0].unlink()  # the JSON this call has just written: no half of the pair
            raise
    except FileExistsError as exc:
        raise DataError(f"{exc}; choose another --out") from None
    summary = {
        "json": str(targets[0]),
        "html": str(targets[1]),
        "exact_duplicate_groups": result["exact_duplicates"]["n_groups"],
        "near_duplicate_pairs": result["near_duplicates"]["n_pairs"],
        "cross_label_pairs": result["cross_label"]["n_pairs"],
        "leakage": {k: v["images"] for k, v in result["leakage"].items()},
    }
    print(json.dumps(summary, indent=2))
    sys.stdout.flush()
    return 0
