"""`bloodmnist export --tta`: the checkpoint's TTA views inside the ONNX graph, equal to what
`evaluate`/`predict --tta` compute, used by predict and serve; modes it cannot hold refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import requests
import torch

from bloodmnist.config import Config
from bloodmnist.evaluation.predict import rot90
from bloodmnist.inference.engines import OnnxEngine
from bloodmnist.inference.export import default_out
from bloodmnist.inference.torch_engine import TorchEngine
from conftest import describe, error_lines, run_cli
from serve_helpers import PBC, pbc_files, post_files, server
from test_predict import fit_head_checkpoint

TEMPS = {"plain": 0.8, "tta": 0.6}


def _checkpoint(shared_data: Path, folder: Path, tta_mode: str) -> Path:
    """A small resnet9 with a head fitted on real images, the given TTA mode and temperatures."""
    cfg = Config()
    cfg.model.arch, cfg.model.width, cfg.eval.tta_mode = "resnet9", 0.25, tta_mode
    path = folder / "checkpoints" / "best.pt"
    fit_head_checkpoint(shared_data, path, cfg=cfg, temperature=TEMPS)
    return path


@pytest.fixture(scope="module")
def ckpt(shared_data: Path, tmp_path_factory) -> Path:
    # dihedral24: the poses, the zoom (grid_sample) and the blur (reflect pad, grouped conv)
    return _checkpoint(shared_data, tmp_path_factory.mktemp("run"), "dihedral24")


@pytest.fixture(scope="module")
def exported(ckpt: Path, shared_data: Path) -> tuple[Path, dict]:
    out = ckpt.parent.parent / "model-tta.onnx"
    args = ["export", str(ckpt.parent.parent), "--tta", "--data", str(shared_data)]
    result = run_cli([*args, "--parity-images", "256"], cwd=out.parent)
    assert result.returncode == 0, describe(result)
    assert "Warning" not in result.stderr, result.stderr  # torch's constant-folding notices
    return out, json.loads(result.stdout)


def test_rot90_is_torch_rot90() -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)  # not square
    for k in range(-1, 6):
        assert torch.equal(rot90(x, k), torch.rot90(x, k, dims=(2, 3))), k


def test_tta_graph_passes_parity_and_records_its_views(exported: tuple[Path, dict]) -> None:
    out, report = exported
    assert report["onnx"] == str(out) and out.is_file()  # RUN_DIR/model-tta.onnx by default
    assert report["tta_mode"] == "dihedral24" and report["temperature"] == TEMPS["tta"]
    parity = report["parity"]
    assert parity["n"] == 256 and parity["argmax_agree"] == 256
    assert parity["max_abs_diff_prob"] <= 1e-4
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["bloodmnist.tta_mode"] == "dihedral24" and meta["bloodmnist.tta_views"] == "24"
    # T_tta under its own key: a reader that predates --tta finds no (wrong) one-view T
    assert float(meta["bloodmnist.temperature_tta"]) == TEMPS["tta"]
    assert "bloodmnist.temperature" not in meta
    assert "TTA inside" in meta["bloodmnist.input"]
    assert "temperature_tta" in meta["bloodmnist.input"]


def test_tta_graph_equals_the_torch_engines_tta(exported, ckpt: Path, shared_data: Path) -> None:
    out, _ = exported
    images = np.load(shared_data)["val_images"][:96]
    torch_engine = TorchEngine(ckpt, device="cpu", precision="fp32")
    want = torch_engine.probs(images, tta=True)
    raw_engine = TorchEngine(ckpt, device="cpu", precision="fp32", calibrated=False)
    raw_want, raw_plain = raw_engine.probs(images, tta=True), raw_engine.probs(images)
    engine = OnnxEngine(out, threads=1)
    assert engine.supports_tta and engine.info.tta_baked == "dihedral24"
    assert engine.info.applied_temperature(False) == TEMPS["tta"]
    for tta in (False, True):  # the views are the model: the flag changes nothing
        got = engine.probs(images, tta=tta)
        assert np.abs(got - want).max() <= 1e-4
    assert np.abs(raw_want - raw_plain).max() > 1e-2  # the views do change the answer
    raw = OnnxEngine(out, threads=1, calibrated=False)  # softmax(logits): the views' raw mean
    assert raw.info.applied_temperature(True) is None
    assert np.abs(raw.probs(images) - raw_want).max() <= 1e-4


def test_predict_and_serve_use_the_tta_graph(exported, tmp_path: Path) -> None:
    if not PBC.is_dir():
        pytest.skip(f"raw sample images not found at {PBC}")
    out, _ = exported
    rows = {}
    for flags in ([], ["--tta"], ["--uncalibrated"]):
        dest = tmp_path / f"p{len(rows)}.json"
        result = run_cli(["predict", str(out), str(PBC), "--out", str(dest), *flags], cwd=tmp_path)
        assert result.returncode == 0, describe(result)
        doc = json.loads(dest.read_text())
        t = None if flags == ["--uncalibrated"] else TEMPS["tta"]
        assert doc["tta"] is True and doc["temperature"] == t, flags
        rows[len(rows)] = {r["path"]: r["probs"] for r in doc["results"]}
    assert rows[0] == rows[1] and len(rows[0]) == 128 and rows[2] != rows[0]
    with server(out, log=tmp_path / "serve.log") as url:
        info = requests.get(url + "/v1/model", timeout=10).json()
        assert info["tta"] is True and info["tta_baked"] == "dihedral24"
        assert info["temperature"] == {"plain": TEMPS["tta"], "tta": TEMPS["tta"]}
        files = pbc_files()[:8]
        for params in ({}, {"tta": "true"}):
            answer = post_files(url, files, **params)
            assert answer["tta"] is True and answer["temperature"] == TEMPS["tta"]
            assert [r["file"] for r in answer["results"]] == [p.name for p in files]
            for path, row in zip(files, answer["results"], strict=True):
                want = rows[0][str(path)]
                assert max(abs(row["probs"][k] - want[k]) for k in want) <= 1e-5


def test_reference_views_are_refused_and_nothing_is_written(shared_data, tmp_path) -> None:
    ckpt = _checkpoint(shared_data, tmp_path / "run", "reference7")
    result = run_cli(["export", str(ckpt), "--tta", "--data", str(shared_data)], cwd=tmp_path)
    assert result.returncode != 0
    lines = [line for line in error_lines(result) if "not the official" not in line]
    assert len(lines) == 1 and "export without --tta" in lines[0], describe(result)
    assert not default_out(ckpt, ckpt, tta=True).exists()
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["best.pt"]


def test_default_names_for_a_checkpoint_file() -> None:
    ckpt = Path("/r/checkpoints/best.pt")  # a run folder gives RUN/model-tta.onnx (`exported`)
    assert default_out(ckpt, ckpt, tta=True) == Path("/r/checkpoints/best-tta.onnx")
    assert default_out(ckpt, ckpt) == Path("/r/checkpoints/best.onnx")


def test_page_shows_the_views_inside_the_model(exported, tmp_path: Path) -> None:
    """The page ticks and locks the TTA box, names the mode and quotes the run's TTA accuracy
    (the accuracy this file delivers), then classifies an upload."""
    if not PBC.is_dir():
        pytest.skip(f"raw sample images not found at {PBC}")
    from selenium.webdriver.common.by import By

    from test_serve_page import start_browser, wait_for

    out, _ = exported
    (out.parent / "summary.json").write_text(json.dumps({"test_acc": 0.5, "test_acc_tta": 0.75}))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with server(out, log=tmp_path / "serve.log") as url:
        driver = start_browser(tmp_path / "profile", downloads)
        try:
            driver.get(url + "/")
            info = driver.find_element(By.ID, "model-info")
            wait_for(lambda: info.text.startswith("Model model-tta.onnx"), what="model info")
            assert "test accuracy 75.0%" in info.text, info.text
            box = driver.find_element(By.ID, "tta")
            assert box.is_selected() and not box.is_enabled()
            assert "inside the model: dihedral24" in driver.find_element(By.ID, "tta-note").text
            driver.find_element(By.ID, "files").send_keys(str(pbc_files()[0]))
            status = driver.find_element(By.ID, "status")
            wait_for(lambda: status.text.startswith("Done"), what="results")
            assert status.text == "Done: 1 of 1 images classified."
        finally:
            driver.quit()
