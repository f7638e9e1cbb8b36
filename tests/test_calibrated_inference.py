"""A checkpoint's validation-fitted temperature, applied by predict, export (ONNX) and serve.

The model is the real ResNet-18 with a fitted head of test_predict.py; the temperatures are
written into its checkpoint the way training's final evaluation writes them
(`add_to_checkpoint`), so every engine reads them from the file as it would after `train`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import requests

from bloodmnist import CLASS_NAMES
from bloodmnist.evaluation.calibration import apply_temperature, calibrate
from bloodmnist.inference.engines import OnnxEngine, open_engine
from bloodmnist.inference.preprocess import load_image
from bloodmnist.training.checkpoint import add_to_checkpoint, load_checkpoint
from conftest import describe, run_cli
from serve_helpers import post_files, server
from test_predict import PBC, fit_head_checkpoint

T_PLAIN, T_TTA = 2.5, 0.5  # far from 1, so that applying the wrong one (or none) shows


@pytest.fixture(scope="module")
def ckpt(shared_data: Path, tmp_path_factory) -> Path:
    if not PBC.is_dir():
        pytest.skip(f"raw sample images not found at {PBC}")
    path = tmp_path_factory.mktemp("run") / "checkpoints" / "best.pt"
    fit_head_checkpoint(shared_data, path)
    add_to_checkpoint(path, {"temperature": {"plain": T_PLAIN, "tta": T_TTA}})
    return path


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    files = sorted(PBC.rglob("*.jpg"))[:24]  # the raw JPEGs of the first classes
    return np.stack([load_image(f, 28).pixels for f in files])


def _probs(rows: list[dict]) -> np.ndarray:
    return np.array([[r["probs"][n] for n in CLASS_NAMES] for r in rows])


def test_checkpoint_keeps_weights_and_gains_temperature(ckpt: Path) -> None:
    state = load_checkpoint(ckpt)
    assert state["temperature"] == {"plain": T_PLAIN, "tta": T_TTA}
    assert state["epoch"] == 0 and "fc.weight" in state["model"]


def test_torch_engine_applies_the_mode_s_temperature(ckpt: Path, images: np.ndarray) -> None:
    cal = open_engine(ckpt, "cpu", "fp32")
    raw = open_engine(ckpt, "cpu", "fp32", calibrated=False)
    assert (
        cal.info.applied_temperature(False) == T_PLAIN
        and cal.info.applied_temperature(True) == T_TTA
    )
    assert raw.info.applied_temperature(False) is None and raw.info.temperature["plain"] == T_PLAIN
    for tta, t in ((False, T_PLAIN), (True, T_TTA)):
        p_raw, p_cal = raw.probs(images, tta=tta), cal.probs(images, tta=tta)
        np.testing.assert_allclose(p_cal, calibrate(p_raw, t), atol=1e-6)
        np.testing.assert_allclose(p_cal.sum(1), 1.0, atol=1e-5)
        assert (p_cal.argmax(1) == p_raw.argmax(1)).all()  # a temperature never changes the class
    # T = 2.5 softens the plain output, T = 0.5 sharpens the TTA mean
    assert cal.probs(images).max(1).mean() < raw.probs(images).max(1).mean()
    assert cal.probs(images, tta=True).max(1).mean() > raw.probs(images, tta=True).max(1).mean()


def test_predict_cli_reports_and_skips_the_temperature(ckpt: Path, tmp_path: Path) -> None:
    out = {}
    for flag in ("", "--uncalibrated"):
        path = tmp_path / f"pred{flag}.json"
        args = ["predict", str(ckpt), str(PBC / "basophil"), "--out", str(path), "--quiet"]
        result = run_cli([*args, *([flag] if flag else [])], cwd=tmp_path)
        assert result.returncode == 0, describe(result)
        out[flag] = json.loads(path.read_text())
    assert out[""]["temperature"] == T_PLAIN and out["--uncalibrated"]["temperature"] is None
    cal, raw = _probs(out[""]["results"]), _probs(out["--uncalibrated"]["results"])
    assert len(cal) == len(list((PBC / "basophil").glob("*.jpg"))) > 0
    np.testing.assert_allclose(cal, calibrate(raw, T_PLAIN), atol=2e-6)  # 6 decimals in JSON


def test_onnx_bakes_in_the_plain_temperature(ckpt: Path, shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    args = ["export", str(ckpt), "--out", str(out), "--data", str(shared_data)]
    result = run_cli([*args, "--parity-images", "256"], cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    report = json.loads(result.stdout)
    assert report["temperature"] == T_PLAIN and report["parity"]["max_abs_diff_prob"] <= 1e-4
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert float(meta["bloodmnist.temperature"]) == T_PLAIN
    images = np.load(shared_data)["test_images"][:64]
    onnx_cal, onnx_raw = OnnxEngine(out), OnnxEngine(out, calibrated=False)
    assert onnx_cal.info.applied_temperature() == T_PLAIN
    assert onnx_raw.info.applied_temperature() is None
    x_logits = onnx_raw.session.run(["logits"], {"input": _normalized(onnx_raw, images)})[0].astype(
        np.float64
    )
    np.testing.assert_allclose(
        onnx_cal.probs(images), apply_temperature(x_logits, T_PLAIN), atol=1e-5
    )
    np.testing.assert_allclose(onnx_raw.probs(images), apply_temperature(x_logits, 1.0), atol=1e-5)
    torch_cal = open_engine(ckpt, "cpu", "fp32").probs(images)
    assert np.abs(onnx_cal.probs(images) - torch_cal).max() <= 1e-4


def _normalized(engine: OnnxEngine, images: np.ndarray) -> np.ndarray:
    from bloodmnist.inference.preprocess import normalize

    return normalize(images, engine.info.mean, engine.info.std)


def test_serve_applies_and_reports_the_temperature(ckpt: Path, tmp_path: Path) -> None:
    """A real server, then a two-worker one with --uncalibrated (its settings reach each worker
    through the environment), against the raw engine in this process."""
    files = sorted((PBC / "basophil").glob("*.jpg"))[:4]
    raw = open_engine(ckpt, "cpu", "fp32", calibrated=False)
    pixels = np.stack([load_image(f, 28).pixels for f in files])
    cases = (((), {"plain": T_PLAIN, "tta": T_TTA}), (("--workers", "2", "--uncalibrated"), None))
    for options, temps in cases:
        with server(ckpt, *options, "--device", "cpu", log=tmp_path / "serve.log") as url:
            model = requests.get(url + "/v1/model", timeout=30).json()
            assert model["temperature"] == (temps or {"plain": None, "tta": None})
            for tta in (False, True):
                out = post_files(url, files, tta=str(tta).lower())
                t = temps["tta" if tta else "plain"] if temps else None
                assert out["temperature"] == t
                expected = calibrate(raw.probs(pixels, tta=tta), t)
                np.testing.assert_allclose(_probs(out["results"]), expected, atol=1e-5)


def test_a_checkpoint_without_temperature_is_unchanged(shared_data: Path, tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    fit_head_checkpoint(shared_data, path, n=64)
    engine = open_engine(path, "cpu", "fp32")
    assert engine.info.temperature is None and engine.info.applied_temperature() is None
    images = np.load(shared_data)["test_images"][:16]
    np.testing.assert_array_equal(
        engine.probs(images), open_engine(path, "cpu", "fp32", calibrated=False).probs(images)
    )
