"""classification_report and multilabel_report against numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from keras_medimg.metrics.classification import classification_report, format_table, multilabel_report


def test_three_class_report_by_hand():
    # Confusion matrix (rows true, columns predicted): [[2, 1, 0], [0, 1, 1], [0, 0, 1]].
    report = classification_report([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], class_names=["a", "b", "c"])
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert report["accuracy"] == pytest.approx(4 / 6)
    a, b, c = (report["per_class"][name] for name in "abc")
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == pytest.approx((1.0, 2 / 3, 0.8, 3))
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((0.5, 1.0, 2 / 3))
    # Specificity TN / (TN + FP): a 3/3, b 3/4, c 4/5.
    assert [a["specificity"], b["specificity"], c["specificity"]] == pytest.approx([1.0, 0.75, 0.8])
    assert report["macro"]["f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert report["macro"]["specificity"] == pytest.approx(0.85)
    assert report["weighted"]["f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 2 / 3) / 6)
    assert report["roc_auc"] is None


def test_roc_auc_skips_an_absent_class():
    y_prob = np.array([[0.9, 0.1, 0.0], [0.4, 0.6, 0.0], [0.6, 0.4, 0.0], [0.2, 0.8, 0.0]])
    report = classification_report([0, 0, 1, 1], y_prob.argmax(1), class_names=["a", "b", "c"], y_prob=y_prob)
    # Class a: positives score 0.9, 0.4 against negatives 0.6, 0.2 -> 3 of 4 pairs ordered; class b likewise.
    assert report["per_class"]["a"]["roc_auc"] == pytest.approx(0.75)
    assert report["per_class"]["b"]["roc_auc"] == pytest.approx(0.75)
    assert report["per_class"]["c"]["roc_auc"] is None
    assert report["roc_auc"] == pytest.approx(0.75)


def test_multilabel_report_by_hand():
    Y_true = np.array([[1, 0], [1, 1], [0, 1]])
    Y_pred = np.array([[1, 1], [1, 0], [0, 1]])
    report = multilabel_report(Y_true, Y_pred, class_names=["C001", "C002"])
    assert report["per_class"]["C001"]["f1"] == pytest.approx(1.0)
    assert report["per_class"]["C002"]["f1"] == pytest.approx(0.5)
    assert report["micro"]["f1"] == pytest.approx(0.75)  # TP 3, FP 1, FN 1
    assert report["macro"]["f1"] == pytest.approx(0.75)
    assert report["samples"]["f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert report["subset_accuracy"] == pytest.approx(1 / 3)


def test_format_table_lists_every_class_and_average():
    table = format_table(classification_report([0, 1, 1], [0, 1, 0], class_names=["benign", "malignant"]))
    lines = table.splitlines()
    assert lines[1].split()[0] == "benign" and lines[2].split()[0] == "malignant"
    assert any(line.startswith("macro avg") for line in lines)
    assert lines[-1].split() == ["accuracy", "0.6667"]
    multi = format_table(multilabel_report(np.eye(2), np.eye(2), class_names=["x", "y"]))
    assert "micro avg" in multi and "exact match" in multi


# === binary_report and bootstrap_ci ===

from sklearn.metrics import (  # noqa: E402
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from keras_medimg.metrics.classification import BINARY_SCORES, binary_report, bootstrap_ci  # noqa: E402

# Four positives, six negatives; at threshold 0.5: TP 3 (0.9, 0.8, 0.6), FN 1 (0.3), FP 2 (0.7 and 0.5: a
# probability equal to the threshold is called positive), TN 4.
Y_TRUE = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
PROB = [0.9, 0.8, 0.6, 0.3, 0.7, 0.5, 0.4, 0.2, 0.1, 0.05]


def test_binary_report_by_hand():
    report = binary_report(Y_TRUE, PROB, 0.5)
    assert (report["tp"], report["fn"], report["fp"], report["tn"]) == (3, 1, 2, 4)
    assert report["sensitivity"] == pytest.approx(3 / 4)
    assert report["specificity"] == pytest.approx(4 / 6)
    assert report["precision"] == pytest.approx(3 / 5)
    assert report["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert report["accuracy"] == pytest.approx(7 / 10)
    # ROC AUC: of the 24 (positive, negative) pairs the positive scores higher in 6 + 6 + 5 + 3 = 20.
    assert report["roc_auc"] == pytest.approx(20 / 24)
    assert (report["support"], report["positives"], report["threshold"]) == (10, 4, 0.5)
    assert "ci" not in report


def test_binary_report_threshold_moves_the_decision_not_the_auc():
    report = binary_report(Y_TRUE, PROB, 0.65)  # now 0.6 is a FN and 0.5 a TN
    assert (report["tp"], report["fn"], report["fp"], report["tn"]) == (2, 2, 1, 5)
    assert report["roc_auc"] == pytest.approx(20 / 24)


def test_binary_report_with_one_class_has_no_auc():
    report = binary_report([0, 0, 0], [0.1, 0.7, 0.2])
    assert report["roc_auc"] is None
    assert (report["specificity"], report["sensitivity"], report["f1"]) == (pytest.approx(2 / 3), 0.0, 0.0)


def test_binary_report_rejects_non_binary_truth():
    with pytest.raises(ValueError, match="0/1 truth"):
        binary_report([0, 2], [0.1, 0.9])


def make_scores(n, seed=0):
    """Probabilities with a moderate separation (ROC AUC about 0.75), rounded so that some tie."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.round(1 / (1 + np.exp(-(rng.normal(size=n) + 0.5 * (2 * y - 1)))), 2)


