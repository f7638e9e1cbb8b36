"""Any input size: data.size from the npz, the stem per size, and a 64-px model trained, reported,
predicted on raw JPEGs and exported with the user's class names."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from torch.utils.flop_counter import FlopCounterMode

from bloodmnist.config import Config
from bloodmnist.data.build import build_dataset
from bloodmnist.data.source import fit_config, load_data
from bloodmnist.errors import DataError
from bloodmnist.model import build_model
from bloodmnist.model.stems import DEFAULT_STEM, resolve_stem
from conftest import SHARED_DATA, describe, run_cli

SHARED_64 = SHARED_DATA / "bloodmnist_pbc_64.npz"
PBC = SHARED_DATA / "pbc_sample"
NAMES = ["Baso", "Eos", "Ery", "IG", "Lympho", "Mono", "Neutro", "Plt"]
ROWS = 24  # per split of the small 64-px file


@pytest.fixture(scope="module")
def shared_64() -> Path:
    if not SHARED_64.is_file():
        pytest.skip(f"real data not found at {SHARED_64} (see ../shared/data/README.md)")
    return SHARED_64


@pytest.mark.parametrize(
    ("size", "stem"),
    [(28, "auto"), (64, "auto"), (128, "auto"), (224, "auto"), (64, "s1"), (64, "imagenet")],
)
def test_stems_give_logits_and_take_imagenet_weights(size: int, stem: str) -> None:
    imagenet = torchvision.models.resnet18(weights=None).state_dict()  # the IMAGENET1K layout
    model = build_model("resnet18", 5, size, state_dict=imagenet, stem=stem).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, size, size))
    assert out.shape == (1, 5)
    kind = resolve_stem(stem, size)
    k = 7 if kind == "imagenet" else 3
    assert model.conv1.weight.shape == (64, 3, k, k)
    assert model.conv1.stride == ((1, 1) if kind == "s1" else (2, 2))
    assert isinstance(model.maxpool, torch.nn.MaxPool2d) == (kind == "imagenet")
    if kind == "imagenet":  # the ImageNet filters are used as they are
        assert torch.equal(model.conv1.weight, imagenet["conv1.weight"])
    assert torch.equal(model.layer4[1].conv2.weight, imagenet["layer4.1.conv2.weight"])


def test_auto_stem_per_size_and_its_compute() -> None:
    assert DEFAULT_STEM == {28: "s1", 64: "s2", 128: "imagenet", 224: "imagenet"}
    gflop = {}
    for size in DEFAULT_STEM:  # counted on the meta device: shapes only, no arithmetic run
        with torch.device("meta"):
            model = build_model("resnet18", 8, size).eval()
            x = torch.empty(1, 3, size, size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
        gflop[size] = counter.get_total_flops() / 2e9
    assert 0.45 < gflop[28] < 0.47  # the reference: 0.457 G multiply-adds (0.91 GFLOP)
    # Stage 1 at 28, 32, 32 and 56 px: within 1.4x of the 28-px model at 64 and 128 px.
    assert 1.0 < gflop[64] / gflop[28] < 1.4 and 1.0 < gflop[128] / gflop[28] < 1.4
    assert 2.5 < gflop[224] / gflop[28] < 4.5


def test_unsupported_size_is_one_clear_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for s in ("train", "val", "test"):
        arrays[f"{s}_images"] = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
        arrays[f"{s}_labels"] = (np.arange(8) % 8).astype(np.uint8)[:, None]
    np.savez(tmp_path / "d32.npz", **arrays)
    with pytest.raises(DataError) as err:  # what `train --data d32.npz` prints, before any step
        load_data(str(tmp_path / "d32.npz"), 28, 8, None, progress=False, follow_file=True)
    text = str(err.value)
    assert "32x32" in text and "28, 64, 128, 224" in text and "data build --size" in text
    assert "\n" not in text


def test_size_and_classes_follow_the_file(shared_64: Path) -> None:
    data, _ = load_data(str(shared_64), 28, 8, 4, progress=False, follow_file=True)
    cfg = fit_config(Config(), data)
    assert (cfg.data.size, cfg.model.num_classes, cfg.model.class_names) == (64, 8, None)
    with pytest.raises(DataError, match="holds 64x64 images but data.size is 28"):
        load_data(str(shared_64), 28, 8, 4, progress=False)  # a 28-px checkpoint's data


def test_pbc_sample_at_64_reproduces_shared_64_rows(shared_64: Path, tmp_path: Path) -> None:
    """At 64 px the build makes no JPEG round trip, as the shared 64-px file was made."""
    res = build_dataset(PBC, tmp_path / "pbc64.npz", size=64)
    index = {
        r["file"]: int(r["npz_test_index"]) for r in csv.DictReader((PBC / "labels.csv").open())
    }
    with np.load(shared_64) as ref, np.load(res.out) as built:
        ref_test = ref["test_images"]
        for row in csv.DictReader(res.provenance.open()):
            ours = built[f"{row['split']}_images"][int(row["index"])]
            assert ours.shape == (64, 64, 3)
            assert np.array_equal(ours, ref_test[index[row["source_path"]]]), row["source_path"]


@pytest.fixture(scope="module")
def run_64(shared_64: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch on the first 32 rows per split of the 64-px file, saved with user names."""
    root = tmp_path_factory.mktemp("size64")
    with np.load(shared_64) as z:
        arrays = {k: z[k][:ROWS] for k in z.files}
    np.savez_compressed(root / "mine64.npz", **arrays, class_names=np.array(NAMES))
    args = [
        "train",
        "--recipe",
        "reference",
        "--data",
        "mine64.npz",
        "--epochs",
        "1",
        "--out",
        "run",
        "--pretrained",
    ]
    args += ["none", "--precision", "fp32", "--set", "runtime.threads=1", "--quiet"]
    args += ["--set", "eval.compare_tta=false"]
    result = run_cli(args, cwd=root, timeout=300)
    assert result.returncode == 0, describe(result)
    return root / "run"


