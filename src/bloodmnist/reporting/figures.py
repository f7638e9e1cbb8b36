"""PNG figures rebuilt from a run folder alone (history.csv and predictions.npz, no model)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless servers and CI have no display
# Text is shown as written: a class name from a data file such as "CD$4^$ blasts" would be read
# as mathtext (and fail the whole report); no figure here uses mathtext.
matplotlib.rcParams["text.parse_math"] = False

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from bloodmnist.atomic import atomic_open  # noqa: E402
from bloodmnist.evaluation.calibration import (  # noqa: E402
    apply_temperature,
    ece,
    logits_from_probs,
    reliability_bins,
)
from bloodmnist.evaluation.metrics import confusion_matrix  # noqa: E402
from bloodmnist.evaluation.run_files import (  # noqa: E402
    FIGURES_DIR,
    calibration_variants,
    class_names,
    load_history,
    load_predictions,
    load_summary,
    tta_was_run,
)

DPI = 120
FIGURE_NAMES = (
    "confusion_matrix",
    "training_curves",
    "sample_predictions",
    "dataset_samples",
    "reliability_diagram",
)
GOOD, BAD = "#1a7f37", "#cf222e"  # green / red titles for right / wrong predictions
#: Figures drawn only when the run folder has its model (checkpoints/best.pt).
MODEL_FIGURE_NAMES = ("gradcam",)


def save_figure(fig: Figure, path: Path) -> Path:
    with atomic_open(Path(path)) as fh:
        fig.savefig(fh, format="png", dpi=DPI, facecolor="white")
    plt.close(fig)  # figures are not garbage-collected while pyplot tracks them
    return path


def _show_image(ax: Axes, image: np.ndarray) -> None:
    # Nearest-neighbour keeps the 28-px cells crisp instead of blurring them when upscaled.
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _empty_note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#555")
    ax.set_axis_off()


def plot_confusion(
    labels: np.ndarray, probs: np.ndarray, names: list[str], path: Path, kind: str = "TTA"
) -> Path:
    """Row-normalised confusion matrix (recall on the diagonal) with values annotated; `kind`
    names the predictions (TTA, or plain for a run without TTA)."""
    k = len(names)
    cm = confusion_matrix(labels, probs.argmax(axis=1), k).astype(np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = plt.subplots(figsize=(8.5, 7.5), layout="constrained")
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    for i in range(k):
        for j in range(k):
            colour = "white" if norm[i, j] > 0.6 else "black"  # stay readable on dark cells
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(k), names, rotation=40, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Test confusion matrix ({kind}, row-normalised, n={len(labels)})")
    return save_figure(fig, path)


def history_series(history: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) for rows where ``key`` holds a number."""
    pts = [
        (float(r["epoch"]), float(r[key]))
        for r in history
        if isinstance(r.get(key), (int, float)) and isinstance(r.get("epoch"), (int, float))
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_training_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss, accuracy (train/val, plus val AUC) and learning rate against epoch."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), layout="constrained")
    panels = (
        ("loss", [("train_loss", "train"), ("val_loss", "val")]),
        (
            "accuracy / AUC",
            [("train_acc", "train acc"), ("val_acc", "val acc"), ("val_auc", "val AUC")],
        ),
        ("learning rate", [("lr", "lr")]),
    )
    for ax, (title, keys) in zip(axes, panels, strict=True):
        drawn = False
        for key, label in keys:
            x, y = history_series(history, key)
            if x:
                ax.plot(x, y, marker="o", markersize=3, label=label)
                drawn = True
        if not drawn:
            _empty_note(ax, "no data")
            continue
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    lr_ax = axes[2]
    _, lr = history_series(history, "lr")
    if lr and min(lr) > 0 and max(lr) / min(lr) > 20:
        lr_ax.set_yscale("log")  # schedules span decades; linear would flatten the tail
    fig.suptitle("Training history")
    return save_figure(fig, path)


def plot_sample_predictions(
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    names: list[str],
    path: Path,
    kind: str = "TTA",
) -> Path:
    """Grid of test images titled true/predicted, green when right and red when wrong."""
    n = min(len(images), len(labels), len(probs))
    cols = 8
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.9, rows * 2.2), squeeze=False)
    preds = probs[:n].argmax(axis=1)
    correct = 0
    for idx, ax in enumerate(axes.flat):
        if idx >= n:
            ax.set_axis_off()
            continue
        _show_image(ax, images[idx])
        ok = int(preds[idx]) == int(labels[idx])
        correct += ok
        title = f"T: {names[int(labels[idx])]}\nP: {names[int(preds[idx])]}"
        ax.set_title(title, fontsize=7, color=GOOD if ok else BAD)
    if n == 0:
        _empty_note(axes[0, 0], "no sample images")
    fig.suptitle(f"First {n} test images ({kind} predictions): {correct}/{n} correct")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_dataset_samples(
    images: np.ndarray, labels: np.ndarray, names: list[str], path: Path
) -> Path:
    """One row per class with the training images stored for it."""
    per_class = [np.flatnonzero(labels == c) for c in range(len(names))]
    cols = max([1] + [len(ix) for ix in per_class])
    fig, axes = plt.subplots(
        len(names), cols, figsize=(2.2 + cols * 1.2, len(names) * 1.25), squeeze=False
    )
    for c, ax_row in enumerate(axes):
        for j, ax in enumerate(ax_row):
            if j < len(per_class[c]):
                _show_image(ax, images[per_class[c][j]])
            else:
                ax.set_axis_off()
        # Text rather than ylabel: it still shows when the row's first axis is switched off.
        ax_row[0].text(
            -0.1, 0.5, names[c], transform=ax_row[0].transAxes, ha="right", va="center", fontsize=9
        )
    fig.suptitle("Training samples per class")
    fig.tight_layout()
    return save_figure(fig, path)


