"""Reports are rebuilt from a synthetic run folder alone: figures, report.xlsx and report.html."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from openpyxl import load_workbook
from PIL import Image

from bloodmnist import CLASS_NAMES, NUM_CLASSES
from bloodmnist.errors import BloodMNISTError
from bloodmnist.evaluation.calibration import ece
from bloodmnist.evaluation.metrics import compute_metrics
from bloodmnist.reporting.html import write_html
from bloodmnist.reporting.report import build_reports
from browser import assert_renders, distinct_colours

EPOCHS = 6
FIGURES = (
    "confusion_matrix",
    "training_curves",
    "sample_predictions",
    "dataset_samples",
    "reliability_diagram",
)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _write_history(path: Path, rng: np.random.Generator) -> None:
    header = "epoch,train_loss,train_acc,val_loss,val_acc,val_auc,lr,seconds".split(",")
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for e in range(1, EPOCHS + 1):
            loss = 1.8 / e + rng.uniform(0, 0.05)
            acc = 1 - 0.6 / e
            lr = 1e-3 * 0.5 * (1 + np.cos(np.pi * (e - 1) / EPOCHS))
            row = [e, loss, acc, loss * 1.1, acc - 0.02, min(0.99, acc + 0.05), lr, 12.5]
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])


def _images(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Noise tinted by class so the grids are visibly non-uniform."""
    base = rng.integers(0, 120, size=(len(labels), 28, 28, 3))
    tint = (np.array(labels)[:, None] * 30 % 255).astype(np.int64)
    base[..., 0] += tint[:, :, None].reshape(-1, 1, 1)
    return np.clip(base, 0, 255).astype(np.uint8)


