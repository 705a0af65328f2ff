"""Classification metrics as the studies report them, with scikit-learn's arithmetic.

Shapes: `y_true`, `y_pred` are (n,) class indices; `y_prob` is (n, C) probabilities; binary `prob` is (n,) the
probability of the positive class; multi-label `Y_true`, `Y_pred` are (n, L) 0/1 indicator matrices. Reports are
plain dicts (JSON-ready: floats, ints, lists, None for an undefined score) so they go straight into `metrics.json`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

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


# === Binary decisions (benign / malignant) with bootstrap intervals ===

#: The scores of `binary_report` that get a bootstrap interval.
BINARY_SCORES = ("sensitivity", "specificity", "precision", "f1", "accuracy", "roc_auc")


class ConfidenceInterval(NamedTuple):
    """A score on the whole sample and its percentile-bootstrap interval.

    Args:
        estimate: the score on the whole sample.
        low: the alpha/2 percentile of the bootstrap scores.
        high: the 1 - alpha/2 percentile of the bootstrap scores.
    """

    estimate: float
    low: float
    high: float


def _resamples(n_samples: int, n: int, seed: int) -> Iterator[np.ndarray]:
    """`n` index arrays, each `n_samples` draws with replacement, from one seeded generator."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield rng.integers(0, n_samples, n_samples)


def _interval(estimate: float, scores: Sequence[float], alpha: float) -> ConfidenceInterval:
    """Percentile interval of the defined bootstrap scores (NaN bounds when fewer than 2 are defined)."""
    defined = np.asarray([s for s in scores if s is not None and not math.isnan(s)], dtype="float64")
    if len(defined) < 2:
        return ConfidenceInterval(estimate, math.nan, math.nan)
    low, high = np.percentile(defined, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return ConfidenceInterval(estimate, float(low), float(high))


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    y_true: Sequence[Any] | np.ndarray,
    y_pred_or_prob: Sequence[Any] | np.ndarray,
    *,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> ConfidenceInterval:
    """Percentile-bootstrap confidence interval of any per-sample score (cases resampled with replacement).

    A resample on which the score is undefined (`metric_fn` raises ValueError, or returns None or NaN, as ROC AUC
    does when a resample holds one class only) is left out rather than failing the whole interval; with small test
    sets this is the usual practice, and the interval then describes the resamples where the score exists.

    Args:
        metric_fn: score of (y_true, y_pred_or_prob) arrays, e.g. `sklearn.metrics.roc_auc_score`.
        y_true: (n_samples,) true labels.
        y_pred_or_prob: (n_samples,) or (n_samples, C) predictions or probabilities, row-aligned with `y_true`.
        n: number of bootstrap resamples.
        seed: seed of the resampling, so an interval is reproducible.
        alpha: 1 - confidence level (0.05 gives a 95% interval).

    Returns:
        ConfidenceInterval(estimate on the whole sample, low, high); the bounds are NaN when fewer than two
        resamples have a defined score.

    Raises:
        ValueError: empty or misaligned inputs, or alpha outside (0, 1).
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_pred_or_prob)
    if len(y_true) == 0 or len(y_true) != len(y_score):
        raise ValueError(f"bootstrap_ci needs aligned non-empty inputs; got {len(y_true)} and {len(y_score)} rows.")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1; got {alpha}.")

    def safe(idx: np.ndarray | slice) -> float | None:
        try:
            value = metric_fn(y_true[idx], y_score[idx])
        except ValueError:
            return None
        return None if value is None else float(value)

    estimate = safe(slice(None))
    with warnings.catch_warnings():
        # Undefined resamples are expected and left out; a warning for each of them would bury the log.
        warnings.simplefilter("ignore")
        scores = [safe(idx) for idx in _resamples(len(y_true), n, seed)]
    return _interval(math.nan if estimate is None else estimate, scores, alpha)


def _roc_auc(y_true: np.ndarray, prob: np.ndarray) -> float | None:
    """ROC AUC as the Mann-Whitney statistic (ties count half): exactly `sklearn.metrics.roc_auc_score`.

    Written out because bootstrapping calls it a thousand times per score and scikit-learn's input checks cost
    10-20 ms a call on a busy CPU, against well under 1 ms here. None when `y_true` holds one class only.
    """
    from scipy.stats import rankdata

    positives = int(y_true.sum())
    negatives = len(y_true) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(prob)  # average ranks of ties: a tied (positive, negative) pair counts half
    return float((ranks[y_true == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _binary_scores(y_true: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, Any]:
    """The counts and scores of one binary sample (NumPy only: this runs once per bootstrap resample)."""
    called = prob >= threshold
    tp = int(np.sum(called & (y_true == 1)))
    fp = int(np.sum(called & (y_true == 0)))
    fn = int(np.sum(~called & (y_true == 1)))
    tn = int(np.sum(~called & (y_true == 0)))

    def ratio(num: int, den: int) -> float:
        return num / den if den else 0.0  # scikit-learn's zero_division=0

    return {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "precision": ratio(tp, tp + fp),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": ratio(tp + tn, len(y_true)),
        "roc_auc": _roc_auc(y_true, prob),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def binary_report(
    y_true: Sequence[int] | np.ndarray,
    prob: Sequence[float] | np.ndarray,
    threshold: float = 0.5,
    *,
    bootstrap: int = 0,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Sensitivity, specificity, precision, F-score, accuracy and ROC AUC of positive-class probabilities.

    A case is called positive when its probability is >= `threshold`. With `bootstrap` > 0 every score of
    `BINARY_SCORES` also gets a percentile-bootstrap interval, all scores computed on the same resamples.

    Args:
        y_true: (n,) 0/1 truth (1 = positive, e.g. malignant).
        prob: (n,) probability of the positive class.
        threshold: the decision threshold.
        bootstrap: number of bootstrap resamples for the intervals (0: no intervals).
        seed: seed of the resampling.
        alpha: 1 - confidence level of the intervals.

    Returns:
        {"sensitivity", "specificity", "precision", "f1", "accuracy", "roc_auc" (None with one class only),
         "tp", "fp", "fn", "tn", "support", "positives", "threshold"} and, with `bootstrap`, "ci": {score: [low,
         high]} (None bounds where undefined) and "bootstrap": the number of resamples.

    Raises:
        ValueError: empty or misaligned inputs, or truth values other than 0 and 1.
    """
    y_true = np.asarray(y_true).astype("int64")
    prob = np.asarray(prob, dtype="float64").reshape(-1)
    if len(y_true) == 0 or len(y_true) != len(prob):
        raise ValueError(f"binary_report needs aligned non-empty inputs; got {len(y_true)} and {len(prob)} values.")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError(f"binary_report needs 0/1 truth; got the values {sorted(set(y_true.tolist()))}.")
    report = _binary_scores(y_true, prob, threshold)
    report.update(support=int(len(y_true)), positives=int(y_true.sum()), threshold=float(threshold))
    if bootstrap > 0:
        resamples = _resamples(len(y_true), bootstrap, seed)
        resampled = [_binary_scores(y_true[idx], prob[idx], threshold) for idx in resamples]
        report["ci"] = {}
        for name in BINARY_SCORES:
            interval = _interval(math.nan, [r[name] for r in resampled], alpha)
            report["ci"][name] = [None if math.isnan(b) else b for b in (interval.low, interval.high)]
        report["bootstrap"] = int(bootstrap)
    return report
