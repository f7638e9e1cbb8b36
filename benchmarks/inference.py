"""CPU inference benchmark: PyTorch fp32, PyTorch bf16 (autocast) and ONNX Runtime in one run.

Measures single-image latency (p50, p95 over --iters calls, batch 1, after --warmup calls) and
batch throughput (images/s at --batch) of the adapted ResNet-18 on model-ready inputs (decoding
and preprocessing are timed separately, for one raw 360x363 PBC JPEG with the medmnist recipe).

    .venv/bin/python benchmarks/inference.py --data ../shared/data/bloodmnist_pbc_28.npz \
        --threads 1 2 --json /tmp/inference.json

Weights do not change the timings; without --checkpoint a freshly initialised model is used.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bloodmnist.config import Config, from_dict
from bloodmnist.data.loader import Normalizer, to_tensor
from bloodmnist.inference.export import export_graph
from bloodmnist.inference.preprocess import load_image, normalize
from bloodmnist.model import build_model, model_from_config
from bloodmnist.runtime import host_info, setup_runtime
from bloodmnist.training.checkpoint import load_checkpoint, load_model_weights


def percentiles(fn: Callable[[], object], iters: int, warmup: int) -> dict[str, float]:
    """Wall-clock p50/p95/mean (ms) of `iters` calls after `warmup` untimed calls, plus the
    p50 CPU time of this process per call (all threads): on a shared machine wall time includes
    waiting for a core, CPU time does not, so the pair shows how much the load costs."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(iters):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    arr = np.asarray(wall)
    return {
        "p50_ms": float(np.percentile(arr, 50)),
        "p95_ms": float(np.percentile(arr, 95)),
        "mean_ms": float(arr.mean()),
        "cpu_p50_ms": float(np.percentile(cpu, 50)),
        "iters": iters,
    }


def throughput(fn: Callable[[], object], batch: int, iters: int) -> float:
    fn()  # warm-up: primitive creation for this batch shape
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return batch * iters / (time.perf_counter() - t0)


def load_model(checkpoint: str | None) -> tuple[torch.nn.Module, Config]:
    if checkpoint is None:
        return build_model("resnet18", 8).eval(), Config()
    state = load_checkpoint(checkpoint)
    cfg = from_dict(state["config"])
    model = model_from_config(cfg)
    load_model_weights(model, state, checkpoint)
    return model.eval(), cfg


def sample_images(data: str | None, n: int) -> np.ndarray:
    if data is None:
        return np.random.default_rng(0).integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
    images = np.load(data)["test_images"]
    return images[np.arange(n) % len(images)]


def bench_torch(model, cfg, images, precision: str, threads: int, args) -> dict:
    rt = setup_runtime("cpu", precision, threads)
    net = model.to(memory_format=torch.channels_last)
    norm = Normalizer(cfg.data.mean, cfg.data.std, rt.device, rt.channels_last)
    one = norm(to_tensor(images[:1], rt.device))
    many = norm(to_tensor(images[: args.batch], rt.device))

    def run(x):
        with torch.no_grad(), rt.autocast():
            return net(x)

    slow = precision == "bf16"  # ~10x slower on AVX2-only CPUs: fewer iterations
    iters = args.bf16_iters if slow else args.iters
    lat = percentiles(lambda: run(one), iters, max(3, args.warmup // (10 if slow else 1)))
    tput = throughput(lambda: run(many), args.batch, 1 if slow else args.batch_iters)
    return {"engine": f"PyTorch {precision}", "threads": rt.threads, **lat, "img_per_s": tput}


def bench_ort(onnx_path: Path, cfg, images, threads: int, args) -> dict:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    one = normalize(images[:1], cfg.data.mean, cfg.data.std)
    many = normalize(images[: args.batch], cfg.data.mean, cfg.data.std)
    lat = percentiles(lambda: sess.run(["probs"], {"input": one}), args.iters, args.warmup)
    tput = throughput(lambda: sess.run(["probs"], {"input": many}), args.batch, args.batch_iters)
    return {"engine": "ONNX Runtime fp32", "threads": threads, **lat, "img_per_s": tput}


def bench_preprocess(pbc: Path, args) -> dict | None:
    files = sorted(pbc.rglob("*.jpg"))[:1] if pbc.is_dir() else []
    if not files:
        return None
    lat = percentiles(lambda: load_image(files[0], 28, "medmnist"), args.iters, args.warmup)
    return {"engine": "preprocess (decode + medmnist, 360x363 JPEG)", "threads": 1, **lat}


def markdown(rows: list[dict]) -> str:
    lines = [
        "| engine | threads | p50 ms | p95 ms | CPU ms/call (p50) | img/s at batch |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        tput = f"{r['img_per_s']:.0f}" if "img_per_s" in r else "-"
        lines.append(
            f"| {r['engine']} | {r['threads']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} "
            f"| {r['cpu_p50_ms']:.2f} | {tput} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="bloodmnist checkpoint (default: fresh model)")
    p.add_argument("--data", help="npz whose test images are the inputs (default: random)")
    p.add_argument("--pbc", default="../shared/data/pbc_sample", help="raw JPEG folder")
    p.add_argument("--threads", type=int, nargs="+", default=[0], help="0: all cores")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--bf16-iters", type=int, default=20)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batch-iters", type=int, default=3)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    load_before = os.getloadavg()
    model, cfg = load_model(args.checkpoint)
    images = sample_images(args.data, args.batch)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_graph(model, onnx_path, cfg.data.size)
        for threads in args.threads:
            rows.append(bench_torch(model, cfg, images, "fp32", threads, args))
            rows.append(bench_torch(model, cfg, images, "bf16", threads, args))
            rows.append(bench_ort(onnx_path, cfg, images, rows[-1]["threads"], args))
    pre = bench_preprocess(Path(args.pbc), args)
    rows += [pre] if pre else []
    rt = setup_runtime("cpu", "fp32")
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": host_info(rt)["cpu"],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "batch": args.batch,
        "loadavg_1_5_15_before": [round(v, 2) for v in load_before],
        "loadavg_1_5_15_after": [round(v, 2) for v in os.getloadavg()],
        "cores": len(os.sched_getaffinity(0)),
    }
    print(json.dumps(meta))
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
