"""The exported ONNX graphs with and without the recipe's TTA (`bloodmnist export [--tta]`):
accuracy on a whole split through ONNX Runtime, beside the run's own (PyTorch) numbers, and
throughput of each graph, measured in one process.

    .venv/bin/python benchmarks/onnx_tta.py runs/c2_s42 runs/c2_s43 runs/c2_s44 \
        --threads 1 --json docs/results/onnx-tta-cpu.json

This checks exported artefacts; nothing is chosen with it. The run's test numbers come from its
summary.json (its precision, bf16 on a bf16 CPU); the graphs run fp32, so a few images may
differ.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bloodmnist.data.source import load_data
from bloodmnist.inference.engines import OnnxEngine
from bloodmnist.inference.export import export_checkpoint
from bloodmnist.runtime import host_info, setup_runtime
from bloodmnist.training.checkpoint import checkpoint_config, load_checkpoint


def score(engine: OnnxEngine, images: np.ndarray, labels: np.ndarray, batch: int) -> dict:
    """Accuracy of the engine's argmax over the split, and its images per second."""
    t0 = time.perf_counter()
    probs = np.concatenate(
        [engine.probs(images[i : i + batch]) for i in range(0, len(images), batch)]
    )
    seconds = time.perf_counter() - t0
    return {
        "acc": float((probs.argmax(1) == labels).mean()),
        "img_per_s": round(len(images) / seconds, 1),
    }


def one_run(run: Path, args: argparse.Namespace, folder: Path) -> dict:
    """Export both graphs of one run into `folder` and score them on `args.split`."""
    split, threads, batch, parity = args.split, args.threads, args.batch, args.parity_images
    cfg = checkpoint_config(load_checkpoint(run / "checkpoints" / "best.pt"))
    data, _ = load_data(cfg.data.path, cfg.data.size, cfg.model.num_classes, None, progress=False)
    part = data.split(split)
    labels = part.labels.reshape(-1)
    summary = json.loads((run / "summary.json").read_text())
    row: dict = {"run": str(run), "tta_mode": cfg.eval.tta_mode, "split": split}
    for name, tta in (("plain", False), ("tta", True)):
        out = folder / f"{run.name}-{name}.onnx"
        report = export_checkpoint(run, out, parity_images=parity, tta=tta)
        row[name] = score(OnnxEngine(out, threads=threads), part.images, labels, batch)
        row[name]["parity"] = report["parity"]
        row[name]["file_mb"] = round(out.stat().st_size / 2**20, 2)
    key = "test_acc" if split == "test" else "val_acc"
    row["run_acc"], row["run_acc_tta"] = summary.get(key), summary.get(f"{key}_tta")
    row["run_precision"] = summary.get("precision")
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished run folders")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (0: all)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--parity-images", type=int, default=1024, help="export's parity check")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one_run(r, args, Path(tmp)) for r in args.runs]
    for r in rows:
        ratio = r["plain"]["img_per_s"] / r["tta"]["img_per_s"]
        print(
            f"{r['run']}: ONNX plain {r['plain']['acc']:.4f} (run {r['run_acc']}), "
            f"ONNX TTA {r['tta']['acc']:.4f} (run {r['run_acc_tta']}); "
            f"{r['plain']['img_per_s']:.0f} vs {r['tta']['img_per_s']:.0f} img/s ({ratio:.1f}x)"
        )
    record = {
        "command": "python benchmarks/onnx_tta.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": host_info(setup_runtime("cpu", "fp32")) | {"python": platform.python_version()},
        "threads": args.threads,
        "rows": rows,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
