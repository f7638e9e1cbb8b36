"""benchmarks/frontier.py: rows from a study.json and from one run's or ensemble's summary.json."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "frontier.py"


def _frontier():
    spec = importlib.util.spec_from_file_location("bench_frontier", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_from_a_study_and_from_a_single_summary(tmp_path: Path) -> None:
    fr = _frontier()
    study = {
        "seeds": [42, 43],
        "plan": {"train_args": ["--recipe", "fast"]},
        "mean_std": {
            "test_acc": {"mean": 0.96, "std": 0.01},
            "test_acc_tta": {"mean": 0.97, "std": 0.0},
        },
        "per_seed": [
            {"seed": 42, "train_pflop": 0.05, "train_seconds": 100.0},
            {"seed": 43, "train_pflop": 0.07, "train_seconds": 120.0},
        ],
    }
    r = fr.row("fast", study)
    assert r["n"] == 2 and r["test_acc_tta"] == [0.97, 0.0]
    assert r["train_pflop"][0] == pytest.approx(0.06) and r["train_pflop"][1] == pytest.approx(
        0.0141, abs=1e-4
    )
    ensemble = {"test_acc": 0.98, "test_acc_tta": 0.985, "val_acc": 0.99, "train_pflop": 0.6}
    e = fr.row("ensemble", ensemble)
    assert e["n"] == 1 and e["test_acc_tta"] == [0.985, 0.0] and e["best_val_acc"] == [0.99, 0.0]
    assert e["train_pflop"] == [0.6, 0.0] and e["seeds"] == [None]
    paths = [tmp_path / "s.json", tmp_path / "e.json"]
    for p, d in zip(paths, (study, ensemble), strict=True):
        p.write_text(json.dumps(d))
    out_json, out_png = tmp_path / "f.json", tmp_path / "f.png"
    rows = fr.main(
        [
            f"fast={paths[0]}",
            f"ens={paths[1]}",
            "--out-json",
            str(out_json),
            "--out-png",
            str(out_png),
        ]
    )
    assert [r["recipe"] for r in rows] == ["fast", "ens"]
    assert json.loads(out_json.read_text())[1]["test_acc"] == [0.98, 0.0]
    assert out_png.stat().st_size > 10_000


def test_tta_mode_is_taken_where_reported_and_named() -> None:
    fr = _frontier()

    def stat(mean: float, std: float, n: int = 2) -> dict:
        return {"mean": mean, "std": std, "n": n}

    ms = {
        "test_acc": stat(0.96, 0.01),
        "test_acc_tta": stat(0.97, 0.002),
        "test_macro_f1_tta": stat(0.965, 0.002),
        "test_auc_tta": stat(0.998, 0.0),
        "test_acc_tta_reference7": stat(0.975, 0.001),
        "test_macro_f1_tta_reference7": stat(0.971, 0.003),
        "test_auc_tta_reference7": stat(0.999, 0.0),
    }
    seeds = [{"seed": s, "train_pflop": 0.05, "train_seconds": 1.0} for s in (42, 43)]
    study = {"seeds": [42, 43], "plan": {"train_args": []}, "mean_std": ms, "per_seed": seeds}
    r = fr.row("fast", study, mode="reference7")
    assert r["tta"] == "reference7" and r["test_acc_tta"] == [0.975, 0.001]
    assert r["test_macro_f1_tta"] == [0.971, 0.003] and r["test_acc"] == [0.96, 0.01]
    own = fr.row("fast", study, mode="dihedral8")  # not reported beside: the run's own TTA
    assert own["tta"] == "own" and own["test_acc_tta"] == [0.97, 0.002]
    # an older study: F1/AUC not summarised for the mode, and AUC from one seed only
    del ms["test_macro_f1_tta_reference7"]
    ms["test_auc_tta_reference7"] = stat(0.999, 0.0, n=1)
    mixed = fr.row("fast", study, mode="reference7")
    assert mixed["test_acc_tta"] == [0.975, 0.001] and mixed["test_macro_f1_tta"] == [0.965, 0.002]
    assert mixed["test_auc_tta"] == [0.998, 0.0]
    assert mixed["tta"] == "mixed: acc reference7, macro_f1 own, auc own"
    summary = {"test_acc": 0.9, "test_acc_tta": 0.91, "test_acc_tta_dihedral8": 0.92}
    summary.update(test_macro_f1_tta_dihedral8=0.9, test_auc_tta_dihedral8=0.99, train_pflop=0.1)
    single = fr.row("run", summary, mode="dihedral8")
    assert single["tta"] == "dihedral8" and single["test_acc_tta"] == [0.92, 0.0]


def test_a_row_can_take_its_own_tta_beside_a_global_mode(tmp_path: Path) -> None:
    """`--tta reference7` for every row, `@own` (or `@MODE`) for the row that should differ."""
    fr = _frontier()
    summary = {"test_acc": 0.9, "test_acc_tta": 0.95, "test_acc_tta_reference7": 0.93}
    summary.update(test_macro_f1_tta_reference7=0.9, test_auc_tta_reference7=0.99)
    summary.update(tta_mode="dihedral16", train_pflop=0.05)
    path = tmp_path / "s.json"
    path.write_text(json.dumps(summary))
    out = ["--out-json", str(tmp_path / "f.json"), "--out-png", str(tmp_path / "f.png")]
    rows = fr.main(
        [f"a={path}", f"b={path}@own", f"c={path}@reference7", "--tta", "reference7", *out]
    )
    assert [r["test_acc_tta"][0] for r in rows] == [0.93, 0.95, 0.93]
    assert [r["tta"] for r in rows][:2] == ["reference7", "own"]
