"""Metrics: values worked out by hand on fixed arrays, then agreement with scikit-learn's own
functions called directly (our wrappers add label checks, MedMNIST's AUC and JSON glue)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from bloodmnist.evaluation.metrics import (
    accuracy,
    compute_metrics,
    confusion_matrix,
    macro_f1,
    medmnist_auc,
    per_class_scores,
    roc_auc_ovr,
)

TOL = 1e-12


def _random_case(n: int = 500, k: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]  # better than chance, not perfect
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


def _tied_case() -> tuple[np.ndarray, np.ndarray]:
    """4 classes; scores rounded to 1 decimal so many ties; class 3 is never predicted."""
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 0, 1])
    probs = np.array(
        [
            [0.5, 0.2, 0.2, 0.1],
            [0.4, 0.4, 0.1, 0.1],
            [0.3, 0.3, 0.3, 0.1],
            [0.2, 0.5, 0.2, 0.1],
            [0.4, 0.3, 0.2, 0.1],
            [0.1, 0.2, 0.6, 0.1],
            [0.2, 0.2, 0.5, 0.1],
            [0.3, 0.2, 0.4, 0.1],
            [0.3, 0.3, 0.2, 0.2],
            [0.1, 0.2, 0.5, 0.2],
            [0.6, 0.1, 0.2, 0.1],
            [0.2, 0.4, 0.3, 0.1],
        ]
    )
    return y, probs


CASES = {"random": _random_case(), "ties": _tied_case()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_label_metrics_match_sklearn(name: str) -> None:
    y, probs = CASES[name]
    k = probs.shape[1]
    pred = probs.argmax(axis=1)
    labels = list(range(k))
    cm = confusion_matrix(y, pred, k)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, pred, labels=labels))
    assert abs(accuracy(y, pred) - skm.accuracy_score(y, pred)) < TOL
    ref_f1 = skm.f1_score(y, pred, average="macro", zero_division=0)
    assert abs(macro_f1(y, pred, k) - ref_f1) < TOL
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    scores = per_class_scores(y, pred, k)
    np.testing.assert_allclose(scores["precision"], p, rtol=0, atol=TOL)
    np.testing.assert_allclose(scores["recall"], r, rtol=0, atol=TOL)
    np.testing.assert_allclose(scores["f1"], f, rtol=0, atol=TOL)
    np.testing.assert_array_equal(scores["support"], s)


def test_zero_division_gives_zero() -> None:
    y, probs = _tied_case()
    pred = probs.argmax(axis=1)
    assert 3 not in pred  # precondition: class 3 never predicted
    scores = per_class_scores(y, pred, 4)
    assert scores["precision"][3] == 0.0 and scores["f1"][3] == 0.0


@pytest.mark.parametrize("name", sorted(CASES))
def test_auc_matches_sklearn(name: str) -> None:
    y, probs = CASES[name]
    aucs = roc_auc_ovr(y, probs)
    for c in range(probs.shape[1]):
        ref = skm.roc_auc_score(y == c, probs[:, c])
        assert abs(aucs[c] - ref) < TOL, c
    # With every class present, MedMNIST's AUC equals sklearn's macro one-vs-rest AUC.
    norm = probs / probs.sum(axis=1, keepdims=True)
    ref_macro = skm.roc_auc_score(y, norm, multi_class="ovr", average="macro")
    assert abs(medmnist_auc(y, norm) - ref_macro) < TOL


def test_absent_class() -> None:
    """Class 2 of 3 never occurs: its AUC is NaN and the mean skips it; F1 matches sklearn."""
    y = np.array([0, 1, 0, 1, 1, 0])
    probs = np.array(
        [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.4, 0.4, 0.2], [0.1, 0.2, 0.7], [0.3, 0.6, 0.1]]
        + [[0.5, 0.1, 0.4]]
    )
    aucs = roc_auc_ovr(y, probs)
    assert math.isnan(aucs[2])
    for c in (0, 1):
        assert abs(aucs[c] - skm.roc_auc_score(y == c, probs[:, c])) < TOL
    assert abs(medmnist_auc(y, probs) - np.mean(aucs[:2])) < TOL
    pred = probs.argmax(axis=1)  # predicts class 2 once although it never occurs
    ref = skm.f1_score(y, pred, average="macro", zero_division=0)
    assert abs(macro_f1(y, pred, 3) - ref) < TOL
    # A class that is everywhere has no negatives: undefined as well.
    assert np.isnan(roc_auc_ovr(np.zeros(4, int), np.full((4, 2), 0.5))).all()


def test_hand_computed_example() -> None:
    # y_true = 0 0 1 1 2 2, argmax predictions = 0 1 1 2 2 2 -> 4/6 correct.
    # Confusion rows (true): [1 1 0], [0 1 1], [0 0 2].
    # F1 = 2TP/(2TP+FP+FN): class0 2/3, class1 2/4, class2 4/5 -> macro (2/3+1/2+4/5)/3 = 59/90.
    # AUC = share of (positive, negative) pairs ranked correctly, ties count 1/2:
    #   class0: positives 0.7, 0.4 beat all negatives 0.2 0.1 0.1 0.3 -> 8/8 = 1
    #   class1: positives 0.6, 0.3 vs negatives 0.2 0.5 0.1 0.3 -> (4 + 2 + 0.5)/8 = 0.8125
    #   class2: positives 0.8, 0.4 vs negatives 0.1 0.1 0.2 0.6 -> (4 + 3)/8 = 0.875
    #   mean = 2.6875/3.
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.4, 0.5, 0.1],
            [0.2, 0.6, 0.2],
            [0.1, 0.3, 0.6],
            [0.1, 0.1, 0.8],
            [0.3, 0.3, 0.4],
        ]
    )
    m = compute_metrics(y, probs, ["a", "b", "c"])
    assert m["acc"] == pytest.approx(4 / 6, abs=TOL)
    assert m["macro_f1"] == pytest.approx(59 / 90, abs=TOL)
    np.testing.assert_allclose(roc_auc_ovr(y, probs), [1.0, 0.8125, 0.875], atol=TOL)
    assert m["auc"] == pytest.approx(2.6875 / 3, abs=TOL)
    p_true = [0.7, 0.4, 0.6, 0.3, 0.8, 0.4]  # probs[i, y_true[i]]
    assert m["nll"] == pytest.approx(-np.mean(np.log(p_true)), abs=TOL)
    assert m["confusion"] == [[1, 1, 0], [0, 1, 1], [0, 0, 2]]
    assert [row["f1"] for row in m["per_class"]] == pytest.approx([2 / 3, 0.5, 0.8], abs=TOL)
    # precision = TP / column sum (1/1, 1/2, 2/3); recall = TP / row sum (1/2, 1/2, 2/2)
    assert [row["precision"] for row in m["per_class"]] == pytest.approx([1, 0.5, 2 / 3], abs=TOL)
    assert [row["recall"] for row in m["per_class"]] == pytest.approx([0.5, 0.5, 1.0], abs=TOL)
    assert [row["support"] for row in m["per_class"]] == [2, 2, 2]
    assert [row["auc"] for row in m["per_class"]] == pytest.approx([1, 0.8125, 0.875], abs=TOL)
    assert m["n"] == 6


def test_compute_metrics_is_json_ready() -> None:
    y, probs = _random_case(n=200, seed=3)
    m = compute_metrics(y, probs, [f"c{i}" for i in range(8)])
    text = json.dumps(m, allow_nan=False)  # plain Python types only, no NaN
    back = json.loads(text)
    assert back["n"] == 200 and len(back["per_class"]) == 8
    assert set(back["per_class"][0]) >= {"class", "precision", "recall", "f1", "support"}
    assert abs(back["acc"] - skm.accuracy_score(y, probs.argmax(1))) < TOL
    # A perfectly confident wrong answer is clipped, not infinite.
    bad = compute_metrics(np.array([0, 1]), np.array([[0.0, 1.0], [0.0, 1.0]]), ["a", "b"])
    assert bad["nll"] == pytest.approx(-np.log(1e-12) / 2)


def test_absent_and_unpredicted_classes_by_hand() -> None:
    """4 classes; class 3 neither occurs nor is predicted, class 2 is predicted but never occurs.

    y_true = 0 0 1 1, predictions = 0 2 1 1.
    class 0: TP 1, FP 0, FN 1 -> precision 1, recall 1/2, F1 2/3
    class 1: TP 2, FP 0, FN 0 -> F1 1
    class 2: TP 0, FP 1, FN 0 -> F1 0 (zero_division gives 0, not NaN)
    class 3: never seen anywhere -> left out of the macro mean: (2/3 + 1 + 0) / 3 = 5/9
    AUC: class 0 positives 0.9, 0.3 vs negatives 0.1, 0.2 -> 4/4 = 1; class 1 positives 0.8,
    0.7 vs 0.05, 0.1 -> 1; classes 2 and 3 have no positives -> undefined (None), skipped.
    """
    y = np.array([0, 0, 1, 1])
    probs = np.array(
        [
            [0.9, 0.05, 0.05, 0.0],
            [0.3, 0.1, 0.6, 0.0],
            [0.1, 0.8, 0.1, 0.0],
            [0.2, 0.7, 0.1, 0.0],
        ]
    )
    m = compute_metrics(y, probs, ["a", "b", "c", "d"])
    assert m["macro_f1"] == pytest.approx(5 / 9, abs=TOL)
    assert [r["f1"] for r in m["per_class"]] == pytest.approx([2 / 3, 1, 0, 0], abs=TOL)
    assert [r["auc"] for r in m["per_class"]] == [1.0, 1.0, None, None]
    assert m["auc"] == 1.0 and m["acc"] == 0.75
    assert m["confusion"] == [[1, 0, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    # A tie between a positive and a negative counts 1/2: class 1's positive 0.2 beats 0.1 twice
    # and ties 0.2 once -> 2.5 / 3; class 0 mirrors it.
    two = roc_auc_ovr(np.array([0, 0, 0, 1]), np.array([[0.9, 0.1], [0.8, 0.2]] * 2))
    np.testing.assert_allclose(two, [2.5 / 3, 2.5 / 3], rtol=0, atol=TOL)
    assert math.isnan(medmnist_auc(np.zeros(3, int), np.full((3, 2), 0.5)))


def test_non_finite_scores_give_undefined_auc() -> None:
    """A diverged model outputs NaN: its AUC is undefined (None in JSON), not an exception, so
    training reaches its own divergence check. Finite columns keep their AUC (binary path)."""
    y = np.array([0, 1, 0, 1])
    probs = np.full((4, 2), np.nan)
    m = compute_metrics(y, probs, ["a", "b"])
    assert m["auc"] is None and [r["auc"] for r in m["per_class"]] == [None, None]
    assert math.isnan(medmnist_auc(y, probs))
    probs[:, 1] = [0.1, 0.9, 0.2, 0.3]  # class 1: positives 0.9, 0.3 vs negatives 0.1, 0.2 -> 1
    aucs = roc_auc_ovr(y, probs)
    assert math.isnan(aucs[0]) and aucs[1] == 1.0 and medmnist_auc(y, probs) == 1.0


def test_input_validation() -> None:
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError):
        accuracy(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError):
        compute_metrics(np.array([0, 1]), np.ones((2, 3)) / 3, ["a", "b"])
