"""The argparse builders of each `bloodmnist` command (main.py assembles them)."""

from __future__ import annotations

import argparse

from bloodmnist.cli.argtypes import pixel_rms, positive_int, threads_int
from bloodmnist.config.resolve import RECIPES


def add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None)


def train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a classifier (the fast recipe by default)")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML config (sections as in config.yaml)")
    p.add_argument(
        "--recipe",
        choices=list(RECIPES),
        default=None,
        help="base settings under --config/flags/--set (default: fast; under a complete saved "
        "config.yaml, the Config defaults alone): fast (a ResNet-9-style net, "
        "34 annealed epochs, 0.05 PFLOP), best (the same net at twice the width for 80 epochs, "
        "0.52 PFLOP: the most accurate single model, see docs/frontier.md) or reference (the "
        "reference README's ResNet-18 recipe)",
    )
    p.add_argument("--data", metavar="FILE.npz", help="local BloodMNIST npz (never modified)")
    p.add_argument("--out", metavar="DIR", help="run folder (default runs/<time>-<name>/)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    add_runtime(p)
    p.add_argument("--pretrained", metavar="auto|none|PATH")
    p.add_argument("--subset", type=int, metavar="N", help="keep the first N samples per split")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field by dotted name, e.g. optim.lr=0.01",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its checkpoints/last.pt",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint or run folder")
    p.add_argument("target", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--data", metavar="FILE.npz")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--all-tta",
        action="store_true",
        help="score every TTA mode beside the model's own (choose a mode with --split val)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the metrics to FILE (new file)")
    p.add_argument(
        "--threads", type=threads_int, default=0, metavar="N", help="CPU threads (0: all)"
    )
    add_runtime(p)


def report_parser(sub) -> None:
    p = sub.add_parser("report", help="rebuild figures, report.xlsx and report.html")
    p.add_argument("run_dir", metavar="RUN_DIR")


def data_parser(sub) -> None:
    p = sub.add_parser("data", help="download, verify, describe, build or audit a dataset")
    acts = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("download", "download and MD5-check the official file"),
        ("verify", "check a file against the official MD5 and the npz layout"),
        ("info", "image size, class names and per-class counts of a file"),
    ):
        a = acts.add_parser(name, help=text)
        a.add_argument("--size", type=int, choices=[28, 64, 128, 224], default=28)
        a.add_argument("--data", metavar="FILE.npz", help="check this file instead of the cache")
        if name == "verify":
            a.add_argument(
                "--official",
                action="store_true",
                help="fail (exit 2) unless it is the official file",
            )
    b = acts.add_parser("build", help="build a MedMNIST-layout npz from class folders or a CSV")
    b.add_argument("src", metavar="SRC", help="folder of class folders, or CSV path,label[,split]")
    b.add_argument("out", metavar="OUT.npz", help="new file (OUT_provenance.csv is written too)")
    b.add_argument("--size", type=int, choices=[28, 64, 128, 224], default=28)
    b.add_argument("--split", default="0.7,0.1,0.2", metavar="TRAIN,VAL,TEST")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--labels", metavar="A,B,...", help="class names in label order")
    b.add_argument("--strict", action="store_true", help="refuse unreadable files (else skip)")
    b.add_argument(
        "--preprocess",
        choices=["medmnist", "resize"],
        default="medmnist",
        help="medmnist (default): centre square crop + bilinear resize (+ JPEG q75 at 28 px), "
        "as predict does for raw smear images; resize: the whole image",
    )
    c = acts.add_parser("audit", help="class balance, duplicates, label conflicts, leakage")
    c.add_argument("file", metavar="FILE.npz")
    c.add_argument("--out", metavar="DIR", help="folder for audit.json/html (default FILE_audit/)")
    c.add_argument(
        "--near-rms", type=pixel_rms, default=6.0, help="near-duplicate RMS limit (0-255)"
    )


def predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="classify image files with a checkpoint or .onnx model")
    p.add_argument("model", metavar="MODEL", help="run folder, .pt checkpoint or exported .onnx")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders (recursive), globs")
    p.add_argument(
        "--out", metavar="FILE.csv|FILE.json", help="new results file (default: CSV on stdout)"
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="average the model's TTA views (PyTorch models; an .onnx exported with --tta "
        "always does)",
    )
    p.add_argument(
        "--uncalibrated",
        action="store_true",
        help="raw softmax: skip the model's temperature (fitted on validation, or fixed)",
    )
    p.add_argument("--top-k", type=int, default=3, metavar="K")
    p.add_argument(
        "--preprocess",
        choices=["auto", "medmnist", "resize", "none"],
        default="auto",
        help="medmnist: BloodMNIST recipe for raw smear crops; auto: medmnist for PBC frames and "
        "images larger than twice the input size, else resize",
    )
    p.add_argument("--batch-size", type=int, default=64, metavar="N")
    p.add_argument(
        "--threads", type=threads_int, default=0, metavar="N", help="CPU threads (0: all cores)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_runtime(p)


def export_parser(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX after a parity check")
    p.add_argument("model", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument(
        "--out", metavar="FILE.onnx", help="new file (default RUN_DIR/model.onnx, model-tta.onnx)"
    )
    p.add_argument("--data", metavar="FILE.npz", help="test images for the parity check")
    p.add_argument("--parity-images", type=int, default=1024, metavar="N")
    p.add_argument(
        "--tta",
        action="store_true",
        help="put the checkpoint's test-time augmentation (its dihedral eval.tta_mode) into the "
        "graph: the recipe's published accuracy from the .onnx file, at one forward per view "
        "(default RUN_DIR/model-tta.onnx)",
    )


def study_parser(sub) -> None:
    p = sub.add_parser(
        "study",
        help="train one run per seed, then mean ± std, bootstrap CIs and a study report",
        description="Any other option is passed to every seed's `bloodmnist train` "
        "(e.g. --data, --epochs, --subset, --set KEY=VALUE).",
        allow_abbrev=False,  # --seed must not silently become --seeds
    )
    p.add_argument("--seeds", metavar="S1,S2,...", help="seeds, one training each (e.g. 42,43,44)")
    p.add_argument("--jobs", type=positive_int, help="seeds trained in parallel (default 1)")
    p.add_argument("--out", metavar="DIR", help="study folder (default runs/<time>-study/)")
    p.add_argument("--resume", metavar="STUDY_DIR", help="continue an unfinished study")
    p.add_argument(
        "--adopt",
        action="append",
        metavar="RUN_DIR",
        help="a run trained earlier with the study's options stands for its seed (repeatable; "
        "linked, never moved or modified)",
    )
    add_bootstrap(p)


def add_bootstrap(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--n-boot", type=positive_int, default=1000, help="bootstrap resamples (default 1000)"
    )
    p.add_argument("--boot-seed", type=int, default=0, help="bootstrap RNG seed (default 0)")


def compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="paired comparison of two runs or studies on one test set")
    p.add_argument("a", metavar="RUN_OR_STUDY_A")
    p.add_argument("b", metavar="RUN_OR_STUDY_B")
    p.add_argument(
        "--variant",
        choices=["auto", "plain", "tta"]
        + [f"tta_{m}" for m in ("reference7", "dihedral8", "dihedral16", "dihedral24")],
        default="auto",
        help="test predictions to compare (auto: TTA when both have it, under one TTA mode)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the result to FILE (new file)")
    add_bootstrap(p)


def serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="HTTP API and web page: classify images, Grad-CAM overlays")
    p.add_argument("model", metavar="MODEL", help="run folder, .pt checkpoint or exported .onnx")
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1: this host)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="server processes, each with the model")
    p.add_argument("--max-batch", type=int, default=64, metavar="B", help="images per forward pass")
    p.add_argument("--max-request-mb", type=float, default=32.0, metavar="MB")
    p.add_argument("--max-files", type=int, default=64, metavar="N", help="files per request")
    p.add_argument("--max-pixels", type=int, default=25_000_000, metavar="PX", help="per image")
    p.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="seconds per request's work"
    )
    p.add_argument(
        "--upload-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds for a request's head, then its body, to arrive (else 408 and closed)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=32,
        metavar="N",
        help="open connections per worker; more get HTTP 503 (bounds memory: each request may "
        "hold its body a few times over)",
    )
    p.add_argument(
        "--threads", type=threads_int, default=0, metavar="N", help="CPU threads (0: all cores)"
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info"])
    p.add_argument(
        "--uncalibrated",
        action="store_true",
        help="raw softmax: skip the model's temperature (fitted on validation, or fixed)",
    )
    add_runtime(p)


def explain_parser(sub) -> None:
    p = sub.add_parser("explain", help="Grad-CAM pictures (original | heat map | overlay)")
    p.add_argument("model", metavar="MODEL", help="run folder or .pt checkpoint")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="files, folders, globs")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for <name>_gradcam.png")
    p.add_argument("--class", dest="target_class", metavar="NAME", help="default: the predicted")
    p.add_argument("--preprocess", choices=["auto", "medmnist", "resize", "none"], default="auto")
    add_runtime(p)


def ensemble_parser(sub) -> None:
    p = sub.add_parser(
        "ensemble",
        help="average finished runs' probabilities on val and test into an ensemble folder",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished runs on one data file")
    p.add_argument("--out", metavar="DIR", help="new folder (default runs/<time>-ensemble/)")
    p.add_argument("--data", metavar="FILE.npz", help="the members' data file if moved")
    p.add_argument(
        "--threads", type=threads_int, default=0, metavar="N", help="CPU threads (0: all)"
    )
    p.add_argument(
        "--reports", action=argparse.BooleanOptionalAction, default=True, help="figures, reports"
    )
    p.add_argument("--quiet", action="store_true", help="no log lines")
    add_runtime(p)


def tune_parsers(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="hyper-parameter search on Optuna: resumable, parallel, across machines",
        description="Any other option is a fixed train option of every trial (e.g. --data, "
        "--recipe, --subset, --set KEY=VALUE). Running the same command again continues.",
        allow_abbrev=False,
    )
    p.add_argument("--space", metavar="SPACE.yaml", help="keys, ranges, sampler and pruner")
    p.add_argument("--trials", type=positive_int, help="COMPLETE + PRUNED trials to reach")
    p.add_argument("--jobs", type=positive_int, default=1, help="trials side by side here")
    p.add_argument("--storage", metavar="URL", help="default sqlite:///DIR/study.db")
    p.add_argument("--study-name", metavar="NAME", help="default: the space file's name")
    p.add_argument("--timeout", type=positive_int, metavar="S", help="start no trial after S s")
    p.add_argument("--out", metavar="DIR", help="search folder (default runs/tune-<space>/)")
    p.add_argument("--report", metavar="DIR", help="only rebuild DIR's trials.csv/best.yaml/report")
    r = sub.add_parser("runs", help="table of the run folders under a folder")
    r.add_argument("dir", metavar="DIR", nargs="?", default="runs")
    r.add_argument(
        "--sort",
        default="name",
        metavar="KEY",
        help="name|recipe|arch|seed|epochs|val_acc|test_acc|test_acc_tta|pflop|seconds|status",
    )
