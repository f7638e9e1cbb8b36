"""Accuracy against training compute: the frontier table and plot from study results.

    python benchmarks/frontier.py LABEL=STUDY.json[=ARCH][@MODE] [LABEL=STUDY.json ...] \
        [--tta reference7|dihedral8|dihedral16|dihedral24] [--out-json docs/results/frontier.json] \
        [--out-png docs/images/frontier.png]

Each STUDY.json is a `bloodmnist study` result (its study.json), or one run's or ensemble's
summary.json (a one-value row, marked n = 1). Training PFLOP per seed comes
from the runs' `train_pflop` where recorded; for studies made before it was recorded, from the
seed's `epochs_run` x the training-split size x the recipe's FLOPs per training image (the same
counter, bloodmnist.model.flops; `=ARCH` names the model where the recipe has changed since).
The plot has a log PFLOP axis and the published anchors as horizontal lines. `--tta MODE`
takes each row's TTA numbers under MODE where every seed reported it (`test_*_tta_MODE`), else
the row's own TTA, metric by metric; each row says which (`tta`: the mode, `own`, or `mixed`
with the source of each metric). `@MODE` after one row's file overrides `--tta` for that row
(`@own`: the recipe's own TTA).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bloodmnist.config import build_config  # noqa: E402
from bloodmnist.evaluation.run_files import TTA_MODES  # noqa: E402
from bloodmnist.model import model_from_config  # noqa: E402
from bloodmnist.model.flops import flops_per_image  # noqa: E402

TRAIN_N = 11959
#: Published BloodMNIST test accuracies (28 px unless said), for reference lines.
ANCHORS = {
    "MedMNIST v2 ResNet-18 (28 px, scratch)": 0.958,
    "Google AutoML Vision": 0.966,
    "reference README (ImageNet weights)": 0.9722,
    "MedMNIST+ best at 224 px": 0.9902,
}


def _recipe_train_flops(plan: dict, arch: str | None) -> float:
    """FLOPs per training image of the model a study's train options build."""
    args, recipe, sets = plan.get("train_args", []), "reference", []
    for i, a in enumerate(args):
        if a == "--recipe":
            recipe = args[i + 1]
        if a == "--set":
            sets.append(args[i + 1])
    sets = [s for s in sets if s.startswith("model.")] + ([f"model.arch={arch}"] if arch else [])
    cfg = build_config(recipe=recipe, overrides=sets)
    return flops_per_image(model_from_config(cfg), cfg.data.size)["train"]


def _seed_pflop(study: dict, arch: str | None) -> list[float]:
    per_seed = study["per_seed"]
    if all("train_pflop" in s for s in per_seed):
        return [s["train_pflop"] for s in per_seed]
    per_image = _recipe_train_flops(study["plan"], arch)
    return [per_image * TRAIN_N * s["epochs_run"] / 1e15 for s in per_seed]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


TTA_METRICS = ("test_acc_tta", "test_macro_f1_tta", "test_auc_tta")


def _pick(stats: dict, key: str, mode: str | None, n: int) -> tuple[object, str]:
    """The value of `key` under TTA `mode` where every seed reported it, else the run's own TTA
    value; and which of the two it is."""
    value = stats.get(f"{key}_{mode}") if mode else None
    if value is not None and (not isinstance(value, dict) or value.get("n") == n):
        return value, mode
    return stats.get(key), "own"


def _tta_label(sources: dict[str, str]) -> str:
    kinds = set(sources.values())
    return (
        kinds.pop()
        if len(kinds) == 1
        else "mixed: "
        + ", ".join(
            f"{k.removeprefix('test_').removesuffix('_tta')} {v}" for k, v in sources.items()
        )
    )


