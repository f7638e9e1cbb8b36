"""Training, evaluation and TTA throughput: the reference data path vs ours, in ONE process.

    python benchmarks/throughput.py [--data FILE.npz] [--quick]

(a) the reference: per-image PIL transforms in a 4-worker DataLoader, fp32, NCHW (re-created in
reference_pipeline.py); (b) ours: device-resident uint8->float images, batched augmentation,
MixUp, the real `train_one_epoch`, channels_last, the precision runtime.py picks. Both train
the same model from the same initial weights. Measurements alternate (a), (b) and the model
alone, so background load hits all of them alike; the load average is printed with the table.
The last line is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_pipeline as ref  # noqa: E402
from bloodmnist.config import Config  # noqa: E402
from bloodmnist.data.loader import Normalizer, TrainBatches, to_tensor  # noqa: E402
from bloodmnist.data.npz import load_npz  # noqa: E402
from bloodmnist.evaluation.predict import predict_probs  # noqa: E402
from bloodmnist.model import build_model  # noqa: E402
from bloodmnist.runtime import Runtime, host_info, setup_runtime  # noqa: E402
from bloodmnist.training.loop import train_one_epoch  # noqa: E402
from bloodmnist.training.trainer import epoch_generators  # noqa: E402
from timing import peak_rss_mb, ratio, timed  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bloodmnist_pbc_28.npz"


@dataclass
class FixedBatches:
    """The same pre-normalised batch `steps` times: the model alone, no data pipeline."""

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor  # the batch's rows: the loop mixes them to find MixUp partners' labels
    steps: int

    def __len__(self) -> int:
        return self.steps

    @property
    def labels(self) -> torch.Tensor:
        """Labels by row, as TrainBatches has them (the batch's rows are 0..n-1 here)."""
        return self.y

    def epoch(self, epoch: int, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        for _ in range(self.steps):
            yield self.x, self.y, self.idx


def _sgd(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    o = cfg.optim
    return torch.optim.SGD(
        model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
    )


def measure_train(data, cfg: Config, rt: Runtime, reps: int, steps: int) -> dict[str, float]:
    """Alternate reference / ours / model-alone / data-only reps of `steps` steps."""
    n = steps * cfg.optim.batch_size  # images per rep
    runs, loader = _train_variants(data, cfg, rt, steps)
    wall, cpu = _alternate(runs, loader, reps, n, steps)
    return _train_figures(wall, cpu, n, steps)


def _train_variants(data, cfg: Config, rt: Runtime, steps: int) -> tuple[dict, object]:
    """The four timed variants, each `fn(rep, running_reference_loader)`, warmed up once."""
    bs, aug = cfg.optim.batch_size, cfg.augment
    m_ref, m_ours = _model_pair(cfg, rt)
    opt_ref, opt_ours = _sgd(m_ref, cfg), _sgd(m_ours, cfg)
    norm = Normalizer(cfg.data.mean, cfg.data.std, rt.device, rt.channels_last)
    images = to_tensor(data.train.images, rt.device)  # once, as the Trainer does
    labels = torch.from_numpy(data.train.labels).to(rt.device)
    ours = TrainBatches(images[: steps * bs], labels[: steps * bs], bs, aug, norm, cfg.train.seed)
    loader = ref.train_loader(
        data.train.images, data.train.labels, bs, cfg.data.mean, cfg.data.std, cfg.train.seed
    )
    x0, y0, _ = next(ours.epoch(0, torch.Generator(device=rt.device)))
    rows = torch.arange(len(y0), device=y0.device)
    fixed = FixedBatches(x0, y0, rows, steps=steps)

    def run_ours(batches, epoch: int, alpha: float) -> None:
        gen, rng = epoch_generators(cfg.train.seed, epoch, 0, rt.device)
        train_one_epoch(m_ours, batches, opt_ours, rt, epoch, gen, rng, alpha)

    def data_only(epoch: int) -> None:
        gen, _ = epoch_generators(cfg.train.seed, epoch, 0, rt.device)
        for x, _y, _idx in ours.epoch(epoch, gen):
            x.sum().item()  # forces the work on asynchronous devices

    # Warm-up (oneDNN primitive creation, worker imports): one step of each, untimed.
    warm = ref.RunningLoader(loader)
    ref.train_steps(m_ref, warm, opt_ref, 1, rt.device)
    warm.close()
    run_ours(FixedBatches(fixed.x, fixed.y, fixed.idx, 1), 0, 0.0)
    runs = {
        "ref": lambda rep, running: ref.train_steps(m_ref, running, opt_ref, steps, rt.device),
        "ours": lambda rep, _: run_ours(ours, rep, aug.mixup_alpha),
        "model": lambda rep, _: run_ours(fixed, rep, 0.0),
        "data": lambda rep, _: data_only(rep),
    }
    return runs, loader


def _alternate(runs: dict, loader, reps: int, n: int, steps: int) -> tuple[dict, dict]:
    """Wall and CPU seconds of every variant, rep by rep (background load hits all alike)."""
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(1, reps + 1):
        for key, fn in runs.items():
            running = ref.RunningLoader(loader) if key == "ref" else None
            pids = running.worker_pids() if running else None
            w, c = timed(lambda fn=fn, rep=rep, r=running: fn(rep, r), pids)
            if running:
                running.close()
            wall[key].append(w)
            cpu[key].append(c)
        print(
            f"  rep {rep}: img/s reference {n / wall['ref'][-1]:.1f}, ours "
            f"{n / wall['ours'][-1]:.1f}, model alone {n / wall['model'][-1]:.1f}; per CPU-s "
            f"{n / cpu['ref'][-1]:.1f} vs {n / cpu['ours'][-1]:.1f}; "
            f"data {1000 * wall['data'][-1] / steps:.0f} ms/batch",
            flush=True,
        )
    return wall, cpu


def _train_figures(wall: dict, cpu: dict, n: int, steps: int) -> dict[str, float]:
    w = {k: statistics.median(v) for k, v in wall.items()}
    c = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "train_img_s_reference": n / w["ref"],
        "train_img_s_ours": n / w["ours"],
        "train_img_s_model_alone": n / w["model"],
        "speedup_train": ratio(wall["ref"], wall["ours"]),
        "train_img_per_cpu_s_reference": n / c["ref"],
        "train_img_per_cpu_s_ours": n / c["ours"],
        "speedup_train_per_core": ratio(cpu["ref"], cpu["ours"]),
        # two views of "what our data path adds": full step vs model-alone step, and the
        # batch production (index, augment, normalise) timed on its own
        "pipeline_overhead_pct_step": 100 * (ratio(wall["ours"], wall["model"]) - 1),
        "pipeline_overhead_pct_data": 100 * ratio(wall["data"], wall["model"]),
        "data_ms_per_batch": 1000 * w["data"] / steps,
    }


def _model_pair(cfg: Config, rt: Runtime) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same weights twice: fp32 NCHW for the reference, channels_last for ours."""
    ref_model = build_model("resnet18", cfg.model.num_classes).to(rt.device)
    ours = copy.deepcopy(ref_model).to(memory_format=torch.channels_last)
    return ref_model, ours


def measure_eval(data, cfg: Config, rt: Runtime, n: int, rounds: int) -> dict[str, float]:
    """Plain evaluation on the first n validation images, both paths alternating; the best
    round of each."""
    m_ref, m_ours = _model_pair(cfg, rt)
    imgs, labels = data.val.images[:n], data.val.labels[:n]
    mean, std = cfg.data.mean, cfg.data.std
    norm = Normalizer(mean, std, rt.device, rt.channels_last)
    t_ref, t_ours = [], []
    for _ in range(rounds):
        t_ref.append(timed(lambda: ref.evaluate(m_ref, imgs, labels, mean, std, rt.device)))
        x = to_tensor(imgs, rt.device)
        t_ours.append(timed(lambda x=x: predict_probs(m_ours, x, rt, norm, cfg.eval.batch_size)))
    return {
        "eval_img_s_reference": n / min(t[0] for t in t_ref),
        "eval_img_s_ours": n / min(t[0] for t in t_ours),
        "eval_img_per_cpu_s_reference": n / min(t[1] for t in t_ref),
        "eval_img_per_cpu_s_ours": n / min(t[1] for t in t_ours),
    }


def measure_tta(data, cfg: Config, rt: Runtime, n: int, chunk: int = 512) -> dict[str, float]:
    """TTA over the first n test images, alternating chunks of the two paths; seconds scaled
    to the whole test split when n is smaller."""
    m_ref, m_ours = _model_pair(cfg, rt)
    mean, std = cfg.data.mean, cfg.data.std
    norm = Normalizer(mean, std, rt.device, rt.channels_last)
    t_ref, t_ours = np.zeros(2), np.zeros(2)
    for lo in range(0, n, chunk):
        imgs, labels = data.test.images[lo : min(n, lo + chunk)], data.test.labels[lo : lo + chunk]
        t_ref += timed(
            lambda i=imgs, y=labels: ref.tta_per_image(m_ref, i, y, mean, std, rt.device)
        )
        t_ours += timed(  # uint8 -> float conversion included: part of our path
            lambda i=imgs: predict_probs(
                m_ours, to_tensor(i, rt.device), rt, norm, cfg.eval.batch_size, cfg.eval
            )
        )
    scale = len(data.test) / n
    return {
        "tta_s_reference": t_ref[0] * scale,
        "tta_s_ours": t_ours[0] * scale,
        "speedup_tta": t_ref[0] / t_ours[0],
        "tta_cpu_s_reference": t_ref[1] * scale,
        "tta_cpu_s_ours": t_ours[1] * scale,
        "speedup_tta_per_core": t_ref[1] / t_ours[1],
        "tta_images_measured": n,
    }


def _table(r: dict) -> str:
    rows = [
        ("training img/s", "train_img_s", "train_img_per_cpu_s", "speedup_train"),
        ("eval img/s", "eval_img_s", "eval_img_per_cpu_s", None),
        ("TTA s, test split", "tta_s", "tta_cpu_s", "speedup_tta"),
    ]
    lines = [
        f"{'':20}{'--- wall clock ---':>30}   {'--- per CPU-second (per core) ---':>34}",
        f"{'':20}{'reference':>10}{'ours':>10}{'speedup':>10}   "
        f"{'reference':>12}{'ours':>12}{'speedup':>10}",
    ]
    for name, wall, cpu, speed in rows:
        a, b, ca, cb = (
            r[f"{wall}_reference"],
            r[f"{wall}_ours"],
            r[f"{cpu}_reference"],
            r[f"{cpu}_ours"],
        )
        sw = r[speed] if speed else b / a
        sc = r[f"{speed}_per_core"] if speed else cb / ca
        lines.append(f"{name:20}{a:10.1f}{b:10.1f}{sw:9.2f}x   {ca:12.1f}{cb:12.1f}{sc:9.2f}x")
    lines += [
        "(TTA per core: CPU-seconds; speedups are medians of back-to-back pairs)",
        f"model alone (same step, fixed batch): {r['train_img_s_model_alone']:.1f} img/s",
        f"our data pipeline: +{r['pipeline_overhead_pct_step']:.1f}% step time vs model alone "
        f"(batch production alone: {r['data_ms_per_batch']:.0f} ms/batch = "
        f"{r['pipeline_overhead_pct_data']:.1f}% of a model step)",
        f"peak RSS: {r['peak_rss_mb']:.0f} MiB (largest DataLoader worker: "
        f"{r['peak_rss_workers_mb']:.0f} MiB)",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), metavar="FILE.npz")
    p.add_argument("--quick", action="store_true", help="about a minute of work (smoke)")
    p.add_argument("--reps", type=int, help="alternating repetitions (default 3; quick 2)")
    p.add_argument("--steps", type=int, help="training steps per rep (default 3; quick 1)")
    p.add_argument("--tta-images", type=int, help="test images for TTA (default all; quick 64)")
    p.add_argument("--eval-images", type=int, help="val images for eval (default all; quick 256)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    p.add_argument("--batch-size", type=int, default=128, help="training batch (reference: 128)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if not Path(args.data).is_file():
        sys.exit(f"throughput.py: error: data file {args.data} not found; pass --data FILE.npz")
    cfg = Config()
    cfg.optim.batch_size = args.batch_size
    rt = setup_runtime(args.device, args.precision, args.threads)
    data = load_npz(args.data)
    reps = args.reps or (2 if args.quick else 3)
    steps = args.steps or (1 if args.quick else 3)
    tta_n = min(args.tta_images or (64 if args.quick else len(data.test)), len(data.test))
    eval_n = min(args.eval_images or (256 if args.quick else len(data.val)), len(data.val))
    load0 = os.getloadavg()
    print(f"runtime: {rt.describe()}  batch {cfg.optim.batch_size}", flush=True)
    print(f"training: {reps} alternating reps x {steps} steps", flush=True)
    r = measure_train(data, cfg, rt, reps, steps)
    print(f"eval: {eval_n} val images; TTA: {tta_n} test images", flush=True)
    r.update(measure_eval(data, cfg, rt, eval_n, rounds=1 if args.quick else 2))
    r.update(measure_tta(data, cfg, rt, tta_n))
    r.update(peak_rss_mb())
    info = host_info(rt)
    r.update(
        {
            "device": str(info["gpu"] or info["cpu"]),
            "precision": rt.precision,
            "channels_last": rt.channels_last,
            "threads": rt.threads,
            "cores": info["cores_available"],
            "torch": torch.__version__,
            "python": platform.python_version(),
            "loadavg_start_end": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
            "quick": args.quick,
            "batch_size": cfg.optim.batch_size,
            "reps_x_steps": [reps, steps],
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }
    )
    print(_table(r))
    print(f"load average (1 min) at start/end: {r['loadavg_start_end']}")
    head = ("train_img_s_reference", "train_img_s_ours", "speedup_train", "tta_s_reference")
    head += ("tta_s_ours", "speedup_tta", "device", "precision")
    out = {k: r[k] for k in head} | {k: v for k, v in r.items() if k not in head}
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))
    return out


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
