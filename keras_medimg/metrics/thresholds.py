"""Multi-label decisions: which concepts an image gets from its probabilities, and thresholds tuned for it.

The score tuned is the ImageCLEFmedical primary F1 (the mean over images of each image's F1 between its
true and predicted concepts), which is what a multi-label run of this kind is judged by.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from keras_medimg.errors import ConfigError


def select(
    probabilities: np.ndarray, thresholds: np.ndarray | float, *, top1: bool = True, max_concepts: int = 100
) -> list[np.ndarray]:
    """The concept indices of each image, most probable first.

    Args:
        probabilities: (N, C) sigmoid outputs.
        thresholds: one threshold, or one per concept (C,).
        top1: an image with no concept above its threshold gets its most probable concept.
        max_concepts: keep at most this many concepts per image (the most probable ones).

    Returns:
        N arrays of concept indices.
    """
    chosen = []
    for row in probabilities:
        order = np.argsort(-row, kind="stable")
        above = order[row[order] >= (thresholds if np.ndim(thresholds) == 0 else np.asarray(thresholds)[order])]
        if len(above) == 0 and top1:
            above = order[:1]
        chosen.append(above[:max_concepts])
    return chosen


class _ThresholdSearch:
    """Primary F1 of many threshold settings on one validation set, from per-image counts (vectorised).

    Per image: `n_true` true CUIs (all of them, also those the model has no output for), and for the current
    thresholds the raw counts of predicted concepts and of true ones among them; with top-1, an image with no
    prediction gets its most probable concept. F1 = 2 tp / (n_true + n_predicted), averaged over images with truth.
    """

    def __init__(self, probabilities: np.ndarray, truth: Sequence[Sequence[str]], concepts: Sequence[str], top1: bool):
        index = {cui: i for i, cui in enumerate(concepts)}
        self.probabilities = probabilities
        self.hits = np.zeros(probabilities.shape, bool)
        for row, cuis in enumerate(truth):
            for cui in set(cuis):
                if cui in index:
                    self.hits[row, index[cui]] = True
        self.n_true = np.array([len(set(cuis)) for cuis in truth])
        self.top_hit = self.hits[np.arange(len(truth)), probabilities.argmax(axis=1)] if len(truth) else np.zeros(0, bool)
        self.top1 = top1
        self.counted = self.n_true > 0

    def counts(self, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        predicted = self.probabilities >= thresholds
        return (predicted & self.hits).sum(axis=1), predicted.sum(axis=1)

    def f1(self, tp: np.ndarray, n_predicted: np.ndarray) -> float:
        if self.top1:
            empty = n_predicted == 0
            tp = np.where(empty, self.top_hit, tp)
            n_predicted = np.where(empty, 1, n_predicted)
        if not self.counted.any():
            return float("nan")
        return float(np.mean(2.0 * tp[self.counted] / (self.n_true + n_predicted)[self.counted]))

    def tune_concept(
        self, c: int, thresholds: np.ndarray, candidates: Sequence[float], tp: np.ndarray, n_predicted: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """The best threshold of concept `c` with the others fixed, and the per-image counts it gives.

        Only column `c` changes, so the counts are updated rather than recomputed: O(N) per candidate.
        """
        old = self.probabilities[:, c] >= thresholds[c]
        base_tp = tp - (old & self.hits[:, c])
        base_n = n_predicted - old
        best = (float(thresholds[c]), self.f1(tp, n_predicted), tp, n_predicted)
        for t in candidates:
            new = self.probabilities[:, c] >= t
            new_tp, new_n = base_tp + (new & self.hits[:, c]), base_n + new
            score = self.f1(new_tp, new_n)
            if score > best[1] + 1e-12:
                best = (float(t), score, new_tp, new_n)
        return best[0], best[2], best[3]


def tune_thresholds(
    probabilities: np.ndarray,
    truth: Sequence[Sequence[str]],
    concepts: Sequence[str],
    *,
    candidates: Sequence[float],
    per_concept: bool = False,
    per_concept_min_support: int = 5,
    top1: bool = True,
) -> tuple[np.ndarray, float, list[dict[str, Any]]]:
    """Choose thresholds on a validation set by the primary F1.

    Every global candidate is scored; the best one is kept (on ties, the one closest to 0.5). With `per_concept`,
    each concept on at least `per_concept_min_support` validation images then gets the candidate that maximises
    the primary F1 with the other thresholds fixed (one pass, most frequent concept first).

    Args:
        probabilities: (N, C) validation probabilities.
        truth: the N images' true CUIs.
        concepts: the C output concepts.
        candidates: the thresholds tried (globally, then per concept).
        per_concept: tune one threshold per concept after the global one.
        per_concept_min_support: concepts on fewer validation images keep the global threshold.
        top1: an image with no concept above threshold gets its most probable one (as at prediction time).
            A per-image concept limit is left out of the search: it only matters for images with more than that
            many concepts above threshold.

    Returns:
        (C,) thresholds, the best global threshold, and the table rows (`threshold`, `primary_f1`,
        `concepts_per_image`), the last row being the per-concept result when tuned.
    """
    if not candidates:
        raise ConfigError("No threshold candidates given. Give at least one threshold, e.g. [0.3, 0.5].")
    search = _ThresholdSearch(probabilities, truth, concepts, top1)
    rows = []
    for t in candidates:
        tp, n_predicted = search.counts(np.full(len(concepts), t))
        shown = np.where(n_predicted == 0, int(top1), n_predicted)
        rows.append({"threshold": float(t), "primary_f1": search.f1(tp, n_predicted), "concepts_per_image": float(shown.mean())})
    best = max(rows, key=lambda row: (np.nan_to_num(row["primary_f1"], nan=-1.0), -abs(row["threshold"] - 0.5)))
    thresholds = np.full(len(concepts), best["threshold"], dtype=np.float64)
    if per_concept:
        support = search.hits.sum(axis=0)
        tp, n_predicted = search.counts(thresholds)
        for c in np.argsort(-support, kind="stable"):
            if support[c] < per_concept_min_support:
                break
            thresholds[c], tp, n_predicted = search.tune_concept(c, thresholds, candidates, tp, n_predicted)
        shown = np.where(n_predicted == 0, int(top1), n_predicted)
        rows.append({"threshold": "per-concept", "primary_f1": search.f1(tp, n_predicted), "concepts_per_image": float(shown.mean())})
    return thresholds, best["threshold"], rows


def format_threshold_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows of `tune_thresholds` as a text table for the terminal."""
    lines = [f"{'threshold':>11}  {'primary F1':>10}  {'concepts/image':>14}"]
    for row in rows:
        threshold = row["threshold"] if isinstance(row["threshold"], str) else f"{row['threshold']:.2f}"
        lines.append(f"{threshold:>11}  {row['primary_f1']:>10.4f}  {row['concepts_per_image']:>14.2f}")
    return "\n".join(lines)
