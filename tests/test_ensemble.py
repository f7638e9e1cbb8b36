"""`bloodmnist ensemble`: exact averages of the members' saved probabilities, the usual run files,
val computed from best.pt, refusal of members that do not fit, and an ensemble as a teacher."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bloodmnist.config import build_config
from bloodmnist.ensembles.members import load_members
from bloodmnist.errors import BloodMNISTError
from bloodmnist.runtime import Runtime
from bloodmnist.training.teacher import Teacher
from conftest import SHARED_NPZ_MD5, describe, error_lines, run_cli

TINY = ["--set", "model.arch=resnet9", "--set", "model.width=0.125"]
COMMON = ["--subset", "128", "--epochs", "1", "--precision", "fp32", "--pretrained", "none"]
COMMON += ["--quiet", "--set", "runtime.threads=1", "--set", "runtime.reports=false", *TINY]


@pytest.fixture(scope="module")
def members(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("ensemble")
    runs = []
    for seed, mode in ((1, "reference7"), (2, "dihedral8")):
        run = root / f"seed{seed}"
        args = ["train", "--data", str(shared_data), "--out", str(run), "--seed", str(seed)]
        result = run_cli([*args, *COMMON, "--set", f"eval.tta_mode={mode}"], cwd=root)
        assert result.returncode == 0, describe(result)
        runs.append(run)
    return runs


@pytest.fixture(scope="module")
def ensemble_dir(members: list[Path]) -> Path:
    out = members[0].parent / "ens"
    args = ["ensemble", *map(str, members), "--out", str(out), "--threads", "1"]
    result = run_cli([*args, "--precision", "fp32"], cwd=out.parent)
    assert result.returncode == 0, describe(result)
    assert json.loads(result.stdout)["ensemble_dir"] == str(out)
    return out


def test_test_probs_are_the_mean_of_the_members(members: list[Path], ensemble_dir: Path) -> None:
    preds = [np.load(m / "predictions.npz") for m in members]
    ens = np.load(ensemble_dir / "predictions.npz")
    for key in ("test_probs", "test_probs_tta"):
        mean = np.mean(np.stack([p[key].astype(np.float64) for p in preds]), axis=0)
        np.testing.assert_array_equal(ens[key], mean.astype(np.float32))
    # Member 2 ran dihedral8 and saved its reference7 TTA too: the 7-view mean is reported.
    ref = np.mean(
        np.stack([preds[0]["test_probs_tta"], preds[1]["test_probs_tta_reference7"]]).astype(
            np.float64
        ),
        axis=0,
    ).astype(np.float32)
    np.testing.assert_array_equal(ens["test_probs_tta_reference7"], ref)
    # Member 1 ran reference7 and saved its dihedral8 TTA: both modes are on record everywhere.
    first = json.loads((members[0] / "summary.json").read_text())
    labels0 = preds[0]["test_labels"]
    d8 = preds[0]["test_probs_tta_dihedral8"]
    assert first["test_acc_tta_dihedral8"] == pytest.approx(np.mean(d8.argmax(1) == labels0))
    assert 0 <= first["val_acc_tta_dihedral8"] <= 1 and 0 <= first["val_acc_tta"] <= 1
    both = np.stack([d8, preds[1]["test_probs_tta"]]).astype(np.float64)
    np.testing.assert_array_equal(
        ens["test_probs_tta_dihedral8"], np.mean(both, axis=0).astype(np.float32)
    )
    summary = json.loads((ensemble_dir / "summary.json").read_text())
    labels = ens["test_labels"]
    np.testing.assert_array_equal(labels, preds[0]["test_labels"])
    assert summary["test_acc"] == pytest.approx(np.mean(ens["test_probs"].argmax(1) == labels))
    assert summary["test_acc_tta"] == pytest.approx(
        np.mean(ens["test_probs_tta"].argmax(1) == labels)
    )
    assert summary["tta_mode"] == "mixed: dihedral8+reference7"
    assert summary["kind"] == "ensemble" and summary["data_md5"] == SHARED_NPZ_MD5
    assert summary["members"] == [str(m.resolve()) for m in members]
    for name in ("report.html", "report.xlsx", "figures/confusion_matrix.png", "ensemble.json"):
        assert (ensemble_dir / name).is_file(), name
    assert len(list(ensemble_dir.glob("bloodmnist_test_*@ens*.csv"))) == 2


def test_val_probs_are_the_mean_of_the_members_best_checkpoints(
    members: list[Path], ensemble_dir: Path
) -> None:
    """Runs do not save validation probabilities: evaluate's numbers, averaged, are the
    ensemble's (val acc of each member recomputed through the evaluate command)."""
    ens = np.load(ensemble_dir / "predictions.npz")
    summary = json.loads((ensemble_dir / "summary.json").read_text())
    assert ens["val_probs"].shape == (128, 8) and ens["val_probs_tta"].shape == (128, 8)
    np.testing.assert_allclose(ens["val_probs"].sum(1), 1.0, atol=1e-5)
    acc = float(np.mean(ens["val_probs"].argmax(1) == ens["val_labels"]))
    assert summary["val_acc"] == pytest.approx(acc)
    rt = Runtime(torch.device("cpu"), "fp32", True, 1)
    teacher = Teacher(ensemble_dir, build_config(overrides=TINY[1::2]), rt)
    assert len(teacher.models) == 2  # an ensemble folder teaches with all its members
    x = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    singles = [Teacher(m, build_config(overrides=TINY[1::2]), rt).probs(x, 2.0) for m in members]
    torch.testing.assert_close(teacher.probs(x, 2.0), (singles[0] + singles[1]) / 2)


