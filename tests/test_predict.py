"""`bloodmnist predict` on real files: raw PBC JPEGs, every format, bad files, huge images.

The model is a real adapted ResNet-18 whose head is fitted (logistic regression) on its random
features of real training images: it gives varied, confident, input-dependent predictions in a
few seconds, which is what agreement tests need (a random head would give near-ties).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression

from bloodmnist.config import Config
from bloodmnist.data.loader import Normalizer, to_tensor
from bloodmnist.inference.inputs import InferenceError, expand_inputs
from bloodmnist.inference.predict import PredictOptions, predict_paths
from bloodmnist.inference.preprocess import ImageReadError, crop_box, load_image
from bloodmnist.inference.torch_engine import TorchEngine
from bloodmnist.model import build_model
from bloodmnist.training.checkpoint import save_checkpoint
from conftest import SHARED_DATA, describe, png_header, run_cli

PBC = SHARED_DATA / "pbc_sample"


def fit_head_checkpoint(
    npz: Path, ckpt: Path, n: int = 128, cfg: Config | None = None, **state: object
) -> None:
    """Random-init backbone, head fitted on its features of n real training images; saved.
    `cfg` picks the model (default: the reference's ResNet-18); `state` adds checkpoint keys."""
    torch.manual_seed(0)
    data = np.load(npz)
    images, labels = data["train_images"][:n], data["train_labels"][:n, 0]
    cfg = cfg or Config()
    cfg.data.path, cfg.model.pretrained, cfg.runtime.device = str(npz), "none", "cpu"
    m = cfg.model
    model = build_model(m.arch, m.num_classes, width=m.width, depth=m.depth).eval()
    head, model.fc = model.fc, torch.nn.Identity()
    norm = Normalizer(cfg.data.mean, cfg.data.std, torch.device("cpu"), channels_last=False)
    with torch.no_grad():
        feats = model(norm(to_tensor(images, torch.device("cpu")))).numpy().astype(np.float64)
    mu, sd = feats.mean(0), feats.std(0) + 1e-6
    clf = LogisticRegression(max_iter=200).fit((feats - mu) / sd, labels)
    with torch.no_grad():  # fold the standardisation into the linear layer
        head.weight.copy_(torch.from_numpy(clf.coef_ / sd))
        head.bias.copy_(torch.from_numpy(clf.intercept_ - (clf.coef_ * mu / sd).sum(1)))
    model.fc = head
    save_checkpoint(
        {"model": model.state_dict(), "config": cfg.to_dict(), "epoch": 0, **state}, ckpt
    )


@pytest.fixture(scope="module")
def run_dir(shared_data: Path, tmp_path_factory) -> Path:
    if not PBC.is_dir():
        pytest.skip(f"raw sample images not found at {PBC}")
    run = tmp_path_factory.mktemp("run")
    fit_head_checkpoint(shared_data, run / "checkpoints" / "best.pt")
    return run


@pytest.fixture(scope="module")
def engine(run_dir: Path) -> TorchEngine:
    return TorchEngine(run_dir / "checkpoints" / "best.pt", device="cpu", precision="fp32")


def test_a_gpu_trained_checkpoint_predicts_where_there_is_no_gpu(run_dir, tmp_path) -> None:
    """A run trained with runtime.device=cuda is read on the best device here: on a machine
    without a GPU that is the CPU, not an error about a --device the user never passed."""
    from bloodmnist.training.checkpoint import load_checkpoint

    state = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    state["config"]["runtime"]["device"] = "cuda"
    gpu_run = tmp_path / "gpu.pt"
    save_checkpoint(state, gpu_run)
    engine = TorchEngine(gpu_run)
    assert engine.rt.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    state["config"]["runtime"]["device"] = "cpu"  # a CPU run stays on the CPU
    save_checkpoint(state, tmp_path / "cpu.pt")
    assert TorchEngine(tmp_path / "cpu.pt").rt.device.type == "cpu"


def test_an_overflowing_model_gives_error_rows_not_predictions(run_dir, tmp_path) -> None:
    """Logits that overflow (as an fp16 forward pass can) make NaN probabilities, whose argmax
    is an arbitrary class: each such image gets an error row, and the JSON stays valid."""
    from bloodmnist.training.checkpoint import load_checkpoint

    state = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    state["model"]["fc.weight"] = state["model"]["fc.weight"] * 1e38  # inf logits in fp32
    save_checkpoint(state, tmp_path / "overflow.pt")
    out = tmp_path / "preds.json"
    args = ["predict", str(tmp_path / "overflow.pt"), str(PBC / "basophil"), "--out", str(out)]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 1, describe(result)  # no file classified
    rows = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert rows["results"] and all(r["status"] == "error" for r in rows["results"])
    assert all("not finite" in r["error"] and r["prob"] is None for r in rows["results"])
    from serve_helpers import pbc_files, post_files, server

    with server(tmp_path / "overflow.pt", "--device", "cpu", log=tmp_path / "s.log") as url:
        for endpoint in ("/v1/predict", "/v1/explain"):  # explain gave a 500: no class to map
            (row,) = post_files(url, pbc_files()[:1], endpoint)["results"]
            assert row["status"] == "error" and "not finite" in row["error"], row
            assert "explain" not in row


def _labels() -> list[dict]:
    with (PBC / "labels.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_medmnist_preprocessing_reproduces_npz_pixels(shared_data: Path) -> None:
    """The recipe rebuilds the npz test images from the raw JPEGs (README: >= 98% identical)."""
    test_images = np.load(shared_data)["test_images"]
    same = []
    for row in _labels():
        prep = load_image(PBC / row["file"], 28, "medmnist")
        assert prep.method == "medmnist" and prep.pixels.shape == (28, 28, 3)
        same.append((prep.pixels == test_images[int(row["npz_test_index"])]).mean())
    assert np.mean(same) >= 0.98, np.mean(same)
    assert min(same) >= 0.9, "every file, including the 366x369 frames, must match"
    assert crop_box(360, 363) == (80, 82, 280, 282)  # 200 px, as BloodMNIST
    assert crop_box(720, 726)[2] - crop_box(720, 726)[0] == 400  # 200/360 of the short side


def test_raw_jpegs_agree_with_npz_rows(run_dir: Path, engine: TorchEngine, shared_data, tmp_path):
    """CLI on the 128 raw JPEGs (medmnist) vs the same model on the matching npz test rows."""
    out = tmp_path / "raw.csv"
    args = ["predict", str(run_dir), str(PBC), "--preprocess", "medmnist", "--out", str(out)]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    assert "128 of 128 files classified" in result.stderr
    with out.open() as fh:
        rows = {Path(r["path"]).relative_to(PBC).as_posix(): r for r in csv.DictReader(fh)}
    labels = _labels()
    assert len(rows) == len(labels) == 128
    test_images = np.load(shared_data)["test_images"]
    ref = engine.probs(test_images[[int(r["npz_test_index"]) for r in labels]])
    names = engine.info.class_names
    agree = [rows[r["file"]]["pred"] == names[int(ref[i].argmax())] for i, r in enumerate(labels)]
    print(f"raw-vs-npz agreement: {np.mean(agree):.4f} ({sum(agree)}/128)")
    assert np.mean(agree) >= 0.98
    first = rows[labels[0]["file"]]
    assert first["preprocess"] == "medmnist" and first["width"] in ("360", "366")
    probs = np.array([float(first[f"prob_{n}"]) for n in names])
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)
    assert first["top_k"].split(";")[0] == f"{first['pred']}:{first['prob']}"


def _write_formats(folder: Path, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Lossless files of real test images in every supported format; name -> expected pixels."""
    sub = folder / "nested" / "deeper"
    sub.mkdir(parents=True)
    grey = np.asarray(Image.fromarray(rows[4]).convert("L"))
    pal = Image.fromarray(rows[6]).quantize(64)
    alpha = np.full((28, 28), 255, np.uint8)
    alpha[:, :10] = 0  # transparent strip: must come out white
    rgba = np.dstack([rows[3], alpha])
    over_white = rows[3].copy()
    over_white[:, :10] = 255
    Image.fromarray(rows[0]).save(folder / "rgb.png")
    Image.fromarray(rows[1]).save(folder / "a.bmp")
    Image.fromarray(rows[2]).save(sub / "b.tif")
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(sub / "grey16.png")  # mode I;16
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "grey16.tiff")
    Image.fromarray(np.asarray(Image.fromarray(rows[5]).convert("L"))).save(folder / "grey8.png")
    pal.save(folder / "palette.png")
    return {
        "rgb.png": rows[0],
        "a.bmp": rows[1],
        "b.tif": rows[2],
        "rgba.png": over_white,
        "grey16.png": np.repeat(grey[..., None], 3, axis=2),
        "grey16.tiff": np.repeat(grey[..., None], 3, axis=2),
        "grey8.png": np.asarray(Image.fromarray(rows[5]).convert("L").convert("RGB")),
        "palette.png": np.asarray(pal.convert("RGB")),
    }


def _write_bad(folder: Path) -> dict[str, str]:
    """Unreadable files; name -> a word the error reason must contain."""
    raw = (PBC / _labels()[0]["file"]).read_bytes()
    (folder / "zero.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image\n")
    (folder / "truncated.jpg").write_bytes(raw[: len(raw) // 3])
    png = folder / "ok_then_cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(png)
    (folder / "truncated.png").write_bytes(png.read_bytes()[:600])
    png.unlink()
    (folder / "readme.txt").write_text("explicitly named, so it is tried\n")
    (folder / ".hidden.jpg").write_text("hidden files are skipped\n")
    (folder / "bad_header.png").write_bytes(b"P6\n40 x40\n255\n" + bytes(100))  # a PPM; was a
    return {  # traceback
        "bad_header.png": "cannot open (invalid literal",
        "zero.png": "empty",
        "notes.jpg": "not an image",
        "truncated.jpg": "truncated",
        "truncated.png": "decode",
        "readme.txt": "not an image",
    }


def test_formats_and_bad_files(run_dir: Path, engine: TorchEngine, shared_data, tmp_path):
    """Every format predicts like its source pixels; each bad file gets an error row; exit 1."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    expected = _write_formats(folder, np.load(shared_data)["test_images"][:8])
    bad = _write_bad(folder)
    out = tmp_path / "preds.json"
    ckpt = str(run_dir / "checkpoints" / "best.pt")
    args = ["predict", ckpt, str(folder), str(folder / "readme.txt"), "--out", str(out)]
    result = run_cli([*args, "--top-k", "8", "--batch-size", "5", "--threads", "1"], cwd=tmp_path)
    assert result.returncode == 1, describe(result)
    doc = json.loads(out.read_text())
    # fp32 on every CPU by default (no bf16 on AVX512-BF16/AMX), so the fp32 engine agrees
    assert doc["precision"] == "fp32"
    rows = {Path(r["path"]).name: r for r in doc["results"]}
    assert set(rows) == set(expected) | set(bad)  # .hidden.jpg skipped, recursion worked
    ref = engine.probs(np.stack(list(expected.values())))
    for (name, _), p in zip(expected.items(), ref, strict=True):
        row = rows[name]
        assert row["status"] == "ok" and row["preprocess"] == "resize", row
        got = np.array([row["probs"][n] for n in doc["class_names"]])
        np.testing.assert_allclose(got, p, atol=1e-5, err_msg=name)
        assert [k for k, _ in row["top_k"]] == [doc["class_names"][i] for i in np.argsort(-p)]
    for name, word in bad.items():
        assert rows[name]["status"] == "error" and word in rows[name]["error"], rows[name]
        assert f"{name}: " in result.stderr
    assert f"{len(expected)} of {len(rows)} files classified" in result.stderr


def test_preprocess_options_and_limits(tmp_path: Path) -> None:
    raw = PBC / _labels()[0]["file"]
    if not raw.is_file():
        pytest.skip(f"raw sample images not found at {PBC}")
    with pytest.raises(ImageReadError, match="--preprocess none needs 28x28"):
        load_image(raw, 28, "none")
    assert load_image(raw, 28, "auto").method == "medmnist"
    assert load_image(raw, 28, "resize").pixels.shape == (28, 28, 3)
    # A PBC frame (short side 360/363/366) is a raw smear at every input size (the 200-px crop
    # is enlarged at 224, as BloodMNIST_224 was made): data/imageprep.choose_method.
    assert load_image(raw, 224, "auto").method == "medmnist"
    # MedMNIST+ cell images (64-224 px) are crops already: a 28-px model resizes them
    from bloodmnist.data.imageprep import choose_method

    assert [choose_method("auto", s, s, 28) for s in (28, 64, 128, 224, 225, 300)] == [
        "resize",
        "resize",
        "resize",
        "resize",
        "medmnist",
        "medmnist",
    ]
    assert choose_method("auto", 300, 300, 224) == "resize"  # not above 2 x 224
    with pytest.raises(ImageReadError, match="above the 0.1 Mpx limit"):
        load_image(raw, 28, "auto", max_pixels=100_000)
    # a header above Pillow's own limit (which refuses it at open): our words, as documented
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(20000, 10000))
    with pytest.raises(ImageReadError) as info:
        load_image(bomb, 28)
    assert str(info.value) == "image is 200 Mpx, above the 179.0 Mpx limit; downscale it first"
    with pytest.raises(ImageReadError, match="image is 200 Mpx, above the 0.1 Mpx limit"):
        load_image(bomb, 28, "auto", max_pixels=100_000)  # the lower limit is the one said
    cmyk = tmp_path / "cmyk.tif"
    Image.open(raw).convert("CMYK").save(cmyk)
    assert load_image(cmyk, 28).pixels.shape == (28, 28, 3)


def test_input_expansion(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    for name in ("d/x.PNG", "d/e/y.jpeg", "d/z.csv", "d/.w.png"):
        (tmp_path / name).write_bytes(b"")
    got = expand_inputs([str(tmp_path / "d"), str(tmp_path / "d" / "**" / "*.jpeg")])
    assert [p.name for p in got] == ["y.jpeg", "x.PNG"]  # sorted walk, duplicates dropped
    with pytest.raises(InferenceError, match="does not exist"):
        expand_inputs([str(tmp_path / "missing.png")])
    with pytest.raises(InferenceError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.bmp")])


def test_tta_and_top_k(engine: TorchEngine) -> None:
    paths = [PBC / r["file"] for r in _labels()[:2]]
    plain = predict_paths(engine, paths, PredictOptions(top_k=2))
    tta = predict_paths(engine, paths, PredictOptions(top_k=2, tta=True))
    names = engine.info.class_names
    p_plain = np.array([[r["probs"][n] for n in names] for r in plain])
    p_tta = np.array([[r["probs"][n] for n in names] for r in tta])
    np.testing.assert_allclose(p_tta.sum(1), 1.0, atol=1e-5)
    assert np.abs(p_tta - p_plain).max() > 1e-4  # the 7 views change the average
    assert all(len(r["top_k"]) == 2 and r["top_k"][0][1] >= r["top_k"][1][1] for r in tta)
    with pytest.raises(InferenceError, match="--top-k"):
        predict_paths(engine, paths, PredictOptions(top_k=9))


def test_tta_answer_does_not_depend_on_batch_neighbours(engine: TorchEngine, shared_data) -> None:
    """The reference 7 views include seeded noise: an image alone, first or fourth in a batch
    (predict's chunks, serve's batches) gets the same probabilities (to float rounding of a
    batched convolution; with noise seeded by position they differed by ~7e-4)."""
    assert engine.cfg.eval.tta_mode == "reference7"  # the mode with the noise view
    with np.load(shared_data) as z:
        imgs = z["test_images"][:3]
    alone = engine.probs(imgs[:1], tta=True)
    batch = engine.probs(np.concatenate([imgs, imgs[:1]]), tta=True)
    np.testing.assert_allclose(batch[0], alone[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(batch[3], alone[0], rtol=0, atol=1e-5)
    assert np.abs(batch[1] - batch[0]).max() > 1e-3  # other images, other answers


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("model", "arch", "resnet50x"), ("train", "grad_clip", 1.0), ("optim", "lr", "fast")],
)
def test_a_checkpoint_with_a_config_this_version_cannot_use_is_one_line(
    run_dir: Path, tmp_path: Path, section: str, key: str, value: object
) -> None:
    """An unknown architecture, a key from a newer version, a value of the wrong type: one line
    naming the file (they were a traceback, or an unknown-key line not naming the file).
    Training-only values are not range-checked: a checkpoint holds what ran."""
    from bloodmnist.training.checkpoint import load_checkpoint

    state = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    state["config"][section][key] = value
    ckpt = tmp_path / "other.pt"
    save_checkpoint(state, ckpt)
    for command in (["evaluate", str(ckpt), "--split", "val"], ["predict", str(ckpt), str(PBC)]):
        result = run_cli(command, cwd=tmp_path)
        assert result.returncode == 2, describe(result)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{ckpt} holds a config this bloodmnist cannot use" in lines[0]


def test_a_run_trained_on_a_gpu_is_evaluated_where_it_is_read(
    run_dir: Path, tmp_path: Path, shared_data: Path
) -> None:
    """runtime.device: cuda in the checkpoint is how it was trained, not where it must be read:
    without --device, evaluate picks the device here (it refused on a CPU-only machine)."""
    from bloodmnist.training.checkpoint import load_checkpoint

    state = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    state["config"]["runtime"]["device"] = "cuda"
    state["config"]["data"].update(path=str(shared_data), subset=64)
    ckpt = tmp_path / "gpu.pt"
    save_checkpoint(state, ckpt)
    cmd = ["evaluate", str(ckpt), "--split", "val", "--no-tta", "--threads", "1"]
    result = run_cli(cmd, cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    assert json.loads(result.stdout)["n"] == 64


def test_cli_refuses_existing_out(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "keep.csv"
    out.write_text("user data\n")
    result = run_cli(["predict", str(run_dir), str(PBC), "--out", str(out)], cwd=tmp_path)
    assert result.returncode == 2 and "already exists" in result.stderr, describe(result)
    assert out.read_text() == "user data\n"
    link = tmp_path / "link.csv"  # a dangling symlink: the name is the user's too
    link.symlink_to(tmp_path / "nowhere" / "x.csv")
    result = run_cli(["predict", str(run_dir), str(PBC), "--out", str(link)], cwd=tmp_path)
    assert result.returncode == 2 and "already exists" in result.stderr, describe(result)
    assert link.is_symlink() and not link.exists()


def test_an_out_file_created_while_predicting_is_kept(run_dir: Path, tmp_path, monkeypatch) -> None:
    """Another process writes --out after the start-up check: predict refuses, exit 2, and the
    file keeps its contents (the write publishes only where no file exists)."""
    from bloodmnist.cli import infer_commands
    from bloodmnist.cli.main import main

    out = tmp_path / "late.csv"
    real = infer_commands.predict_paths

    def predict_then_race(*args, **kwargs):
        rows = real(*args, **kwargs)
        out.write_text("written meanwhile\n")
        return rows

    monkeypatch.setattr(infer_commands, "predict_paths", predict_then_race)
    first = sorted(PBC.rglob("*.jpg"))[0]
    rc = main(["predict", str(run_dir), str(first), "--out", str(out), "--quiet"])
    assert rc == 2 and out.read_text() == "written meanwhile\n"
    assert [p.name for p in tmp_path.iterdir()] == ["late.csv"]  # no temp file left


MEM_SCRIPT = """
import re, resource, sys, warnings
from PIL import Image
warnings.simplefilter("error", Image.DecompressionBombWarning)  # must be handled, not raised
from bloodmnist.cli.main import main
rc = main(["predict", *sys.argv[1:]])
# VmHWM is this process's own peak; ru_maxrss can carry the forking parent's RSS across exec.
status = open("/proc/self/status").read()
hwm = re.search(r"VmHWM:\\s+(\\d+) kB", status)
peak = int(hwm.group(1)) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("RESULT", rc, peak * 1024)
"""


def test_huge_images_in_bounded_memory(run_dir: Path, tmp_path: Path) -> None:
    """10000x10000 PNG (100 Mpx: over Pillow's warning limit) and JPEG, PyTorch engine."""
    img = Image.linear_gradient("L").resize((10000, 10000)).convert("RGB")
    img.save(tmp_path / "huge.png", compress_level=1)
    img.save(tmp_path / "huge.jpg", quality=85)
    del img
    out = tmp_path / "huge.csv"
    args = [str(run_dir), str(tmp_path / "huge.png"), str(tmp_path / "huge.jpg"), "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-c", MEM_SCRIPT, *args], capture_output=True, text=True, timeout=300
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    assert line, proc.stdout + proc.stderr
    rc, peak = (int(v) for v in line[0].split()[1:])
    print(f"peak RSS for two 10000x10000 images (PyTorch engine): {peak / 2**20:.0f} MiB")
    assert rc == 0, proc.stderr
    assert peak < 1.5 * 2**30
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["status"], r["width"], r["preprocess"]) for r in rows] == [
        ("ok", "10000", "medmnist")
    ] * 2
