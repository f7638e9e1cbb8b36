"""`bloodmnist export --format onnx`: parity on real test images, metadata, torch-free predict."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from bloodmnist import CLASS_NAMES
from bloodmnist.config import IMAGENET_MEAN, IMAGENET_STD
from bloodmnist.inference import export as export_mod
from bloodmnist.inference.engines import OnnxEngine
from bloodmnist.inference.inputs import InferenceError
from bloodmnist.inference.preprocess import load_image
from bloodmnist.inference.torch_engine import TorchEngine
from conftest import describe, run_cli
from test_predict import PBC, fit_head_checkpoint


@pytest.fixture(scope="module")
def ckpt(shared_data: Path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("run") / "checkpoints" / "best.pt"
    fit_head_checkpoint(shared_data, path)
    return path


@pytest.fixture(scope="module")
def exported(ckpt: Path, shared_data: Path, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    args = ["export", str(ckpt), "--format", "onnx", "--out", str(out), "--data", str(shared_data)]
    result = run_cli([*args, "--parity-images", "512"], cwd=out.parent)
    assert result.returncode == 0, describe(result)
    return out, json.loads(result.stdout)


def test_parity_on_512_real_test_images(exported: tuple[Path, dict]) -> None:
    out, report = exported
    parity = report["parity"]
    print(f"ONNX parity: {parity}")
    assert parity["n"] == 512 and parity["split"] == "test"
    assert parity["max_abs_diff_prob"] <= 1e-4
    assert parity["argmax_agree"] == 512
    assert out.is_file() and report["onnx"] == str(out)
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    reference = out.parent / "reference"
    reference.write_text("")  # a file made the ordinary way: same permissions expected
    assert os.stat(out).st_mode & 0o777 == os.stat(reference).st_mode & 0o777


def test_metadata_and_dynamic_batch(exported: tuple[Path, dict], ckpt: Path, tmp_path) -> None:
    out, report = exported
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["bloodmnist.class_names"]) == list(CLASS_NAMES)
    assert meta["bloodmnist.input_size"] == "28"
    assert json.loads(meta["bloodmnist.mean"]) == pytest.approx(IMAGENET_MEAN)
    assert json.loads(meta["bloodmnist.std"]) == pytest.approx(IMAGENET_STD)
    assert "JPEG q75" in meta["bloodmnist.preprocessing"]
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta["bloodmnist.source_checkpoint_sha256"] == sha == report["checkpoint_sha256"]
    assert json.loads(meta["bloodmnist.parity"])["n"] == 512
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [20]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    engine = OnnxEngine(out)
    for n in (1, 5):  # dynamic batch axis
        assert engine.probs(np.zeros((n, 28, 28, 3), np.uint8)).shape == (n, 8)
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(InferenceError, match="lacks bloodmnist metadata"):
        OnnxEngine(bare)


TORCH_FREE = """
import json, sys
from bloodmnist.cli.main import main
rc = main(["predict", *sys.argv[1:]])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "torchvision", "onnx"})
print(json.dumps({"rc": rc, "heavy": heavy}))
"""


def test_onnx_predict_is_torch_free_and_matches(exported, ckpt: Path, tmp_path: Path) -> None:
    out, _ = exported
    preds = tmp_path / "onnx.json"
    proc = subprocess.run(
        [sys.executable, "-c", TORCH_FREE, str(out), str(PBC), "--out", str(preds)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status == {"rc": 0, "heavy": []}, proc.stderr
    rows = json.loads(preds.read_text())["results"]
    assert len(rows) == 128 and {r["preprocess"] for r in rows} == {"medmnist"}
    images = np.stack([load_image(r["path"], 28).pixels for r in rows])
    ref = TorchEngine(ckpt, device="cpu", precision="fp32").probs(images)
    got = np.array([[r["probs"][n] for n in CLASS_NAMES] for r in rows])
    assert np.abs(got - ref).max() <= 1e-4
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_onnx_refuses_tta(exported, tmp_path: Path) -> None:
    out, _ = exported
    result = run_cli(["predict", str(out), str(PBC), "--tta"], cwd=tmp_path)
    assert result.returncode == 2, describe(result)
    assert "--tta needs the PyTorch checkpoint" in result.stderr


def test_failed_parity_writes_nothing(ckpt: Path, shared_data, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(export_mod, "PARITY_TOL", -1.0)  # no model can pass
    out = tmp_path / "never.onnx"
    with pytest.raises(export_mod.ExportError, match="parity check failed.*was not written"):
        export_mod.export_checkpoint(ckpt, out, str(shared_data), parity_images=8)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_existing_out(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(export_mod.ExportError, match="already exists"):
        export_mod.export_checkpoint(ckpt, out)
    assert out.read_bytes() == b"keep me"
    dangling = tmp_path / "link.onnx"
    dangling.symlink_to(tmp_path / "nowhere.onnx")  # refused before any work, left as it is
    with pytest.raises(export_mod.ExportError, match="link.onnx already exists"):
        export_mod.export_checkpoint(ckpt, dangling)
    assert dangling.is_symlink() and not (tmp_path / "nowhere.onnx").exists()
