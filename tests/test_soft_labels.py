"""A soft-label file as the teacher (`train.teacher=FILE.npz`) and benchmarks/crossfit.py, which
makes one from teachers that never saw the rows they answer for: the lookup, the MixUp partners'
rows, the row-for-row check against the student's data, and the whole chain on real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from bloodmnist.cli.main import main
from bloodmnist.config import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig
from bloodmnist.data.loader import Normalizer, TrainBatches
from bloodmnist.data.npz import load_npz
from bloodmnist.errors import BloodMNISTError
from bloodmnist.model import build_model
from bloodmnist.runtime import Runtime
from bloodmnist.training.loop import train_one_epoch
from bloodmnist.training.soft_labels import SoftLabels, check_soft_labels
from bloodmnist.training.teacher import Distillation
from conftest import describe, error_lines, load_bench, run_cli

CPU = torch.device("cpu")
BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "crossfit.py"
SPLITS = ("train", "val", "test")


def _crossfit() -> ModuleType:
    return load_bench("crossfit")


def _bench(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(BENCH), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def small(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real file's first 240 / 64 / 64 rows: a source small enough to train teachers on."""
    out = tmp_path_factory.mktemp("crossfit") / "small.npz"
    with np.load(shared_data) as f:
        n = {"train": 240, "val": 64, "test": 64}
        np.savez(
            out, **{f"{s}_{k}": f[f"{s}_{k}"][: n[s]] for s in SPLITS for k in ("images", "labels")}
        )
    return out


def _write(path: Path, logp: np.ndarray, data, **override: np.ndarray) -> Path:
    arrays = {f"{s}_labels": getattr(data, s).labels for s in SPLITS}
    np.savez(path, soft_logp=logp, **{**arrays, **override})
    return path


def test_deal_is_stratified_seeded_and_covers_every_row() -> None:
    deal = _crossfit().deal
    labels = np.repeat(np.arange(4), [10, 7, 5, 3])
    fold = deal(labels, 3, seed=0)
    assert np.array_equal(fold, deal(labels, 3, seed=0)) and set(fold) == {1, 2, 3}
    for c, n in zip(range(4), [10, 7, 5, 3], strict=True):
        counts = np.bincount(fold[labels == c], minlength=4)[1:]
        assert counts.sum() == n and counts.max() - counts.min() <= 1
    assert not np.array_equal(fold, deal(labels, 3, seed=1))


def test_lookup_temperature_and_mixup_partners(small: Path) -> None:
    data = load_npz(small)
    rng = np.random.default_rng(0)
    logp = np.log(rng.dirichlet(np.ones(8), size=len(data.train))).astype(np.float32)
    soft = SoftLabels(_write(small.parent / "rand.npz", logp, data), data, CPU, None)
    assert soft.models == []  # nothing for the FLOP counter: no teacher forwards
    idx, partner = torch.tensor([3, 0, 7]), torch.tensor([7, 3, 0])
    want = torch.softmax(torch.from_numpy(logp[[3, 0, 7]]) / 2.0, 1)
    torch.testing.assert_close(soft.probs(idx, 2.0), want)
    distill = Distillation(soft, alpha=0.5, temperature=2.0)
    x = torch.zeros(3, 3, 28, 28)
    torch.testing.assert_close(distill.soft(x, (idx, idx, 1.0)), want)
    mixed = distill.soft(x, (idx, partner, 0.25))
    torch.testing.assert_close(mixed, 0.25 * want + 0.75 * soft.probs(partner, 2.0))
    with pytest.raises(ValueError, match="training rows"):
        distill.soft(x)


