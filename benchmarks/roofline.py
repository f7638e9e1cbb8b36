"""How close the model runs to this machine's arithmetic ceiling, and what the speed targets need.

    python benchmarks/roofline.py [--data FILE.npz] [--rounds 3] [--threads N]

Counts the FLOPs of one training step and of one forward pass per image with
torch.utils.flop_counter, then measures in ONE process, alternating so that background load hits
all alike: the reference pipeline's training step (as in throughput.py); the dense kernels this
machine runs fastest (a large square matmul, and each of the model's own 3x3 convolutions alone,
forward, at the training batch: the best of them is the practical ceiling for dense work at this
precision); the model's training step on a fixed batch (forward, backward, SGD) and its forward
pass in eval mode. It prints the GFLOP/s each achieves, each as a share of that ceiling, and
what issue #3's targets would need, in GFLOP/s and as a multiple of the ceiling. A target near
or above 1.0x needs the whole model, BatchNorm, ReLU, backward and optimiser included, to run at
the rate of its single best kernel: no data path or scheduling reaches that on this machine at
this precision; only fewer FLOPs (a different model) or faster hardware can.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_pipeline as ref  # noqa: E402
from bloodmnist.config import DataConfig  # noqa: E402
from bloodmnist.data.npz import load_npz  # noqa: E402
from bloodmnist.model import build_model  # noqa: E402
from bloodmnist.model.flops import flops_per_image as model_flops  # noqa: E402
from bloodmnist.runtime import Runtime, host_info, setup_runtime  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bloodmnist_pbc_28.npz"

# Issue #3's targets, and the split sizes they are stated for.
TRAIN_N, VAL_N, TEST_N, TTA_VIEWS, EPOCHS = 11959, 1712, 3421, 7, 60
TARGET_SPEEDUP_TRAIN, TARGET_TTA_S, TARGET_RUN_S = 2.2, 10.0, 55 * 60


def flops_per_image(rt: Runtime) -> dict[str, float]:
    """FLOPs (multiply and add counted apart) of the reference model's training step and forward
    pass, per image: the package's counter (bloodmnist.model.flops), as `train_pflop` uses."""
    return model_flops(build_model("resnet18", 8), 28)


def _best_seconds(fn: Callable[[], object], repeat: int) -> float:
    """Fastest of `repeat` calls: the least disturbed by other processes."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


#: (channels, height = width) of the 3x3 stride-1 convolutions in the adapted ResNet-18.
MODEL_CONVS = ((64, 28), (128, 14), (256, 7), (512, 4))


def conv_kernels(rt: Runtime, batch: int) -> dict[str, tuple[float, Callable[[], None]]]:
    """name -> (FLOPs, callable) for each of the model's 3x3 convolutions, forward only."""
    fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
    out = {}
    for ch, hw in MODEL_CONVS:
        conv = torch.nn.Conv2d(ch, ch, 3, padding=1, bias=False).to(rt.device, memory_format=fmt)
        x = torch.randn(batch, ch, hw, hw, device=rt.device).to(memory_format=fmt)

        @torch.no_grad()
        def run(conv=conv, x=x) -> None:
            with rt.autocast():
                conv(x)
            if rt.device.type == "cuda":
                torch.cuda.synchronize()

        out[f"conv3x3 {ch}ch {hw}x{hw}"] = (2 * batch * hw * hw * ch * ch * 9, run)
    return out


