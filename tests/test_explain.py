"""Grad-CAM: the captum wrapper, `bloodmnist explain`, and the report's Grad-CAM figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import LayerGradCam
from PIL import Image

from bloodmnist.cli.main import main
from bloodmnist.data.loader import to_tensor
from bloodmnist.explain.gradcam import engine_cams, feature_layer
from bloodmnist.inference.preprocess import load_image
from bloodmnist.inference.torch_engine import TorchEngine
from bloodmnist.reporting.gradcam_figure import pick, plot_gradcam
from conftest import describe, run_cli
from serve_helpers import pbc_files, pbc_head_checkpoint


@pytest.fixture(scope="module")
def ckpt(shared_data: Path, tmp_path_factory) -> Path:
    return pbc_head_checkpoint(shared_data, tmp_path_factory)


@pytest.fixture(scope="module")
def engine(ckpt: Path) -> TorchEngine:
    return TorchEngine(ckpt, device="cpu", precision="fp32", threads=1)


def test_maps_are_layer4_grad_cam_scaled_to_one(engine: TorchEngine, shared_data: Path) -> None:
    images = np.load(shared_data)["test_images"][:6]
    preds = engine.probs(images).argmax(1).tolist()
    cams = engine_cams(engine, images, preds)
    assert cams.shape == (6, 28, 28) and cams.dtype == np.float32
    assert cams.min() >= 0 and np.allclose(cams.reshape(6, -1).max(1), 1.0)
    # The pooling layer's input is ResNet-18's layer4 output: same maps as captum on layer4.
    assert isinstance(feature_layer(engine.model), torch.nn.AdaptiveAvgPool2d)
    x = engine.normalize(to_tensor(images, engine.rt.device))
    ref = LayerGradCam(engine.model, engine.model.layer4).attribute(
        x, target=preds, relu_attributions=True
    )
    ref = torch.nn.functional.interpolate(ref, (28, 28), mode="bilinear").detach()[:, 0].numpy()
    ref = ref / ref.reshape(6, -1).max(1)[:, None, None]
    assert np.abs(cams - ref).max() < 1e-5
    other = engine_cams(engine, images, [(p + 1) % 8 for p in preds])
    assert np.abs(other - cams).max() > 0.1  # another class, another map


def test_explain_command_writes_panels_and_refuses_overwrite(
    ckpt: Path, engine: TorchEngine, tmp_path: Path, capsys
) -> None:
    files = pbc_files()[::32]  # 4 raw JPEGs
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    out = tmp_path / "cams"
    args = ["explain", str(ckpt), *map(str, files), str(bad), "--out", str(out), "--device", "cpu"]
    result = run_cli([*args, "--precision", "fp32"], cwd=tmp_path)
    assert result.returncode == 1, describe(result)
    rows = json.loads(result.stdout)
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["error"]
    assert "broken.jpg" in result.stderr and "not an image" in rows[4]["error"]
    images = np.stack([load_image(p, 28).pixels for p in files])
    expected = [engine.info.class_names[i] for i in engine.probs(images).argmax(1)]
    assert [r["pred"] for r in rows[:4]] == expected == [r["class"] for r in rows[:4]]
    for row, path in zip(rows, files, strict=False):
        assert Path(row["out"]) == out / f"{path.stem}_gradcam.png"
        with Image.open(row["out"]) as img:
            assert img.size == (3 * 224 + 16, 224 + 26)
            heat = np.asarray(img.convert("RGB"))[22:, 232:456]
        assert len(np.unique(heat.reshape(-1, 3), axis=0)) > 50  # a real heat map, not flat
    before = {p: p.read_bytes() for p in out.iterdir()}
    assert main(args) == 2  # in-process from here: the same CLI without another start-up
    assert "already exists" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.iterdir()} == before
    c2 = tmp_path / "c2"
    assert main(["explain", str(ckpt), str(files[0]), "--out", str(c2), "--class", "platelet"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["class"] == "platelet"
    assert [p.name for p in c2.iterdir()] == [f"{files[0].stem}_gradcam.png"]


def test_explain_refuses_onnx_and_unknown_class(ckpt: Path, tmp_path: Path, capsys) -> None:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"never read")
    img = str(pbc_files()[0])
    for args, text in (
        ([str(onnx), img], "ONNX file does not give"),
        ([str(ckpt), img, "--class", "dragon"], "--class 'dragon'"),
    ):
        assert main(["explain", *args, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert text in err and len([line for line in err.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "o").exists()


def test_report_figure_picks_correct_and_wrong_per_class(
    ckpt: Path, engine: TorchEngine, shared_data: Path
) -> None:
    data = np.load(shared_data)
    images, labels = data["test_images"][:96], data["test_labels"][:96, 0].astype(np.int64)
    probs = engine.probs(images)
    run = ckpt.parent.parent
    np.savez(
        run / "predictions.npz",
        test_labels=labels,
        test_probs=probs,
        test_probs_tta=probs,
        sample_images=images[:32],
        sample_labels=labels[:32],
        class_names=np.array(engine.info.class_names),
    )
    pred = probs.argmax(1)
    chosen = pick(labels, pred, 8)
    for c, (ok, wrong) in enumerate(chosen):
        assert ok is None or (labels[ok] == c and pred[ok] == c)
        assert wrong is None or (labels[wrong] == c and pred[wrong] != c)
        if ok is not None:  # the first such image
            assert not ((labels[:ok] == c) & (pred[:ok] == c)).any()
    assert sum(ok is not None for ok, _ in chosen) >= 3
    path = plot_gradcam(run, run / "gradcam.png")
    with Image.open(path) as img:
        assert img.size[0] > 600 and img.size[1] > 1200


def test_a_panel_created_during_explain_is_kept(
    ckpt: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process writes one of the output names after the CLI checked them: that file is
    kept, its row is an error, the other panels are written, the exit code is 1."""
    import bloodmnist.cli.serve_commands as commands

    files = pbc_files()[:2]
    out = tmp_path / "cams"
    names = commands._out_names

    def names_then_race(paths: list[Path], folder: Path) -> list[Path]:
        targets = names(paths, folder)
        folder.mkdir()
        targets[0].write_bytes(b"theirs")
        return targets

    monkeypatch.setattr(commands, "_out_names", names_then_race)
    assert main(["explain", str(ckpt), *map(str, files), "--out", str(out)]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows] == ["error", "ok"]
    assert "already exists; nothing was overwritten" in rows[0]["error"]
    assert (out / f"{files[0].stem}_gradcam.png").read_bytes() == b"theirs"
    assert (out / f"{files[1].stem}_gradcam.png").stat().st_size > 1000