def test_the_file_must_match_the_students_rows(small: Path, tmp_path: Path) -> None:
    data = load_npz(small)
    logp = np.zeros((len(data.train), 8), dtype=np.float32)
    ok = _write(tmp_path / "ok.npz", logp, data)
    SoftLabels(ok, data, CPU, None)  # the same rows: accepted
    check_soft_labels(ok, load_npz(small, subset=32), subset=32)  # a --subset student: first rows
    with pytest.raises(BloodMNISTError, match="other train images"):  # a longer file, no subset
        check_soft_labels(ok, load_npz(small, subset=32), subset=None)
    swapped = (data.test.labels + 1) % 8
    cases = {
        "other test images": _write(tmp_path / "a.npz", logp, data, test_labels=swapped),
        "shape": _write(tmp_path / "b.npz", logp[:, :5], data),
        "NaN": _write(tmp_path / "c.npz", logp * np.nan, data),
        "lacks soft_logp": tmp_path / "d.npz",
        "does not exist": tmp_path / "missing.npz",
        "not a readable .npz file": tmp_path / "cut.npz",
        "holds one array": tmp_path / "one.npz",
    }
    np.savez(cases["lacks soft_logp"], train_labels=data.train.labels)
    cases["not a readable .npz file"].write_bytes(ok.read_bytes()[:200])  # truncated
    with cases["holds one array"].open("wb") as fh:
        np.save(fh, logp)
    for message, path in cases.items():
        with pytest.raises(BloodMNISTError, match=message):
            SoftLabels(path, data, CPU, None)


