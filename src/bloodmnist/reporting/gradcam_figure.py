"""Report figure: Grad-CAM on test images, per class one correct and one misclassified.

Needs the run's checkpoints/best.pt (in the run folder) and test images: the run's data file
when it is still readable (any test image can be chosen), else the sample images stored in
predictions.npz. Maps are for the predicted class, from the plain (non-TTA) forward pass.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bloodmnist.evaluation.run_files import class_names, load_predictions

log = logging.getLogger(__name__)
GOOD, BAD = "#1a7f37", "#cf222e"


def find_test_images(
    run_dir: Path, preds: dict, data_path: str | None, size: int
) -> tuple[np.ndarray, int]:
    """(images, n) aligned with predictions.npz's first n test rows, of the model's size (the
    28- and 64-px files of the same images have the same labels)."""
    labels = preds["test_labels"]
    if data_path and Path(data_path).is_file():
        try:
            with np.load(data_path) as data:
                images, stored = data["test_images"], data["test_labels"].reshape(-1)
            n = min(len(images), len(labels))
            same = images.shape[1:3] == (size, size) and np.array_equal(stored[:n], labels[:n])
            if same:  # --subset keeps the first n test images
                return images[:n], n
        except (OSError, KeyError, ValueError):
            pass
    images = preds.get("sample_images", np.zeros((0, 28, 28, 3), np.uint8))
    return images, min(len(images), len(labels))


def pick(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> list[tuple[int, int | None]]:
    """Per class: the first correct and the first misclassified test index (None if none)."""
    chosen = []
    for c in range(num_classes):
        ok = np.flatnonzero((labels == c) & (pred == c))
        bad = np.flatnonzero((labels == c) & (pred != c))
        chosen.append((int(ok[0]) if len(ok) else None, int(bad[0]) if len(bad) else None))
    return chosen


def plot_gradcam(run_dir: Path, path: Path) -> Path | None:
    """Rows: classes; columns: correct (image, overlay), misclassified (image, overlay)."""
    from bloodmnist.explain.gradcam import engine_cams
    from bloodmnist.explain.overlay import overlay
    from bloodmnist.inference.torch_engine import TorchEngine
    from bloodmnist.reporting.figures import plt, save_figure

    ckpt = run_dir / "checkpoints" / "best.pt"
    if not ckpt.is_file():
        if not (run_dir / "ensemble.json").is_file():  # an ensemble has no model of its own
            log.warning("Grad-CAM figure skipped: %s does not exist", ckpt)
        return None
    engine = TorchEngine(ckpt, device="cpu", precision="fp32", threads=1)
    preds = load_predictions(run_dir)
    names = class_names(preds)
    images, n = find_test_images(run_dir, preds, engine.cfg.data.path, engine.cfg.data.size)
    labels = preds["test_labels"][:n]
    predicted = preds["test_probs"][:n].argmax(axis=1)
    chosen = pick(labels, predicted, len(names))
    index = sorted({i for pair in chosen for i in pair if i is not None})
    maps = engine_cams(engine, images[index], [int(predicted[i]) for i in index])
    cams = dict(zip(index, maps, strict=True))
    fig, axes = plt.subplots(len(names), 4, figsize=(7.2, 1.75 * len(names)), squeeze=False)
    for c, row in enumerate(axes):
        for k, idx in enumerate(chosen[c]):
            for ax in row[2 * k : 2 * k + 2]:
                ax.set_xticks([])
                ax.set_yticks([])
            if idx is None:
                row[2 * k].set_axis_off()
                row[2 * k + 1].set_axis_off()
                row[2 * k].text(1.1, 0.5, "none found", ha="center", fontsize=7, color="#59636e")
                continue
            row[2 * k].imshow(images[idx], interpolation="nearest")
            row[2 * k + 1].imshow(overlay(images[idx], cams[idx], 112))
            ok = int(predicted[idx]) == c
            row[2 * k].set_title(f"T: {names[c]}", fontsize=7)
            row[2 * k + 1].set_title(
                f"P: {names[int(predicted[idx])]}", fontsize=7, color=GOOD if ok else BAD
            )
    fig.suptitle(f"Grad-CAM for the predicted class ({n} test images searched)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.955))
    for x, head in ((0.27, "correct"), (0.77, "misclassified")):
        fig.text(x, 0.958, head, ha="center", fontsize=9, weight="bold")
    return save_figure(fig, path)


def try_plot_gradcam(run_dir: Path, path: Path) -> Path | None:
    """The figure, or None with a warning: reports must still build without it."""
    try:
        return plot_gradcam(run_dir, path)
    except Exception as exc:  # noqa: BLE001 - any failure only drops this one figure
        log.warning("Grad-CAM figure skipped: %s", (str(exc).splitlines() or [repr(exc)])[0])
        return None