def make_workloads(rt: Runtime, batch: int, size: int) -> tuple[Callable[[], None], ...]:
    """Three callables: one matmul of size^3, one training step, one forward pass of `batch`."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(rt.precision, torch.float32)
    a = torch.randn(size, size, device=rt.device, dtype=dtype)
    b = torch.randn(size, size, device=rt.device, dtype=dtype)
    fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
    model = build_model("resnet18", 8).to(rt.device, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 28, 28, device=rt.device).to(memory_format=fmt)
    y = torch.randint(0, 8, (batch,), device=rt.device)
    sync = torch.cuda.synchronize if rt.device.type == "cuda" else (lambda: None)

    def matmul() -> None:
        torch.mm(a, b)
        sync()

    def train_step() -> None:
        model.train()
        with rt.autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()

    @torch.no_grad()
    def forward() -> None:
        model.eval()
        with rt.autocast():
            model(x)
        sync()

    return matmul, train_step, forward


def reference_step(data_path: str, batch: int, rt: Runtime, steps: int = 2):
    """A callable timing `steps` steps of the reference pipeline (per-image PIL transforms in a
    4-worker DataLoader, fp32, NCHW); its workers start outside the timed steps."""
    train = load_npz(data_path).train
    d = DataConfig()
    loader = ref.train_loader(train.images, train.labels, batch, d.mean, d.std, seed=42)
    model = build_model("resnet18", 8).to(rt.device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)

    def seconds_per_step() -> float:
        running = ref.RunningLoader(loader)
        t0 = time.perf_counter()
        ref.train_steps(model, running, opt, steps, rt.device)
        took = time.perf_counter() - t0
        running.close()  # its idle workers must not compete with the next kernel
        return took / steps

    return seconds_per_step


def measure(rt: Runtime, data_path: str, batch: int, size: int, rounds: int) -> dict:
    """Best GFLOP/s of each dense kernel, the training step and the forward pass, and the
    reference pipeline's training img/s, over alternating rounds; the ceiling is the fastest
    dense kernel."""
    flops = flops_per_image(rt)
    reference = reference_step(data_path, batch, rt)
    reference()  # warm-up
    ref_best = float("inf")
    matmul, train_step, forward = make_workloads(rt, batch, size)
    kernels = {f"matmul {size}^3": (2 * size**3, matmul), **conv_kernels(rt, batch)}
    kernels["model training step"] = (batch * flops["train"], train_step)
    kernels["model forward (eval)"] = (batch * flops["forward"], forward)
    for _, fn in kernels.values():  # warm-up: kernel selection, allocator
        fn()
    best = dict.fromkeys(kernels, float("inf"))
    for _ in range(rounds):
        ref_best = min(ref_best, reference())
        for name, (_, fn) in kernels.items():
            best[name] = min(best[name], _best_seconds(fn, 2))
    gflop_s = {name: kernels[name][0] / best[name] / 1e9 for name in kernels}
    dense = {k: v for k, v in gflop_s.items() if not k.startswith("model")}
    return {
        "gflop_per_img_train": flops["train"] / 1e9,
        "gflop_per_img_forward": flops["forward"] / 1e9,
        "ceiling_gflop_s": max(dense.values()),
        "ceiling_kernel": max(dense, key=dense.get),
        "kernel_gflop_s": dense,
        "train_img_s": batch / best["model training step"],
        "train_gflop_s": gflop_s["model training step"],
        "forward_img_s": batch / best["model forward (eval)"],
        "forward_gflop_s": gflop_s["model forward (eval)"],
        "reference_train_img_s": batch / ref_best,
    }


def targets(r: dict[str, float]) -> dict[str, float]:
    """GFLOP/s each issue #3 target needs, from the FLOP counts and the reference's img/s; and
    the training speed-up over the reference if our step ran at the ceiling."""
    tr, fw = r["gflop_per_img_train"], r["gflop_per_img_forward"]
    run_gflop = EPOCHS * (TRAIN_N * tr + VAL_N * fw) + TTA_VIEWS * TEST_N * fw
    return {
        "speedup_train_at_ceiling": r["ceiling_gflop_s"] / tr / r["reference_train_img_s"],
        "need_gflop_s_speedup_train": TARGET_SPEEDUP_TRAIN * r["reference_train_img_s"] * tr,
        "need_gflop_s_tta_10s": TTA_VIEWS * TEST_N * fw / TARGET_TTA_S,
        "need_gflop_s_run_55min": run_gflop / TARGET_RUN_S,
    }


def table(r: dict, need: dict[str, float]) -> str:
    ceiling = r["ceiling_gflop_s"]
    rows = [(name, v, "") for name, v in r["kernel_gflop_s"].items()]
    ref_gflop_s = r["reference_train_img_s"] * r["gflop_per_img_train"]
    rows += [
        (
            "reference pipeline training step",
            ref_gflop_s,
            f"{r['reference_train_img_s']:.1f} img/s",
        ),
        ("model training step", r["train_gflop_s"], f"{r['train_img_s']:.1f} img/s"),
        ("model forward (eval)", r["forward_gflop_s"], f"{r['forward_img_s']:.1f} img/s"),
        ("NEED: speedup_train >= 2.2", need["need_gflop_s_speedup_train"], ""),
        ("NEED: TTA of the test split <= 10 s", need["need_gflop_s_tta_10s"], ""),
        ("NEED: 60-epoch recipe <= 55 min", need["need_gflop_s_run_55min"], ""),
    ]
    lines = [f"{'':38} {'GFLOP/s':>9} {'x ceiling':>9}", "-" * 72]
    for name, value, extra in rows:
        lines.append(f"{name:38} {value:9.1f} {value / ceiling:9.2f}  {extra}")
    per = f"{r['gflop_per_img_train']:.3f} (train step), {r['gflop_per_img_forward']:.3f} (forward)"
    head = f"GFLOP per image: {per}; ceiling = fastest dense kernel ({r['ceiling_kernel']})"
    best = need["speedup_train_at_ceiling"]
    tail = f"speedup_train if our whole step ran at the ceiling: {best:.2f}x"
    return "\n".join([head, *lines, tail])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), metavar="FILE.npz")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (best is kept)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    args = p.parse_args(argv)
    if not Path(args.data).is_file():
        sys.exit(f"roofline.py: error: data file {args.data} not found; pass --data FILE.npz")
    rt = setup_runtime(args.device, args.precision, args.threads)
    load0 = os.getloadavg()[0]
    print(f"runtime: {rt.describe()}  batch {args.batch}", flush=True)
    r = measure(rt, args.data, args.batch, args.matmul_size, args.rounds)
    need = targets(r)
    print(table(r, need))
    info = host_info(rt)
    out = {
        **r,
        **need,
        "train_share_of_ceiling": r["train_gflop_s"] / r["ceiling_gflop_s"],
        "device": str(info["gpu"] or info["cpu"]),
        "precision": rt.precision,
        "threads": rt.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    print(f"load average (1 min) at start/end: {out['loadavg_start_end']}")
    print(json.dumps(_round(out)))
    return out


def _round(o: object) -> object:
    """Floats to 3 decimals, nested ones too, for the JSON line."""
    if isinstance(o, float):
        return round(o, 3)
    if isinstance(o, dict):
        return {k: _round(v) for k, v in o.items()}
    return o


if __name__ == "__main__":
    main()
