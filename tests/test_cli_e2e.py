"""End to end: `python -m bloodmnist` in real subprocesses on the real shared data.

One small training run is shared by the module (training is the slow part); a second identical
run checks that a seed fixes every number. Commands that fail before training (locks, bad data)
are in test_cli_guards.py.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from bloodmnist import CLASS_NAMES
from bloodmnist.config import DEFAULT_RECIPE, build_config, from_dict, load_yaml
from bloodmnist.evaluation.metrics import compute_metrics
from bloodmnist.model import build_model
from bloodmnist.training.checkpoint import load_checkpoint
from browser import assert_renders
from conftest import SHARED_NPZ_MD5, describe, error_lines, run_cli

pytestmark = pytest.mark.slow

SUBSET, EPOCHS = 64, 2  # small enough for 2 CPU cores; TTA stays on (the default)
TRAIN_TIMEOUT = 1500  # generous: the CI box may be shared with other jobs
HISTORY_HEADER = "epoch,train_loss,train_acc,val_loss,val_acc,val_auc,lr,seconds"
FIGURES = ("confusion_matrix", "training_curves", "sample_predictions", "dataset_samples")
RUN_FILES = {
    "config.yaml",
    "train.log",
    "history.csv",
    "checkpoints/best.pt",
    "checkpoints/last.pt",
    *(f"figures/{name}.png" for name in FIGURES),
    "report.xlsx",
    "report.html",
    "predictions.npz",
    "summary.json",
    "manifest.json",
}
SUMMARY_KEYS = (
    "test_acc",
    "test_acc_tta",
    "test_macro_f1",
    "test_macro_f1_tta",
    "test_auc",
    "test_auc_tta",
    "best_val_acc",
    "best_epoch",
    "epochs_run",
    "train_seconds",
    "device",
    "precision",
    "pretrained",
    "seed",
    "data_md5",
)
TIMING_KEYS = ("train_seconds", "test_eval_seconds")
CHECKPOINT_KEYS = {
    "model",
    "optimizer",
    "schedule",
    "epoch",
    "config",
    "train_state",
    "rng",
    "metrics",
    "arch",
    "num_classes",
    "world_size",
    "pretrained",
}


def train_args(data: Path, out: Path) -> list[str]:
    return [
        "train",  # no --recipe: the default one (fast), as `bloodmnist train` runs it
        "--data",
        str(data),
        "--subset",
        str(SUBSET),
        "--epochs",
        str(EPOCHS),
        "--out",
        str(out),
        "--pretrained",
        "none",
        "--seed",
        "42",
        # evaluate's numbers are compared with summary.json's: both fp32 on every CPU (evaluate
        # defaults to fp32 on CPU; `auto` training would be bf16 on AVX512-BF16/AMX CPUs)
        "--precision",
        "fp32",
        "--quiet",
    ]


def _train(
    data: Path, out: Path, *extra: str, fresh: bool = False
) -> subprocess.CompletedProcess[str]:
    args = [*train_args(data, out), *extra]
    result = run_cli(args, cwd=out.parent, timeout=TRAIN_TIMEOUT, fresh=fresh)
    assert result.returncode == 0, describe(result)
    return result


@pytest.fixture(scope="module")
def trained(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """(run folder, finished process) of the module's one real training run."""
    run_dir = tmp_path_factory.mktemp("e2e") / "run"
    return run_dir, _train(shared_data, run_dir)


@pytest.fixture(scope="module")
def run_dir(trained) -> Path:
    return trained[0]


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _digests(root: Path) -> dict[str, str]:
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in _files(root)}


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _history(run_dir: Path) -> tuple[str, list[dict[str, str]]]:
    text = (run_dir / "history.csv").read_text(encoding="utf-8")
    return text.splitlines()[0], list(csv.DictReader(text.splitlines()))


# -- the training run ------------------------------------------------------------------------


