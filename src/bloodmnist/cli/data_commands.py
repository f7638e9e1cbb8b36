"""`bloodmnist data ACTION`: download, verify, info, build and audit."""

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
    return check(args)


def check(args: argparse.Namespace) -> int:
    """download, verify and info: the file resolve_data settles on, described as JSON."""
    from bloodmnist.data.npz import describe, load_npz
    from bloodmnist.data.source import resolve_data
    from bloodmnist.progress import wants_bars

    if args.action == "download":
        info = resolve_data(None, args.size, progress=wants_bars(True))  # bar: terminals only
        print(json.dumps(info.as_dict(), indent=2))
        return 0
    info = resolve_data(args.data, args.size, progress=wants_bars(True))
    ds = load_npz(info.path)
    if args.action == "info":
        print(json.dumps({**describe(ds), "md5": info.md5, "official": info.official}, indent=2))
        return 0
    # resolve_data compared the file with the official one of its own image size
    result = {"path": info.path, "md5": info.md5, "expected_md5": info.official_md5}
    result |= {"official": info.official, "valid_npz": True}
    result["sizes"] = {s: len(ds.split(s)) for s in ("train", "val", "test")}
    print(json.dumps(result, indent=2))
    if args.official and not info.official:  # a valid file, but not the one that was asked for
        raise DataError(
            f"{info.path} is a valid dataset file but not the official BloodMNIST one "
            f"(MD5 {info.md5}, official {info.official_md5}); drop --official to accept it"
        )
    return 0


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