def make_run(
    run_dir: Path, seed: int = 0, pretrained: str = "none", names: list[str] = CLASS_NAMES
) -> dict:
    """A run folder like the trainer writes (classes `names`); returns the summary."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    n, k = 240, NUM_CLASSES
    labels = rng.integers(0, k, size=n)
    noise = rng.normal(size=(n, k))
    probs = _softmax(noise + 2.0 * np.eye(k)[labels])
    probs_tta = _softmax(noise + 2.5 * np.eye(k)[labels])
    ds_labels = np.repeat(np.arange(k), 3)
    np.savez(
        run_dir / "predictions.npz",
        test_labels=labels.astype(np.int64),
        test_probs=probs,
        test_probs_tta=probs_tta,
        sample_images=_images(rng, labels[:32]),
        sample_labels=labels[:32].astype(np.int64),
        dataset_images=_images(rng, ds_labels),
        dataset_labels=ds_labels.astype(np.int64),
        class_names=np.array(names),
    )
    _write_history(run_dir / "history.csv", rng)
    plain = compute_metrics(labels, probs, list(names))
    tta = compute_metrics(labels, probs_tta, list(names))
    summary = {
        "test_acc": plain["acc"],
        "test_acc_tta": tta["acc"],
        "test_macro_f1": plain["macro_f1"],
        "test_macro_f1_tta": tta["macro_f1"],
        "test_auc": plain["auc"],
        "test_auc_tta": tta["auc"],
        "best_val_acc": 0.88,
        "best_epoch": 5,
        "epochs_run": EPOCHS,
        "train_seconds": 75.0,
        "device": "cpu",
        "precision": "bf16",
        "pretrained": pretrained,
        "seed": seed,
        "data_md5": "7053d0359d879ad8a5505303e11de1dc",
        "status": "completed",
        "test": plain,
        "test_tta": tta,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    manifest = {
        "python": "3.11.2",
        "torch": "2.4.0",
        "host": "<script>alert(1)</script>",  # must come out escaped
        "weights": "https://download.pytorch.org/models/resnet18.pth",  # text, not a link
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    (run_dir / "config.yaml").write_text("seed: 0\nmodel:\n  pretrained: none\n")
    (run_dir / "train.log").write_text("epoch 1 ...\n")
    return summary


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict[str, Path]]:
    """Build the reports once; rendering figures is the slow part."""
    run_dir = tmp_path_factory.mktemp("run")
    summary = make_run(run_dir)
    return run_dir, summary, build_reports(run_dir)


def test_figures(built: tuple[Path, dict, dict[str, Path]]) -> None:
    run_dir, _, paths = built
    for name in FIGURES:
        path = run_dir / "figures" / f"{name}.png"
        assert path.is_file() and paths[f"figure:{name}"] == path
        with Image.open(path) as img:
            assert img.format == "PNG"
            assert img.width >= 400 and img.height >= 300, (name, img.size)
            n_colours, top = distinct_colours(img)
        assert n_colours > 10 and top < 0.98, (name, n_colours, top)


def test_excel(built: tuple[Path, dict, dict[str, Path]]) -> None:
    run_dir, summary, paths = built
    assert paths["excel"] == run_dir / "report.xlsx"
    wb = load_workbook(paths["excel"], read_only=True)
    assert wb.sheetnames == [
        "summary",
        "history",
        "per_class",
        "calibration",
        "confusion",
        "manifest",
    ]
    kv = {row[0]: row[1] for row in wb["summary"].iter_rows(min_row=2, values_only=True)}
    assert kv["test_acc"] == summary["test_acc"]
    assert kv["epochs_run"] == EPOCHS
    history = list(wb["history"].iter_rows(values_only=True))
    assert history[0][0] == "epoch" and len(history) - 1 == EPOCHS
    assert all(isinstance(v, (int, float)) for v in history[1])  # numbers, not text
    per_class = list(wb["per_class"].iter_rows(values_only=True))
    assert len(per_class) == 1 + NUM_CLASSES and per_class[1][0] == CLASS_NAMES[0]
    confusion = list(wb["confusion"].iter_rows(values_only=True))
    assert [list(r[1:]) for r in confusion[1:]] == summary["test_tta"]["confusion"]
    assert list(confusion[0][1:]) == list(CLASS_NAMES)
    calib = list(wb["calibration"].iter_rows(values_only=True))
    preds = np.load(run_dir / "predictions.npz")
    assert [r[0] for r in calib[1:]] == ["plain", "TTA"]
    assert calib[2][1] == pytest.approx(ece(preds["test_probs_tta"], preds["test_labels"]))
    assert calib[1][2] == pytest.approx(summary["test"]["nll"], rel=1e-5)
    assert calib[1][4] is None  # no temperature fitted in this run
    manifest = {r[0]: r[1] for r in wb["manifest"].iter_rows(min_row=2, values_only=True)}
    assert manifest["torch"] == "2.4.0"
    wb.close()


def test_rebuilt_workbook_is_the_same_file(
    built: tuple[Path, dict, dict[str, Path]], tmp_path: Path
) -> None:
    """openpyxl stamps the time into the workbook and its zip entries; the report is rebuilt
    from the run folder alone, so it must come out byte for byte the same."""
    import time

    from bloodmnist.reporting.excel import write_excel

    run_dir = tmp_path / "run"
    shutil.copytree(built[0], run_dir)
    first = write_excel(run_dir).read_bytes()
    time.sleep(2.1)  # zip times have a 2 s resolution
    assert write_excel(run_dir).read_bytes() == first


def test_html(built: tuple[Path, dict, dict[str, Path]]) -> None:
    run_dir, summary, paths = built
    text = paths["html"].read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == len(FIGURES)
    assert f"{summary['test_acc']:.4f}" in text and f"{summary['test_auc_tta']:.4f}" in text
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I)
    assert "<script" not in text.lower() and "&lt;script&gt;" in text
    assert "<link" not in text.lower()
    assert "Trained from scratch (no ImageNet weights)" in text
    assert "7053d0359d879ad8a5505303e11de1dc" in text and "completed" in text
    for name in CLASS_NAMES:
        assert name in text


def test_html_pretrained_has_no_scratch_note(
    built: tuple[Path, dict, dict[str, Path]], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(built[0], run_dir)  # figures come along, so only the HTML is rebuilt
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["pretrained"] = "imagenet"
    (run_dir / "summary.json").write_text(json.dumps(summary))
    text = write_html(run_dir).read_text(encoding="utf-8")
    assert "Trained from scratch" not in text


@pytest.mark.parametrize("missing", ["summary.json", "history.csv", "predictions.npz"])
def test_missing_file_is_one_clear_error(
    built: tuple[Path, dict, dict[str, Path]], tmp_path: Path, missing: str
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("summary.json", "history.csv", "predictions.npz", "manifest.json"):
        if name != missing:
            shutil.copy(built[0] / name, run_dir / name)
    with pytest.raises(BloodMNISTError, match=re.escape(missing)) as info:
        build_reports(run_dir)
    assert "\n" not in str(info.value)
    assert not (run_dir / "figures").exists()  # nothing written before the check


@pytest.mark.parametrize("edit", ["history not utf-8", "temperature as text", "per_class short"])
def test_an_edited_run_file_is_one_clear_error(
    built: tuple[Path, dict, dict[str, Path]], tmp_path: Path, edit: str
) -> None:
    """Hand-edited files gave tracebacks (UnicodeDecodeError, TypeError, ValueError)."""
    run_dir = tmp_path / "run"
    shutil.copytree(built[0], run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    if edit == "history not utf-8":
        (run_dir / "history.csv").write_bytes(b"epoch,train_loss\n1,\xff\xfe\n")
    elif edit == "temperature as text":
        summary["temperature"] = {"plain": "1.5", "tta": "0.5"}
    else:
        summary["test"]["per_class"] = summary["test"]["per_class"][:2]
    (run_dir / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(BloodMNISTError, match=r"^cannot build the reports of .*run \(") as info:
        build_reports(run_dir)
    assert "\n" not in str(info.value) and "edited or is damaged" in str(info.value)
    assert edit != "history not utf-8" or "UnicodeDecodeError" in str(info.value)


def test_class_names_from_a_data_file_are_shown_as_written(tmp_path: Path) -> None:
    """A name like a spreadsheet formula stays text in report.xlsx, dollar signs are not read
    as mathtext (that failed the whole report), control characters are dropped from the
    workbook (openpyxl refused it), markup is escaped in the page."""
    names = ['=HYPERLINK("http://x","a")', "CD$4^$ blasts", "baso\x1bphil", "<b>mono</b>"]
    names += ["eo", "ery", "ig", "pl"]
    run_dir = tmp_path / "run"
    make_run(run_dir, names=names)
    build_reports(run_dir)
    sheet = load_workbook(run_dir / "report.xlsx")["per_class"]
    cells = {c.value: c.data_type for c in sheet["A"][1:]}
    assert cells['=HYPERLINK("http://x","a")'] == "s" and "basophil" in cells
    page = (run_dir / "report.html").read_text()
    assert "&lt;b&gt;mono&lt;/b&gt;" in page and "<b>mono</b>" not in page
    assert (run_dir / "figures" / "confusion_matrix.png").is_file()


def test_a_run_without_tta_is_not_reported_as_tta(
    built: tuple[Path, dict, dict[str, Path]], tmp_path: Path
) -> None:
    """With TTA off, predictions.npz repeats the plain probabilities as TTA; the report must
    not present them as TTA scores."""
    run_dir = tmp_path / "run"
    shutil.copytree(built[0], run_dir)
    shutil.rmtree(run_dir / "figures")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.update(test_acc_tta=None, test_macro_f1_tta=None, test_auc_tta=None, test_tta=None)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    preds = dict(np.load(run_dir / "predictions.npz"))
    preds["test_probs_tta"] = preds["test_probs"]
    np.savez(run_dir / "predictions.npz", **preds)
    build_reports(run_dir)
    page = (run_dir / "report.html").read_text()
    assert "F1 (TTA)" not in page and "Confusion matrix (plain, counts)" in page
    book = load_workbook(run_dir / "report.xlsx")
    header = [c.value for c in book["per_class"][1]]
    assert header == ["class", "precision", "recall", "f1", "support"]
    assert book["confusion"]["A1"].value == "true \\ predicted (plain)"
    built_page = (built[0] / "report.html").read_text()
    assert "F1 (TTA)" in built_page and "Confusion matrix (TTA, counts)" in built_page


def test_predictions_that_do_not_fit_are_one_line_before_any_figure(
    built: tuple[Path, dict, dict[str, Path]], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(built[0], run_dir)
    shutil.rmtree(run_dir / "figures")
    preds = dict(np.load(run_dir / "predictions.npz"))
    preds["test_probs"] = preds["test_probs"][:, :5]
    np.savez(run_dir / "predictions.npz", **preds)
    with pytest.raises(BloodMNISTError, match="does not hold one prediction per image") as info:
        build_reports(run_dir)
    assert "shapes" in str(info.value) and not (run_dir / "figures").exists()


def test_html_renders_in_headless_chromium(
    built: tuple[Path, dict, dict[str, Path]], tmp_path: Path
) -> None:
    assert_renders(built[2]["html"], tmp_path)


def test_gradcam_takes_test_images_of_the_model_s_size_only(shared_data: Path) -> None:
    """The 28- and 64-px files of the same images have the same labels: a 64-px run whose data
    path now holds the 28-px file draws its Grad-CAM on its stored samples, not on 28-px
    images upscaled."""
    from bloodmnist.reporting.gradcam_figure import find_test_images

    labels = np.load(shared_data)["test_labels"][:16].reshape(-1)
    samples = np.zeros((4, 64, 64, 3), np.uint8)
    preds = {"test_labels": labels, "sample_images": samples}
    images, n = find_test_images(Path("."), preds, str(shared_data), 64)
    assert images is samples and n == 4
    images, n = find_test_images(Path("."), preds, str(shared_data), 28)
    assert images.shape == (16, 28, 28, 3) and n == 16


def test_a_run_without_its_checkpoint_says_the_gradcam_figure_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The other figures are drawn from the run's files; Grad-CAM needs its model. Without
    checkpoints/best.pt it was skipped without a word (the docs promised a warning); an ensemble
    folder has no model of its own, so it says nothing there."""
    import logging

    from bloodmnist.reporting.gradcam_figure import try_plot_gradcam

    make_run(tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        assert try_plot_gradcam(tmp_path / "run", tmp_path / "g.png") is None
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    assert [r.getMessage() for r in caplog.records] == [
        f"Grad-CAM figure skipped: {ckpt} does not exist"
    ]
    caplog.clear()
    (tmp_path / "run" / "ensemble.json").write_text("{}")
    with caplog.at_level(logging.WARNING):
        assert try_plot_gradcam(tmp_path / "run", tmp_path / "g.png") is None
    assert caplog.records == [] and not (tmp_path / "g.png").exists()