def test_train_writes_the_full_run_folder(trained) -> None:
    run_dir, result = trained
    files = _files(run_dir)
    assert RUN_FILES <= files, sorted(RUN_FILES - files)
    leftovers = [f for f in files if Path(f).name.startswith(".") or f.endswith((".tmp", ".part"))]
    assert not leftovers and "run.lock" not in files  # no lock, temp or partial files
    last = json.loads(result.stdout.strip().splitlines()[-1])
    summary = _json(run_dir / "summary.json")
    assert last == {
        "run_dir": str(run_dir),
        "test_acc": summary["test_acc"],
        "test_acc_tta": summary["test_acc_tta"],
    }
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert "epoch 1/2" in log and "epoch 2/2" in log and "test: acc" in log
    for name in FIGURES:
        assert (run_dir / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") >= len(FIGURES)
    assert (run_dir / "report.xlsx").read_bytes()[:2] == b"PK"


PEAK_LR = build_config(recipe=DEFAULT_RECIPE).optim.lr  # the default (fast) recipe's one-cycle peak


def test_history_csv(run_dir: Path) -> None:
    header, rows = _history(run_dir)
    assert header == HISTORY_HEADER
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert float(r["train_loss"]) > 0 and float(r["val_loss"]) > 0
        for key in ("train_acc", "val_acc", "val_auc"):
            assert 0 <= float(r[key]) <= 1, (key, r)
        assert 0 < float(r["lr"]) <= PEAK_LR and float(r["seconds"]) > 0  # the one-cycle peak
    # one-cycle starts at peak / div_factor (10)
    assert float(rows[0]["lr"]) == pytest.approx(PEAK_LR / 10)


def test_summary_matches_predictions(run_dir: Path, shared_data: Path) -> None:
    summary = _json(run_dir / "summary.json")
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    assert not missing, missing
    assert summary["status"] == "completed"
    for key in SUMMARY_KEYS[:7]:
        assert 0 <= summary[key] <= 1, key
    assert summary["epochs_run"] == EPOCHS and 1 <= summary["best_epoch"] <= EPOCHS
    assert summary["train_seconds"] > 0 and summary["test_n"] == SUBSET
    assert summary["device"].split(":")[0] in ("cpu", "cuda")
    assert summary["precision"] in ("fp32", "bf16", "fp16")
    assert summary["pretrained"] == "none" and summary["trained_from_scratch"] is True
    assert summary["seed"] == 42
    assert summary["data_md5"] == SHARED_NPZ_MD5 and summary["data_official"] is False

    with np.load(run_dir / "predictions.npz") as npz:
        labels, probs, probs_tta = npz["test_labels"], npz["test_probs"], npz["test_probs_tta"]
        assert list(npz["class_names"]) == list(CLASS_NAMES)
    with np.load(shared_data) as raw:
        np.testing.assert_array_equal(labels, raw["test_labels"][:SUBSET, 0])
    assert probs.shape == probs_tta.shape == (SUBSET, 8)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(probs_tta.sum(1), 1, atol=1e-5)
    assert not np.array_equal(probs, probs_tta)  # TTA was on
    assert summary["test_acc"] == accuracy_score(labels, probs.argmax(1))
    assert summary["test_acc_tta"] == accuracy_score(labels, probs_tta.argmax(1))
    f1 = f1_score(labels, probs.argmax(1), average="macro", labels=range(8), zero_division=0)
    assert summary["test_macro_f1"] == pytest.approx(f1, abs=1e-12)
    recomputed = compute_metrics(labels, probs_tta, CLASS_NAMES)
    assert summary["test_auc_tta"] == pytest.approx(recomputed["auc"], abs=1e-12)

    _, rows = _history(run_dir)
    val_accs = [float(r["val_acc"]) for r in rows]
    # the default recipe ships its last (annealed) epoch (train.select: last), whatever the
    # validation accuracy did; best_* describe that epoch
    assert summary["best_val_acc"] == pytest.approx(val_accs[-1], abs=1e-5)
    assert summary["best_epoch"] == EPOCHS


@pytest.mark.slow
def test_select_best_ships_the_epoch_with_the_best_validation_accuracy(
    shared_data: Path, tmp_path: Path
) -> None:
    """train.select=best (the reference recipe's): best.pt is the argmax of the validation
    curve, not the final epoch. A high LR makes the curve jump around."""
    run = tmp_path / "run"
    args = [*train_args(shared_data, run)[:-1], "--subset", "128", "--epochs", "4"]
    for kv in ("train.select=best", "optim.lr=0.3", "eval.tta=false", "runtime.reports=false"):
        args += ["--set", kv]
    result = run_cli([*args, "--quiet"], cwd=tmp_path, timeout=TRAIN_TIMEOUT)
    assert result.returncode == 0, describe(result)
    summary = _json(run / "summary.json")
    val_accs = [float(r["val_acc"]) for r in _history(run)[1]]
    assert len(val_accs) == 4 and summary["best_epoch"] == 1 + int(np.argmax(val_accs))
    assert summary["best_val_acc"] == pytest.approx(max(val_accs), abs=1e-5)
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == summary["best_epoch"]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 4


def test_checkpoints_load_and_carry_the_config(run_dir: Path, shared_data: Path) -> None:
    summary = _json(run_dir / "summary.json")
    saved = from_dict(load_yaml(run_dir / "config.yaml"))
    assert saved.data.path == str(shared_data.resolve())
    assert (saved.data.subset, saved.train.epochs, saved.train.seed) == (SUBSET, EPOCHS, 42)
    assert saved.model.pretrained == "none" and saved.eval.tta is True
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    for ckpt in (best, last):
        assert set(ckpt) >= CHECKPOINT_KEYS
        assert from_dict(ckpt["config"]) == saved
        assert ckpt["arch"] == "resnet9" and ckpt["num_classes"] == 8
        assert ckpt["world_size"] == 1 and ckpt["pretrained"]["used"] is False
        model = build_model("resnet9", 8, width=saved.model.width)
        model.load_state_dict(ckpt["model"])  # strict: every key fits
    assert last["epoch"] == EPOCHS and best["epoch"] == summary["best_epoch"]
    assert best["metrics"]["val_acc"] == summary["best_val_acc"]
    assert last["train_state"]["epoch"] == EPOCHS and len(last["train_state"]["history"]) == 2


def test_manifest(run_dir: Path, shared_data: Path) -> None:
    manifest = _json(run_dir / "manifest.json")
    assert manifest["torch"] == torch.__version__
    cmd = manifest["command"]
    assert cmd[1:] == train_args(shared_data, run_dir)
    data = manifest["data"]
    assert data["path"] == str(shared_data.resolve()) and data["md5"] == SHARED_NPZ_MD5
    assert data["official"] is False
    assert {s: data["splits"][s]["n"] for s in ("train", "val", "test")} == dict.fromkeys(
        ("train", "val", "test"), SUBSET
    )
    assert isinstance(manifest["host"]["cpu"], str) and manifest["host"]["cpu"]
    assert manifest["pretrained"]["used"] is False


def test_same_command_gives_the_same_numbers(
    run_dir: Path, shared_data: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    # A new interpreter, not a second fork of the server that ran the first: the two share no
    # hash seed, NumPy global RNG or memory layout. Reports off: they only show the numbers.
    _train(shared_data, again, "--set", "runtime.reports=false", fresh=True)
    assert not (again / "report.html").exists() and not list((again / "figures").iterdir())
    assert f"build them with: bloodmnist report {again}" in (again / "train.log").read_text()
    (h1, rows1), (h2, rows2) = _history(run_dir), _history(again)
    assert h1 == h2
    for r1, r2 in zip(rows1, rows2, strict=True):
        assert {k: v for k, v in r1.items() if k != "seconds"} == {
            k: v for k, v in r2.items() if k != "seconds"
        }
    s1, s2 = _json(run_dir / "summary.json"), _json(again / "summary.json")
    assert {k: v for k, v in s1.items() if k not in TIMING_KEYS} == {
        k: v for k, v in s2.items() if k not in TIMING_KEYS
    }
    with np.load(run_dir / "predictions.npz") as a, np.load(again / "predictions.npz") as b:
        assert np.array_equal(a["test_probs"], b["test_probs"])
        assert np.array_equal(a["test_probs_tta"], b["test_probs_tta"])
    w1 = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    w2 = load_checkpoint(again / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


# -- commands on the finished run ------------------------------------------------------------


def test_report_rebuilds_deleted_artefacts(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "figures")
    (copy / "report.html").unlink()
    result = run_cli(["report", str(copy)], cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    assert _files(copy) == _files(run_dir)
    assert "report.html" in result.stdout
    html = (copy / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == (run_dir / "report.html").read_text(
        encoding="utf-8"
    ).count("data:image/png;base64,")


def test_evaluate_reproduces_the_test_accuracy(run_dir: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "eval.json"
    # fp32 as the training run (on CUDA `auto` would be AMP for evaluate, fp32 was trained)
    args = ["evaluate", str(run_dir), "--no-tta", "--precision", "fp32", "--json", str(out_json)]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    printed = json.loads(result.stdout)
    summary = _json(run_dir / "summary.json")
    assert printed["acc"] == summary["test_acc"]
    assert printed["macro_f1"] == pytest.approx(summary["test_macro_f1"], abs=1e-12)
    assert printed["n"] == SUBSET and printed["split"] == "test"
    assert printed["epoch"] == summary["best_epoch"] and "acc_tta" not in printed
    assert printed["data_md5"] == SHARED_NPZ_MD5
    assert _json(out_json) == printed
    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr  # never overwrites
    nowhere = [*args[:-1], str(tmp_path / "no" / "e.json")]  # said before the evaluation
    again = run_cli(nowhere, cwd=tmp_path)
    assert again.returncode == 2 and f"folder {tmp_path / 'no'} does not exist" in again.stderr
    # with TTA: the run's own mode and the other one beside it, as summary.json has them
    tta = ["evaluate", str(run_dir), "--precision", "fp32"]
    both = json.loads(run_cli(tta, cwd=tmp_path).stdout)
    other = "dihedral8" if summary["tta_mode"] == "reference7" else "reference7"
    assert both["tta_mode"] == summary["tta_mode"]
    assert both["acc_tta"] == pytest.approx(summary["test_acc_tta"], abs=1e-12)
    assert both[f"acc_tta_{other}"] == pytest.approx(summary[f"test_acc_tta_{other}"], abs=1e-12)


def test_train_into_existing_run_refuses_and_changes_nothing(
    run_dir: Path, shared_data: Path
) -> None:
    before = _digests(run_dir)
    result = run_cli(train_args(shared_data, run_dir), cwd=run_dir.parent)
    assert result.returncode == 2, describe(result)
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bloodmnist train: error: run folder") and "not empty" in lines[0]
    assert "--resume" in lines[0]
    assert _digests(run_dir) == before
    assert result.stdout == ""


# -- the report in a real browser ------------------------------------------------------------


def test_real_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    assert_renders(run_dir / "report.html", tmp_path)