@pytest.mark.parametrize("seed", range(5))
def test_binary_report_equals_scikit_learn(seed):
    y, prob = make_scores(80, seed)
    threshold = [0.3, 0.5, 0.62, 0.5, 0.7][seed]
    report = binary_report(y, prob, threshold)
    called = (prob >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, called).ravel()
    assert (report["tp"], report["fp"], report["fn"], report["tn"]) == (tp, fp, fn, tn)
    assert report["sensitivity"] == pytest.approx(recall_score(y, called))
    assert report["specificity"] == pytest.approx(recall_score(y, called, pos_label=0))
    assert report["precision"] == pytest.approx(precision_score(y, called, zero_division=0))
    assert report["f1"] == pytest.approx(f1_score(y, called))
    assert report["accuracy"] == pytest.approx(accuracy_score(y, called))
    assert report["roc_auc"] == pytest.approx(roc_auc_score(y, prob), abs=1e-12)  # ties included


def mean_accuracy(y_true, y_pred):
    return float(np.mean(y_true == y_pred))


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_more_samples():
    widths = []
    for n in (60, 1500):
        y, prob = make_scores(n)
        called = (prob >= 0.5).astype(int)
        interval = bootstrap_ci(mean_accuracy, y, called, n=400, seed=1)
        assert interval.estimate == pytest.approx(accuracy_score(y, called))
        assert interval.low < interval.estimate < interval.high
        widths.append(interval.high - interval.low)
    assert widths[1] < widths[0] / 3  # width shrinks like 1/sqrt(n): sqrt(1500 / 60) = 5


def test_bootstrap_ci_of_accuracy_matches_the_binomial_width():
    # 400 cases, 320 right: the 95% interval is about 0.8 +/- 1.96 * sqrt(0.8 * 0.2 / 400) = 0.8 +/- 0.039.
    y_true = np.ones(400, dtype=int)
    y_pred = np.r_[np.ones(320, dtype=int), np.zeros(80, dtype=int)]
    interval = bootstrap_ci(mean_accuracy, y_true, y_pred, n=2000, seed=0)
    assert interval.estimate == 0.8
    assert interval.low == pytest.approx(0.8 - 0.039, abs=0.008)
    assert interval.high == pytest.approx(0.8 + 0.039, abs=0.008)
    narrow = bootstrap_ci(mean_accuracy, y_true, y_pred, n=2000, seed=0, alpha=0.5)
    assert interval.low < narrow.low < narrow.high < interval.high  # a 50% interval sits inside the 95% one


@pytest.mark.filterwarnings("ignore:Only one class")  # the whole sample of the last case has one class
def test_bootstrap_ci_is_reproducible_and_skips_undefined_resamples():
    y, prob = [1, 0, 0, 0, 0], [0.9, 0.2, 0.95, 0.1, 0.3]
    # One positive: about a third of the resamples hold no positive and have no ROC AUC; they are left out.
    first = bootstrap_ci(roc_auc_score, y, prob, n=60, seed=3)
    assert first == bootstrap_ci(roc_auc_score, y, prob, n=60, seed=3)
    assert first.estimate == pytest.approx(0.75)
    assert 0.0 <= first.low <= first.estimate <= first.high <= 1.0
    never = bootstrap_ci(roc_auc_score, [0, 0, 0], [0.1, 0.2, 0.3], n=20, seed=0)
    assert np.isnan(never.estimate) and np.isnan(never.low) and np.isnan(never.high)


def test_binary_report_intervals_bracket_every_score():
    y, prob = make_scores(300, seed=2)
    report = binary_report(y, prob, 0.5, bootstrap=300, seed=0)
    assert set(report["ci"]) == set(BINARY_SCORES) and report["bootstrap"] == 300
    for name in BINARY_SCORES:
        low, high = report["ci"][name]
        assert low <= report[name] <= high, name
        assert 0 < high - low < 0.25, name
    same = binary_report(y, prob, 0.5, bootstrap=300, seed=0)
    assert same["ci"] == report["ci"]
    # The intervals are the ones bootstrap_ci gives with the same seed, hence the same resamples.
    accuracy = bootstrap_ci(mean_accuracy, y, (prob >= 0.5).astype(int), n=300, seed=0)
    assert report["ci"]["accuracy"] == pytest.approx([accuracy.low, accuracy.high])