def test_members_that_do_not_fit_are_refused(
    members: list[Path], ensemble_dir: Path, tmp_path: Path
) -> None:
    odd = tmp_path / "odd"
    shutil.copytree(members[1], odd)
    summary = json.loads((odd / "summary.json").read_text())
    (odd / "summary.json").write_text(json.dumps({**summary, "data_md5": "0" * 32}))
    out = tmp_path / "never"
    result = run_cli(["ensemble", str(members[0]), str(odd), "--out", str(out)], cwd=tmp_path)
    assert result.returncode != 0
    assert len(error_lines(result)) == 1 and "trained on data MD5" in result.stderr
    assert not out.exists()  # nothing written

    classes = tmp_path / "classes"
    shutil.copytree(members[1], classes)
    preds = dict(np.load(classes / "predictions.npz"))
    preds["class_names"] = np.array([f"c{i}" for i in range(8)])
    np.savez(classes / "predictions.npz", **preds)
    with pytest.raises(BloodMNISTError, match="same classes"):
        load_members([str(members[0]), str(classes)])
    # predictions.npz of the first releases had no class_names: the run's config names them
    early = []
    for member in members:
        early.append(tmp_path / f"early-{member.name}")
        shutil.copytree(member, early[-1])
        preds = dict(np.load(early[-1] / "predictions.npz"))
        del preds["class_names"]
        np.savez(early[-1] / "predictions.npz", **preds)
    out = tmp_path / "early-ens"
    args = ["ensemble", *map(str, early), "--out", str(out), "--threads", "1", "--no-reports"]
    result = run_cli([*args, "--precision", "fp32"], cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    got, full = (json.loads((d / "summary.json").read_text()) for d in (out, ensemble_dir))
    assert got["test_acc"] == full["test_acc"] and got["test_acc_tta"] == full["test_acc_tta"]
    names = [list(np.load(d / "predictions.npz")["class_names"]) for d in (out, ensemble_dir)]
    assert names[0] == names[1] and len(names[0]) == 8
    with pytest.raises(BloodMNISTError, match="at least two"):
        load_members([str(members[0])])
    with pytest.raises(BloodMNISTError, match="given twice"):
        load_members([str(members[0]), str(members[0])])


def test_study_stats_give_both_tta_modes_over_members(members: list[Path]) -> None:
    """Seeds that ran different TTA modes still share both: each mode's seed-mean CI is there."""
    from bloodmnist.evaluation.study_stats import aggregate_runs, load_seed_run
    from bloodmnist.reporting.study_report import calibration_rows, held_out_note

    record = aggregate_runs([load_seed_run(i, m) for i, m in enumerate(members)], n_boot=50)
    preds = [np.load(m / "predictions.npz") for m in members]
    labels = preds[0]["test_labels"]
    own = {"reference7": ["test_probs_tta", "test_probs_tta_reference7"]}
    own["dihedral8"] = ["test_probs_tta_dihedral8", "test_probs_tta"]
    for mode, keys in own.items():
        accs = [np.mean(p[k].argmax(1) == labels) for p, k in zip(preds, keys, strict=True)]
        ci = record["ci95_seed_mean"][f"tta_{mode}"]["acc"]
        assert ci["point"] == pytest.approx(np.mean(accs))
        # one name per mode, whichever mode each seed ran as its own
        assert record["mean_std"][f"test_acc_tta_{mode}"]["n"] == 2
        assert record["mean_std"][f"test_acc_tta_{mode}"]["mean"] == pytest.approx(np.mean(accs))
        assert record["mean_std"][f"val_acc_tta_{mode}"]["n"] == 2
    assert record["train_on"] == "train" and held_out_note(record) == ""
    assert record["temperature_source"] == ["validation"]
    assert calibration_rows(record)[-1][0] == "temperature T (fitted on val)"
    runs = [load_seed_run(i, m) for i, m in enumerate(members)]
    runs[1].summary["train_on"] = "train+val"  # one seed trained on the validation images
    runs[1].summary["temperature_source"] = "eval.temperature"  # ... with a fixed temperature
    record = aggregate_runs(runs, n_boot=10)
    assert record["train_on"] == "train+val" and "not held out" in held_out_note(record)
    assert record["temperature_source"] == ["eval.temperature", "validation"]
    label = "temperature T (fixed: eval.temperature; fitted on val)"
    assert calibration_rows(record)[-1][0] == label


def test_members_trained_on_val_get_no_temperature_fitted_there(
    members: list[Path], ensemble_dir: Path, tmp_path: Path
) -> None:
    """A temperature fitted on validation images some member trained on would miscalibrate."""
    assert json.loads((ensemble_dir / "summary.json").read_text())["temperature"] > 0
    joint = tmp_path / "joint"
    shutil.copytree(members[1], joint)
    summary = json.loads((joint / "summary.json").read_text())
    (joint / "summary.json").write_text(json.dumps({**summary, "train_on": "train+val"}))
    out = tmp_path / "ens"
    args = ["ensemble", str(members[0]), str(joint), "--out", str(out), "--threads", "1"]
    result = run_cli([*args, "--precision", "fp32"], cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    ens = json.loads((out / "summary.json").read_text())
    assert ens["train_on"] == "train+val"
    assert ens["temperature"] is None and ens["temperature_tta"] is None
    assert ens["test_ece_ts"] is None and ens["test_ece"] > 0


def test_aggregate_runs_script_takes_runs_of_mixed_tta_modes(
    members: list[Path], tmp_path: Path
) -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "aggregate_runs.py"
    spec = importlib.util.spec_from_file_location("aggregate_runs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "agg.json"
    module.main([*map(str, members), "--out", str(out), "--train-args", "--recipe fast"])
    record = json.loads(out.read_text())
    assert record["seeds"] == [1, 2] and record["plan"]["train_args"] == ["--recipe", "fast"]
    assert record["plan"]["tta_modes"] == ["reference7", "dihedral8"]
    assert {"tta_reference7", "tta_dihedral8"} <= set(record["ci95_seed_mean"])
    before = out.read_bytes()
    with pytest.raises(SystemExit):  # an existing result file is never overwritten
        module.main([*map(str, members), "--out", str(out)])
    with pytest.raises(SystemExit):  # the same run twice is not two seeds
        module.main([str(members[0]), str(members[0]), "--out", str(tmp_path / "dup.json")])
    assert out.read_bytes() == before and not (tmp_path / "dup.json").exists()


def test_compare_puts_runs_of_different_tta_modes_under_one_mode(members: list[Path]) -> None:
    from bloodmnist.errors import BloodMNISTError
    from bloodmnist.evaluation.compare import compare_sides, load_side
    from bloodmnist.evaluation.run_files import TTA_MODES

    a, b = load_side(members[0]), load_side(members[1])  # reference7 and dihedral8 runs
    out = compare_sides(a, b, n_boot=20)
    assert out["variant"] == "tta_reference7"  # not one run's 7 views against the other's 8
    preds = [np.load(m / "predictions.npz") for m in members]
    y = preds[0]["test_labels"].reshape(-1)
    acc_b = np.mean(preds[1]["test_probs_tta_reference7"].argmax(1) == y)
    assert out["b"]["acc"] == pytest.approx(acc_b)
    d8 = compare_sides(a, b, variant="tta_dihedral8", n_boot=20)
    acc_a = np.mean(preds[0]["test_probs_tta_dihedral8"].argmax(1) == y)
    assert d8["variant"] == "tta_dihedral8" and d8["a"]["acc"] == pytest.approx(acc_a)
    same = compare_sides(a, a, n_boot=20)
    assert same["variant"] == "tta" and same["acc_diff"] == 0
    for mode in TTA_MODES:  # an old run: its own mode only
        b.probs.pop(f"tta_{mode}", None)
    with pytest.raises(BloodMNISTError, match="different TTA modes"):
        compare_sides(a, b, n_boot=20)