def _reliability_panel(ax: Axes, labels: np.ndarray, probs: np.ndarray, temp, title: str) -> None:
    bins = reliability_bins(probs, labels)
    edges = bins["edges"]
    centres = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    filled = bins["count"] > 0
    ax.plot([0, 1], [0, 1], ls="--", color="#59636e", label="perfect calibration")
    ax.bar(
        centres[filled],
        bins["accuracy"][filled],
        width=width * 0.95,
        color="#1f6feb",
        alpha=0.8,
        label=f"accuracy (ECE {ece(probs, labels):.4f})",
    )
    acc, conf = bins["accuracy"][filled], bins["confidence"][filled]
    ax.bar(  # hatched span between bin accuracy and mean confidence: the calibration gap
        centres[filled],
        np.abs(conf - acc),
        bottom=np.minimum(acc, conf),
        width=width * 0.95,
        fill=False,
        hatch="//",
        edgecolor=BAD,
        label="gap to mean confidence",
    )
    if temp is not None:  # the same bins after temperature scaling, as points
        scaled = apply_temperature(logits_from_probs(probs), temp)
        after = reliability_bins(scaled, labels)
        ok = after["count"] > 0
        ax.plot(
            after["confidence"][ok],
            after["accuracy"][ok],
            "o-",
            color=GOOD,
            ms=4,
            label=f"after T={temp:.2f} (ECE {ece(scaled, labels):.4f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (max probability), 15 bins")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title} (n={len(labels)})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)


def plot_reliability(
    labels: np.ndarray, variants: list[tuple[str, np.ndarray, float | None]], path: Path
) -> Path:
    """Reliability diagram per variant (plain, TTA): bin accuracy against confidence."""
    fig, axes = plt.subplots(
        1, len(variants), figsize=(6.2 * len(variants), 5.4), squeeze=False, layout="constrained"
    )
    for ax, (name, probs, temp) in zip(axes[0], variants, strict=True):
        _reliability_panel(ax, labels, probs, temp, f"Test reliability, {name}")
    return save_figure(fig, path)


def save_figures(run_dir: Path) -> dict[str, Path]:
    """Write the report figures to ``run_dir/figures/``; returns name -> PNG path."""
    run_dir = Path(run_dir)
    preds = load_predictions(run_dir)
    history = load_history(run_dir)
    summary = load_summary(run_dir)
    kind = "TTA" if tta_was_run(summary) else "plain"  # test_probs_tta repeats plain then
    names = class_names(preds)
    out = run_dir / FIGURES_DIR
    out.mkdir(parents=True, exist_ok=True)
    empty_imgs = np.zeros((0, 28, 28, 3), np.uint8)
    empty_labels = np.zeros(0, np.int64)
    k = min(len(preds.get("sample_images", empty_imgs)), len(preds["test_probs_tta"]))
    from bloodmnist.reporting.gradcam_figure import try_plot_gradcam  # torch: only here

    gradcam = try_plot_gradcam(run_dir, out / "gradcam.png")
    return {
        "confusion_matrix": plot_confusion(
            preds["test_labels"], preds["test_probs_tta"], names, out / "confusion_matrix.png", kind
        ),
        "training_curves": plot_training_curves(history, out / "training_curves.png"),
        "sample_predictions": plot_sample_predictions(
            preds.get("sample_images", empty_imgs)[:k],
            preds.get("sample_labels", preds["test_labels"])[:k],
            preds["test_probs_tta"][:k],
            names,
            out / "sample_predictions.png",
            kind,
        ),
        "dataset_samples": plot_dataset_samples(
            preds.get("dataset_images", empty_imgs),
            preds.get("dataset_labels", empty_labels),
            names,
            out / "dataset_samples.png",
        ),
        "reliability_diagram": plot_reliability(
            preds["test_labels"],
            calibration_variants(summary, preds),
            out / "reliability_diagram.png",
        ),
        **({"gradcam": gradcam} if gradcam else {}),
    }