def test_a_run_reads_the_file_once_and_sees_a_rewrite(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The early check and the Trainer's load share one read; a file rewritten in between
    (another size or mtime) is read again, so its new rows are the ones used."""
    data = load_npz(small)
    loads: list[str] = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda f, **kw: loads.append(str(f)) or real_load(f, **kw))
    path = _write(tmp_path / "t.npz", np.zeros((len(data.train), 8), np.float32), data)
    check_soft_labels(path, data, None)
    first = SoftLabels(path, data, CPU, None)
    assert loads == [str(path.resolve())]
    logp = np.log(np.full((len(data.train), 8), 1 / 8, np.float32))
    logp[:, 3] = 0.0  # other values, the same size: only the mtime tells them apart
    _write(path, logp, data)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    second = SoftLabels(path, data, CPU, None)
    assert len(loads) == 2
    rows = torch.tensor([0, 5])
    torch.testing.assert_close(first.probs(rows, 1.0), torch.full((2, 8), 1 / 8))
    assert second.probs(rows, 1.0)[:, 3].min() > 0.5


def test_one_hot_rows_step_as_the_mixed_true_labels() -> None:
    """With the labels themselves as the file (alpha 1, T 1) a MixUp step moves the weights as
    cross-entropy on the mixed true labels does: the partner rows are the partners' labels."""
    labels = torch.tensor([5, 1, 7, 0, 2, 6, 3, 4, 1, 0, 2, 5, 7, 3, 6, 4])
    lam = np.random.default_rng(2).beta(0.4, 0.4)  # the step's draw: a real mix of two labels
    assert 0.1 < lam < 0.9

    def step(distill: Distillation | None) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = build_model("resnet9", num_classes=8, size=28, width=0.125)
        batches = TrainBatches(
            images=torch.rand(16, 3, 28, 28, generator=torch.Generator().manual_seed(2)),
            labels=labels,
            batch_size=16,
            augment_cfg=AugmentConfig(),
            normalize=Normalizer(IMAGENET_MEAN, IMAGENET_STD, CPU, False),
            seed=0,
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        gen, rng = torch.Generator().manual_seed(3), np.random.default_rng(2)
        rt = Runtime(CPU, "fp32", False, 1)
        train_one_epoch(model, batches, opt, rt, 1, gen, rng, 0.4, distill=distill)
        return [p.detach().clone() for p in model.parameters()]

    table = SoftLabels.__new__(SoftLabels)  # the lookup alone, without a file
    table.logp = torch.where(torch.nn.functional.one_hot(labels, 8) > 0, 0.0, -60.0)
    plain, taught = step(None), step(Distillation(table, alpha=1.0, temperature=1.0))
    for a, b in zip(plain, taught, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    table.logp = table.logp.roll(1, dims=0)  # rows shifted by one: other targets, other step
    shifted = step(Distillation(table, alpha=1.0, temperature=1.0))
    assert any(not torch.allclose(a, b) for a, b in zip(plain, shifted, strict=True))


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]


def test_crossfit_teachers_to_a_student_through_the_cli(small: Path, tmp_path: Path) -> None:
    """folds -> one real teacher run per fold -> assemble -> a student run; a student whose
    data holds other rows is refused with one line."""
    folds = tmp_path / "folds"
    assert _bench("folds", small, folds, "--folds", "2", cwd=tmp_path).returncode == 0
    fold = np.load(folds / "folds.npz")["fold"]
    with np.load(folds / "fold-1.npz") as f1, np.load(small) as src:
        assert np.array_equal(f1["test_images"], src["train_images"][fold == 1])
        assert np.array_equal(f1["train_images"], src["train_images"][fold == 2])
        assert np.array_equal(f1["val_images"], src["val_images"])
    common = ["--epochs", "1", "--precision", "fp32", "--quiet", "--recipe", "fast"]
    common += ["--set", "runtime.threads=1", "--set", "runtime.reports=false"]
    common += ["--set", "model.width=0.125", "--set", "eval.tta_mode=dihedral8"]
    for k in (1, 2):
        data = str(folds / f"fold-{k}.npz")
        assert main(["train", "--data", data, "--out", str(tmp_path / f"t{k}"), *common]) == 0
    soft = tmp_path / "soft.npz"
    made = _bench("assemble", folds, tmp_path / "t1", tmp_path / "t2", "--out", soft, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    meta = json.loads(made.stdout)
    with np.load(soft) as z:
        logp, train_labels = z["soft_logp"], z["train_labels"]
    assert logp.shape == (240, 8) and np.allclose(np.exp(logp).sum(1), 1, atol=1e-5)
    assert meta["held_out_acc"] == pytest.approx(float((logp.argmax(1) == train_labels).mean()))
    for k in (1, 2):  # every row is its own fold teacher's calibrated TTA answer, in place
        summary = json.loads((tmp_path / f"t{k}" / "summary.json").read_text())
        assert meta["teachers"][k - 1]["held_out_acc"] == pytest.approx(summary["test_acc_tta"])
        assert meta["teachers"][k - 1]["temperature"] == summary["temperature_tta"] > 0
        probs = np.load(tmp_path / f"t{k}" / "predictions.npz")["test_probs_tta"].astype(float)
        calibrated = np.log(probs) / summary["temperature_tta"]
        calibrated -= np.log(np.exp(calibrated).sum(1, keepdims=True))
        np.testing.assert_allclose(logp[fold == k], calibrated, rtol=1e-4, atol=1e-5)

    def student(data: Path, out: str) -> list[str]:
        args = ["train", "--data", str(data), "--out", str(tmp_path / out), *common]
        return [*args, "--set", f"train.teacher={soft}", "--set", "train.distill_temperature=1"]

    assert main(student(small, "student")) == 0
    assert main(["train", "--data", str(small), "--out", str(tmp_path / "plain"), *common]) == 0
    s_student, s_plain = (
        json.loads((tmp_path / d / "summary.json").read_text()) for d in ("student", "plain")
    )
    assert s_student["train_pflop"] == s_plain["train_pflop"]  # a lookup costs no forwards
    taught, plain = _weights(tmp_path / "student"), _weights(tmp_path / "plain")
    assert any(not torch.equal(taught[k], plain[k]) for k in plain if plain[k].is_floating_point())

    other = run_cli(student(folds / "fold-1.npz", "bad"), cwd=tmp_path)
    last = error_lines(other)[-1]
    assert other.returncode == 2 and "Traceback" not in other.stderr, describe(other)
    assert last.startswith(f"bloodmnist train: error: teacher {soft} was made for other train")
    assert "soft labels must come from the same split" in last

    def assemble(*runs: str, out: str) -> subprocess.CompletedProcess[str]:
        teachers = [tmp_path / r for r in runs]
        return _bench("assemble", folds, *teachers, "--out", tmp_path / out, cwd=tmp_path)

    one = assemble("t1", out="x.npz")
    assert one.returncode == 2 and "pass 2 teacher runs" in one.stderr
    swapped = assemble("t2", "t1", out="y.npz")
    assert swapped.returncode == 2 and "was not trained on" in swapped.stderr
    soft_kept = soft.read_bytes()
    again = assemble("t1", "t2", out="soft")  # np.savez would write soft.npz over the first
    assert again.returncode == 2 and "must end in .npz" in again.stderr
    assert soft.read_bytes() == soft_kept and not (tmp_path / "y.npz").exists()
