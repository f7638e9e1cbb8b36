"""Bodies of `bloodmnist predict` and `bloodmnist export`.

`predict` on an .onnx model must not import torch: everything torch-related is imported lazily
inside `open_engine` (checkpoints only) and `export`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bloodmnist.atomic import write_text_new
from bloodmnist.cli.console import say
from bloodmnist.inference.engines import open_engine
from bloodmnist.inference.inputs import expand_inputs
from bloodmnist.inference.predict import (
    PredictOptions,
    check_options,
    check_out,
    predict_paths,
    render,
)
from bloodmnist.progress import wants_bars


def predict(args: argparse.Namespace) -> int:
    """Classify files; exit 1 when any file got an error row (the rest are still written)."""
    out = Path(args.out).expanduser() if args.out else None
    fmt = check_out(out)
    paths = expand_inputs(args.inputs)
    engine = open_engine(
        args.model, args.device, args.precision, args.threads, calibrated=not args.uncalibrated
    )
    opts = PredictOptions(
        preprocess=args.preprocess,
        top_k=args.top_k,
        tta=args.tta,
        batch_size=args.batch_size,
        progress=wants_bars(not args.quiet),  # a terminal only: no bar characters in logs
    )
    check_options(engine, opts)
    rows = predict_paths(engine, paths, opts)
    info = engine.info
    header = {
        "model": info.source,
        "engine": info.kind,
        "precision": info.precision,
        "input_size": info.input_size,
        "preprocess": args.preprocess,
        "tta": args.tta or info.tta_baked is not None,  # a graph exported with --tta: always
        "temperature": info.applied_temperature(args.tta),  # None: the raw softmax
        "class_names": info.class_names,
    }
    text = render(rows, info.class_names, fmt, header)
    if out is None:
        sys.stdout.write(text)
    else:
        write_text_new(out, text, "--out")  # never over a file created since check_out
    failed = [r for r in rows if r["status"] != "ok"]
    where = f" -> {out}" if out else ""
    t = header["temperature"]
    calib = f" (probabilities at the model's temperature T={t:.3g})" if t is not None else ""
    done = f"{len(rows) - len(failed)} of {len(rows)} files classified"
    say(f"bloodmnist predict: {done}{calib}{where}")
    for row in failed:
        say(f"bloodmnist predict: error: {row['path']}: {row['error']}")
    return 1 if failed else 0


def export(args: argparse.Namespace) -> int:
    from bloodmnist.inference.export import export_checkpoint

    result = export_checkpoint(args.model, args.out, args.data, args.parity_images, args.tta)
    print(json.dumps(result, indent=2))
    return 0