def test_64px_run_uses_size_and_names(run_64: Path) -> None:
    summary = json.loads((run_64 / "summary.json").read_text())
    assert summary["image_size"] == 64 and summary["class_names"] == NAMES
    cfg = yaml.safe_load((run_64 / "config.yaml").read_text())
    assert cfg["data"]["size"] == 64 and cfg["model"]["class_names"] == NAMES
    ckpt = torch.load(run_64 / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    assert ckpt["config"]["model"]["class_names"] == NAMES
    assert ckpt["model"]["conv1.weight"].shape == (64, 3, 3, 3)  # auto at 64 px: s2
    assert ckpt["stem"] == "s2" and cfg["model"]["stem"] == "auto"  # what auto resolved to
    page = (run_64 / "report.html").read_text()
    assert all(f">{name}<" in page for name in NAMES), "per-class tables name the user's classes"
    with np.load(run_64 / "predictions.npz") as preds:
        assert list(preds["class_names"]) == NAMES


def test_64px_predict_and_export_on_raw_jpegs(run_64: Path, tmp_path: Path) -> None:
    files = sorted((PBC / "monocyte").glob("*.jpg"))[:4]
    out = tmp_path / "torch.csv"
    args = ["predict", str(run_64), *map(str, files), "--out", str(out), "--precision", "fp32"]
    result = run_cli([*args, "--quiet", "--threads", "1"], cwd=tmp_path, timeout=120)
    assert result.returncode == 0, describe(result)
    rows = list(csv.DictReader(out.open()))
    assert [f"prob_{n}" for n in NAMES] == [c for c in rows[0] if c.startswith("prob_")]
    assert {r["pred"] for r in rows} <= set(NAMES) and {r["preprocess"] for r in rows} == {
        "medmnist"
    }
    onnx = tmp_path / "m64.onnx"
    exp = run_cli(["export", str(run_64), "--out", str(onnx)], cwd=tmp_path, timeout=180)
    assert exp.returncode == 0, describe(exp)
    onnx_csv = tmp_path / "onnx.csv"
    args = ["predict", str(onnx), *map(str, files), "--out", str(onnx_csv), "--threads", "1"]
    result = run_cli(args, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, describe(result)
    onnx_rows = list(csv.DictReader(onnx_csv.open()))
    assert [r["pred"] for r in onnx_rows] == [r["pred"] for r in rows]
    for a, b in zip(rows, onnx_rows, strict=True):
        for n in NAMES:
            assert abs(float(a[f"prob_{n}"]) - float(b[f"prob_{n}"])) < 1e-3


@pytest.mark.parametrize("arch", ["resnet9", "resnet9w"])
def test_resnet9_stems_at_64px_set_resolution_and_compute(arch: str, tmp_path: Path) -> None:
    """s1 keeps 64x64, s2 halves it, imagenet quarters it: the FLOPs follow, ONNX agrees."""
    import onnxruntime as ort

    from bloodmnist.inference.export import export_graph
    from bloodmnist.model.flops import flops_per_image

    x = torch.rand(3, 3, 64, 64)
    forward = {}
    for stem in ("s1", "s2", "imagenet"):
        torch.manual_seed(0)
        model = build_model(arch, 8, 64, width=0.25, stem=stem).eval()
        with torch.no_grad():
            stage1 = model.features[0](x)
            logits = model(x)
        assert stage1.shape[-1] == {"s1": 64, "s2": 32, "imagenet": 16}[stem]
        forward[stem] = flops_per_image(model, 64)["forward"]
        export_graph(model, tmp_path / f"{stem}.onnx", 64)
        session = ort.InferenceSession(str(tmp_path / f"{stem}.onnx"))
        onnx_logits = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert np.abs(onnx_logits - logits.numpy()).max() < 1e-4
    # Everything after the stem runs at a quarter of the pixels per halving.
    assert 3.9 < forward["s1"] / forward["s2"] < 4.1
    assert 2.5 < forward["s2"] / forward["imagenet"] < 4.5
    for size in (128, 224):  # auto there is the imagenet geometry, whitened patches included
        model = build_model(arch, 8, size, width=0.125).eval()
        with torch.no_grad():
            assert model.features[0](torch.zeros(1, 3, size, size)).shape[-1] == size // 4
    # auto follows the size as for the ResNet-18: the 28-px layout at 28, stride 2 at 64 px
    auto28, auto64 = build_model(arch, 8, 28), build_model(arch, 8, 64)
    assert auto28.features[0](torch.zeros(1, 3, 28, 28)).shape[-1] == 28
    assert auto64.features[0](torch.zeros(1, 3, 64, 64)).shape[-1] == 32


def test_a_stem_that_leaves_too_few_pixels_is_one_clear_line(tmp_path: Path) -> None:
    from bloodmnist.errors import ConfigError

    with pytest.raises(ConfigError, match="leaves 7 px of a 28-px image"):
        build_model("resnet9", 8, 28, stem="imagenet")
    args = ["train", "--data", str(SHARED_DATA / "bloodmnist_pbc_28.npz"), "--subset", "16"]
    args += ["--set", "model.stem=imagenet", "--out", "run", "--quiet"]
    if not (SHARED_DATA / "bloodmnist_pbc_28.npz").is_file():
        pytest.skip("real data not found (see ../shared/data/README.md)")
    result = run_cli(args, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, describe(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "model.stem imagenet leaves 7 px" in lines[-1]
    assert not list(tmp_path.glob("run/checkpoints/*.pt"))


def test_checkpoints_of_the_stemless_resnet9_load_as_s1() -> None:
    """A ResNet-9 checkpoint written before it took `model.stem` says `auto` and has no
    `stem` entry: it ran s1 at 64 px, and is rebuilt so (same weights, right network)."""
    from bloodmnist.model import model_from_config
    from bloodmnist.training.checkpoint import checkpoint_config

    cfg = Config()
    cfg.model.arch, cfg.model.width, cfg.data.size = "resnet9", 0.25, 64
    old = {"config": cfg.to_dict()}  # as saved then: stem auto, no "stem" key
    assert checkpoint_config(old).model.stem == "s1"
    model = model_from_config(checkpoint_config(old))
    assert model.features[0](torch.zeros(1, 3, 64, 64)).shape[-1] == 64
    new = {"config": cfg.to_dict(), "stem": "s2"}  # written now: the stem is on record
    assert checkpoint_config(new).model.stem == "auto"
    assert model_from_config(checkpoint_config(new)).features[0][0].stride == (2, 2)
    cfg.model.arch = "resnet18"  # the ResNet-18 always followed the size: unchanged
    assert checkpoint_config({"config": cfg.to_dict()}).model.stem == "auto"
