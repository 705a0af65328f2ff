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
