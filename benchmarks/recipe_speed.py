"""Training speed of a recipe's model per CPU mode, and the wall time of a whole run it implies.

    python benchmarks/recipe_speed.py [--recipe fast] [--steps 30] [--rounds 3] [--threads 2] \
        [--variant LABEL=KEY=VALUE[,KEY=VALUE...] ...]

Times the recipe's real training step (its model, batch size, augmentation, loss, optimiser,
EMA where on) on a fixed batch in three modes, each in its own subprocess, alternating rounds so
that background load hits all alike:
  bf16   bf16 autocast + channels_last (what `precision: auto` picks on AVX512-BF16/AMX CPUs);
  fp32   fp32 + channels_last on this CPU;
  avx2   fp32 with oneDNN limited to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2): a stand-in for an AVX2-only
         CPU, where `auto` picks fp32 (bf16 is emulated there, >10x slower).
Prints img/s per mode (median over rounds), the ratios to bf16, and the training seconds of a
whole run (epochs x 11,959 images / img/s: step time only, validation and test not included).
`--variant` adds variants of the recipe (`--set`-style overrides, e.g. an older recipe's
`model.width=0.35,train.epochs=20`, `runtime.compile=true` or `optim.kind=muon`), measured in
the same alternating rounds as the recipe itself; compiling happens in the untimed warm-up steps.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

TRAIN_N = 11959
MODES = {
    "bf16": ("bf16", {}),
    "fp32": ("fp32", {}),
    "avx2": ("fp32", {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
}


def measure(recipe: str, precision: str, steps: int, threads: int, sets: str = "") -> float:
    """img/s of the recipe's training step in this process (called in a subprocess); `sets`:
    comma-separated KEY=VALUE overrides."""
    import numpy as np
    import torch

    from bloodmnist.config import build_config
    from bloodmnist.data.augment import augment
    from bloodmnist.data.loader import Normalizer
    from bloodmnist.model import model_from_config
    from bloodmnist.runtime import setup_runtime
    from bloodmnist.training.ema import make_ema
    from bloodmnist.training.model_setup import compile_for_training, sgd_param_groups
    from bloodmnist.training.optim import build_optimizer

    cfg = build_config(recipe=recipe, overrides=[o for o in sets.split(",") if o])
    rt = setup_runtime("cpu", precision, threads)
    model = model_from_config(cfg).to(memory_format=torch.channels_last)
    ema = make_ema(model, cfg.train.ema_decay)
    opt = build_optimizer(model, cfg, sgd_param_groups(model, cfg))  # the trainer's optimiser
    # the training step's module as the trainer builds it (with runtime.compile: compiled in
    # the warm-up steps)
    fwd = compile_for_training(model, cfg, rt)
    norm = Normalizer(cfg.data.mean, cfg.data.std, rt.device, rt.channels_last)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(cfg.optim.batch_size, 3, cfg.data.size, cfg.data.size, generator=gen)
    y = torch.from_numpy(np.arange(cfg.optim.batch_size) % cfg.model.num_classes)

    def step() -> None:
        xb = norm(augment(x, cfg.augment, gen))
        with rt.autocast():
            logits = fwd(xb)
        loss = torch.nn.functional.cross_entropy(logits.float(), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update(model)

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * cfg.optim.batch_size / (time.perf_counter() - t0)


def _child(mode: str, args: argparse.Namespace, sets: str) -> float:
    precision, env = MODES[mode]
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import recipe_speed as r; "
        "print(r.measure(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), "
        "sys.argv[6]))"
    )
    here = str(Path(__file__).resolve().parent)
    argv = [here, args.recipe, precision, str(args.steps), str(args.threads), sets]
    out = subprocess.run(
        [sys.executable, "-c", code, *argv],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _variants(args: argparse.Namespace) -> dict[str, str]:
    """LABEL -> comma-separated overrides; the recipe itself first, under its own name."""
    out = {args.recipe: ""}
    for item in args.variant:
        label, _, sets = item.partition("=")
        out[label] = sets
    return out


def _measure_all(args: argparse.Namespace, variants: dict[str, str]) -> dict[str, dict]:
    """Median img/s per variant and mode, rounds alternating over all of them."""
    rates = {v: {m: [] for m in MODES} for v in variants}
    for _ in range(args.rounds):
        for label, sets in variants.items():
            for mode in MODES:
                rates[label][mode].append(_child(mode, args, sets))
    return {v: {m: statistics.median(r) for m, r in modes.items()} for v, modes in rates.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="fast")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=KEY=VALUE,...")
    args = p.parse_args(argv)
    from bloodmnist.config import build_config
    from bloodmnist.runtime import cpu_has_fast_bf16

    variants = _variants(args)
    med = _measure_all(args, variants)
    flags = Path("/proc/cpuinfo").read_text(errors="ignore")
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recipe": args.recipe,
        "threads": args.threads,
        "cpu_flags": sorted(
            {f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags}
        ),
        "cpu_has_fast_bf16": cpu_has_fast_bf16(),
        "variants": {},
    }
    for label, sets in variants.items():
        over = [o for o in sets.split(",") if o]
        epochs = build_config(recipe=args.recipe, overrides=over).train.epochs
        m = med[label]
        result["variants"][label] = {
            "overrides": over,
            "img_per_s": {k: round(v, 1) for k, v in m.items()},
            "ratio_to_bf16": {k: round(v / m["bf16"], 3) for k, v in m.items()},
            "ratio_to_recipe": {k: round(v / med[args.recipe][k], 3) for k, v in m.items()},
            "train_seconds_per_run": {k: round(epochs * TRAIN_N / v) for k, v in m.items()},
        }
        for k in MODES:
            print(
                f"{label:10s} {k:5s} {m[k]:8.1f} img/s  x{m[k] / m['bf16']:.2f} of bf16  "
                f"{epochs} epochs ~ {epochs * TRAIN_N / m[k] / 60:.1f} min of training steps"
            )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