def single_row(label: str, summary: dict, mode: str | None = None) -> dict:
    """A row from one run's or one ensemble's summary.json: one value each, std 0 (n = 1)."""
    out = {"recipe": label, "seeds": [summary.get("seed")], "n": 1}
    if summary.get("test_acc") is not None:
        out["test_acc"] = [summary["test_acc"], 0.0]
    sources = {}
    for key in TTA_METRICS:
        value, sources[key] = _pick(summary, key, mode, 1)
        if value is not None:
            out[key] = [value, 0.0]
    out["tta"] = _tta_label(sources)
    val = summary.get("best_val_acc", summary.get("val_acc"))
    if val is not None:
        out["best_val_acc"] = [val, 0.0]
    out["train_pflop"] = [summary["train_pflop"], 0.0]
    out["train_seconds"] = [summary.get("train_seconds"), 0.0]
    return out


def row(label: str, study: dict, arch: str | None = None, mode: str | None = None) -> dict:
    """One frontier row: seed mean ± std of each metric, PFLOP and wall time; a run's or an
    ensemble's summary.json (no `per_seed`) gives a one-value row."""
    if "per_seed" not in study:
        return single_row(label, study, mode)
    ms = study["mean_std"]
    out = {"recipe": label, "seeds": study["seeds"], "n": len(study["per_seed"])}
    out["command_args"] = study["plan"]["train_args"]
    sources = {}
    for key in ("test_acc", *TTA_METRICS, "best_val_acc"):
        stat, source = _pick(ms, key, mode, out["n"]) if key in TTA_METRICS else (ms.get(key), "")
        if key in TTA_METRICS:
            sources[key] = source
        if stat is not None and stat["mean"] is not None:
            out[key] = [stat["mean"], stat["std"]]
    out["tta"] = _tta_label(sources)
    out["train_pflop"] = list(_mean_std(_seed_pflop(study, arch)))
    out["train_seconds"] = list(_mean_std([s["train_seconds"] for s in study["per_seed"]]))
    return out


def plot(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    colours = plt.get_cmap("tab20").colors  # one colour per row, up to 20 rows
    for i, r in enumerate(rows):
        x, y = r["train_pflop"][0], r.get("test_acc_tta", r["test_acc"])
        fmt = "s" if "64 px" in r["recipe"] else "o"  # larger images: squares
        ax.errorbar(
            x, 100 * y[0], yerr=100 * y[1], fmt=fmt, capsize=3, label=r["recipe"],
            color=colours[(2 * i) % 20 + (2 * i) // 20 % 2],
        )  # fmt: skip
    for name, acc in ANCHORS.items():
        ax.axhline(100 * acc, ls="--", lw=0.8, color="grey")
        # x in axes fraction, y in data: the label sits at the left edge whatever the x range
        trans = ax.get_yaxis_transform()
        ax.text(0.01, 100 * acc, name, transform=trans, va="bottom", fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("training compute (PFLOP, log scale)")
    ax.set_ylabel("test accuracy with TTA (%), mean ± std over seeds")
    ax.set_title("BloodMNIST from scratch (28 px; squares: 64 px): accuracy vs training compute")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # clear of the points
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+", metavar="LABEL=STUDY.json[=ARCH][@MODE]")
    p.add_argument("--tta", choices=list(TTA_MODES), default=None)
    p.add_argument("--out-json", default="docs/results/frontier.json")
    p.add_argument("--out-png", default="docs/images/frontier.png")
    args = p.parse_args(argv)
    rows = []
    for item in args.studies:
        label, _, rest = item.partition("=")
        rest, _, row_mode = rest.partition("@")  # this row's TTA: a mode, or `own`
        path, _, arch = rest.partition("=")
        study = json.loads(Path(path).read_text(encoding="utf-8"))
        mode = None if row_mode == "own" else (row_mode or args.tta)
        rows.append(row(label, study, arch or None, mode))
    Path(args.out_json).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    plot(rows, Path(args.out_png))
    for r in rows:
        print(json.dumps(r))
    return rows


if __name__ == "__main__":
    main()
