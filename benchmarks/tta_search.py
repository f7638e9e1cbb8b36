"""Which TTA views, chosen on validation: each view's softmax for finished runs, then candidate
modes (sets of views) scored by validation accuracy per run.

    python benchmarks/tta_search.py bank RUN_DIR... --dir BANK   # per-view val softmax (.npz)
    python benchmarks/tta_search.py score BANK --group fast=t17_ --group best=bestv5_ --out F

The bank holds the 8 dihedral poses, each under the reference's single-image views (identity,
1.1x zoom, 0.9x zoom, 3x3 blur, 2-px translate, seeded noise), computed with the run's own device
and precision (the numbers training's final evaluation would give). Only the validation split
is read. `reference7`, `dihedral8` and `dihedral16` are the shipped modes; the others are the
candidates that were scored and not shipped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bloodmnist.data.loader import Normalizer, to_tensor
from bloodmnist.data.source import load_data
from bloodmnist.evaluation.predict import _affine, gaussian_blur3, seeded_noise
from bloodmnist.runtime import setup_runtime
from bloodmnist.training.checkpoint import checkpoint_config, load_checkpoint
from bloodmnist.training.teacher import load_eval_model

POSES = [f"r{k}" for k in range(4)] + [f"fr{k}" for k in range(4)]  # fr: h-flip, then turns
REF7 = ["r0_id", "fr0_id", "r0_trans", "r0_zoom", "r0_blur", "r0_noise", "fr2_id"]  # fr2 = v-flip


def _per_pose(*suffixes: str) -> list[str]:
    return [p + s for p in POSES for s in suffixes]


MODES = {
    "reference7": REF7,
    "dihedral8": _per_pose("_id"),
    "dihedral16": _per_pose("_id", "_zoom"),
    "reference7+dihedral8": [*REF7[2:6], *_per_pose("_id")],
    "dihedral8 x blur": _per_pose("_id", "_blur"),
    "dihedral8 x zoom, blur": _per_pose("_id", "_zoom", "_blur"),
    "dihedral8 x 5 views": _per_pose("_id", "_zoom", "_blur", "_trans", "_noise"),
    "dihedral8 x 6 views": _per_pose("_id", "_zoom", "_zoom09", "_blur", "_trans", "_noise"),
    "identity": ["r0_id"],
}


def bank(run: Path, out_dir: Path) -> Path:
    """Every pose x view softmax of run's best.pt on validation, saved as one .npz."""
    ckpt = run / "checkpoints" / "best.pt"
    cfg = checkpoint_config(load_checkpoint(ckpt))
    rt = setup_runtime(cfg.runtime.device, cfg.runtime.precision, 1)
    model, _, _ = load_eval_model(ckpt, rt.device, rt.channels_last)
    data, _ = load_data(cfg.data.path, cfg.data.size, cfg.model.num_classes, None, progress=False)
    norm = Normalizer(cfg.data.mean, cfg.data.std, rt.device, rt.channels_last)
    e, val = cfg.eval, data.split("val")
    views = {
        "id": lambda x, i: x,
        "zoom": lambda x, i: _affine(x, e.tta_scale, 0.0),
        "zoom09": lambda x, i: _affine(x, 0.9, 0.0),
        "blur": lambda x, i: gaussian_blur3(x, e.tta_blur_sigma),
        "trans": lambda x, i: _affine(x, 1.0, e.tta_translate),
        "noise": lambda x, i: (
            x + e.tta_noise_std * seeded_noise(tuple(x.shape[1:]), i, e.tta_seed)
        ).clamp(0, 1),
    }
    images, out = to_tensor(val.images, rt.device), {}
    with torch.no_grad():
        for pose in POSES:
            flip, k = pose.startswith("f"), int(pose[-1])
            for name, view in views.items():
                chunks = []
                for s in range(0, len(images), 512):
                    x, idx = images[s : s + 512], torch.arange(s, min(s + 512, len(images)))
                    x = torch.rot90(x.flip(3) if flip else x, k, dims=(2, 3))
                    with rt.autocast():
                        logits = model(norm(view(x, idx)))
                    chunks.append(torch.softmax(logits.float(), 1))
                out[f"{pose}_{name}"] = torch.cat(chunks).numpy()
    path = out_dir / f"{run.name}.npz"
    np.savez_compressed(path, labels=val.labels, **out)
    return path


def score(bank_dir: Path, groups: dict[str, str]) -> dict:
    """Validation accuracy of every mode for every banked run, grouped by run-name prefix."""
    result = {}
    for group, prefix in groups.items():
        files = sorted(bank_dir.glob(f"{prefix}*.npz"))
        rows = {}
        for mode, views in MODES.items():
            accs = []
            for f in files:
                with np.load(f) as d:
                    probs = np.mean([d[v] for v in views], axis=0)
                    accs.append(float(np.mean(probs.argmax(1) == d["labels"].reshape(-1))))
            rows[mode] = {"views": len(views), "val_acc": accs, "mean": float(np.mean(accs))}
        result[group] = {"runs": [f.stem for f in files], "modes": rows}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bank")
    b.add_argument("runs", nargs="+", type=Path)
    b.add_argument("--dir", type=Path, required=True)
    s = sub.add_parser("score")
    s.add_argument("dir", type=Path)
    s.add_argument("--group", action="append", required=True, metavar="NAME=PREFIX")
    s.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.cmd == "bank":
        args.dir.mkdir(parents=True, exist_ok=True)
        for run in args.runs:
            print(bank(run, args.dir), flush=True)
        return
    result = score(args.dir, dict(g.split("=", 1) for g in args.group))
    for group, r in result.items():
        print(group, r["runs"])
        for mode, row in r["modes"].items():
            accs = " ".join(f"{a:.4f}" for a in row["val_acc"])
            print(f"  {mode:24s} {row['views']:3d} views  {accs}  mean {row['mean']:.4f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
