"""Classification metrics as the studies report them, with scikit-learn's arithmetic.

Shapes: `y_true`, `y_pred` are (n,) class indices; `y_prob` is (n, C) probabilities; multi-label `Y_true`,
`Y_pred` are (n, L) 0/1 indicator matrices. Reports are plain dicts (JSON-ready: floats, ints, lists) so they go
straight into `metrics.json`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _one_vs_rest(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """True positives, false positives, false negatives, true negatives per class of a confusion matrix."""
    tp = np.diag(cm).astype("float64")
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    return tp, fp, fn, tn


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den is 0 (scikit-learn's zero_division=0)."""
    return np.divide(num, den, out=np.zeros_like(num, dtype="float64"), where=den > 0)


def _roc_auc_per_class(y_true: np.ndarray, y_prob: np.ndarray, num_classes: int) -> list[float | None]:
    """One-vs-rest ROC-AUC per class; None for a class that is absent (or the only one) in y_true."""
    from sklearn.metrics import roc_auc_score

    scores: list[float | None] = []
    for k in range(num_classes):
        positives = y_true == k
        if positives.all() or not positives.any():
            scores.append(None)
        else:
            scores.append(float(roc_auc_score(positives, y_prob[:, k])))
    return scores


def classification_report(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    *,
    class_names: Sequence[str],
    y_prob: np.ndarray | None = None,
) -> dict[str, Any]:
    """Accuracy, per-class and averaged precision/recall/F1, sensitivity/specificity, ROC-AUC, confusion matrix.

    Args:
        y_true: (n,) true class indices.
        y_pred: (n,) predicted class indices.
        class_names: name of each class index; fixes the number of classes (absent classes still get a row).
        y_prob: optional (n, C) predicted probabilities for ROC-AUC (one-vs-rest, macro over the classes present).

    Returns:
        {"accuracy", "per_class": {name: {precision, recall, f1, support, sensitivity, specificity, roc_auc}},
         "macro": {precision, recall, f1, sensitivity, specificity, roc_auc}, "weighted": {precision, recall, f1},
         "roc_auc", "confusion_matrix" (rows true, columns predicted), "class_names", "support"}.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype="int64")
    y_pred = np.asarray(y_pred, dtype="int64")
    labels = list(range(len(class_names)))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    tp, fp, fn, tn = _one_vs_rest(cm)
    specificity = _ratio(tn, tn + fp)
    aucs: list[float | None] = [None] * len(labels)
    if y_prob is not None:
        aucs = _roc_auc_per_class(y_true, np.asarray(y_prob, dtype="float64"), len(labels))
    present_aucs = [a for a in aucs if a is not None]
    macro_auc = float(np.mean(present_aucs)) if present_aucs else None
    weights = support / support.sum() if support.sum() else np.zeros(len(labels))

    per_class = {
        name: {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
            "sensitivity": float(recall[k]),
            "specificity": float(specificity[k]),
            "roc_auc": aucs[k],
        }
        for k, name in enumerate(class_names)
    }
    return {
        "accuracy": float(np.trace(cm) / cm.sum()) if cm.sum() else 0.0,
        "per_class": per_class,
        "macro": {
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
            "sensitivity": float(recall.mean()),
            "specificity": float(specificity.mean()),
            "roc_auc": macro_auc,
        },
        "weighted": {
            "precision": float(precision @ weights),
            "recall": float(recall @ weights),
            "f1": float(f1 @ weights),
        },
        "roc_auc": macro_auc,
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
        "support": int(support.sum()),
    }


def multilabel_report(
    Y_true: np.ndarray,
    Y_pred: np.ndarray,
    *,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Per-label and micro/macro/samples precision, recall and F1 of multi-label predictions.

    Args:
        Y_true: (n, L) 0/1 true label indicators.
        Y_pred: (n, L) 0/1 predicted label indicators (after thresholding).
        class_names: name of each label column.

    Returns:
        {"per_class": {name: {precision, recall, f1, support}}, "micro", "macro", "samples" (each {precision,
         recall, f1}), "subset_accuracy" (share of images with exactly the right set), "class_names", "support"}.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    Y_true = np.asarray(Y_true).astype("int64")
    Y_pred = np.asarray(Y_pred).astype("int64")
    precision, recall, f1, support = precision_recall_fscore_support(Y_true, Y_pred, average=None, zero_division=0)
    report: dict[str, Any] = {
        "per_class": {
            name: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                   "support": int(support[k])}
            for k, name in enumerate(class_names)
        }
    }
    for average in ("micro", "macro", "samples"):
        p, r, f, _ = precision_recall_fscore_support(Y_true, Y_pred, average=average, zero_division=0)
        report[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    report["subset_accuracy"] = float(accuracy_score(Y_true, Y_pred))
    report["class_names"] = list(class_names)
    report["support"] = int(len(Y_true))
    return report


def format_table(report: dict[str, Any]) -> str:
    """A fixed-width table of a `classification_report` or `multilabel_report`, for the terminal."""
    per_class = report["per_class"]
    has_specificity = any("specificity" in row for row in per_class.values())
    width = max([len(name) for name in per_class] + [12])
    columns = ["precision", "recall", "f1"] + (["specificity", "roc_auc"] if has_specificity else []) + ["support"]
    lines = [f"{'':<{width}}  " + "  ".join(f"{c:>11}" for c in columns)]

    def cell(value: Any) -> str:
        if value is None:
            return f"{'-':>11}"
        return f"{value:>11d}" if isinstance(value, int) else f"{value:>11.4f}"

    for name, row in per_class.items():
        lines.append(f"{name:<{width}}  " + "  ".join(cell(row.get(c)) for c in columns))
    lines.append("")
    for average in ("micro", "macro", "weighted", "samples"):
        if average in report:
            row = {**report[average], "support": report["support"]}
            lines.append(f"{average + ' avg':<{width}}  " + "  ".join(cell(row.get(c)) for c in columns))
    if "accuracy" in report:
        lines.append(f"{'accuracy':<{width}}  {report['accuracy']:>11.4f}")
    if "subset_accuracy" in report:
        lines.append(f"{'exact match':<{width}}  {report['subset_accuracy']:>11.4f}")
    return "\n".join(lines)
