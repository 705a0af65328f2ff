"""Multi-label thresholds: selection order, top-1, per-concept tuning scored as the official primary F1."""

import numpy as np
import pytest

from keras_medimg.metrics.imageclef import primary_f1
from keras_medimg.metrics.thresholds import select, tune_thresholds


def test_select_thresholds_top1_and_order():
    probabilities = np.array([[0.9, 0.2, 0.6], [0.1, 0.3, 0.2], [0.5, 0.5, 0.5]], np.float32)
    chosen = select(probabilities, 0.5)
    assert [c.tolist() for c in chosen] == [[0, 2], [1], [0, 1, 2]]  # image 2: nothing >= 0.5, top-1 added
    assert select(probabilities, 0.5, top1=False)[1].tolist() == []
    assert select(probabilities, np.array([0.95, 0.1, 0.5]))[0].tolist() == [2, 1]  # per-concept thresholds
    assert select(probabilities, 0.1, max_concepts=2)[0].tolist() == [0, 2]


def test_tune_thresholds_picks_the_best_global_threshold_by_primary_f1():
    concepts = ["A", "B", "C"]
    probabilities = np.array([[0.9, 0.35, 0.1], [0.2, 0.8, 0.35], [0.6, 0.1, 0.45]], np.float32)
    truth = [["A", "B"], ["B", "C"], ["A", "X"]]  # X: a concept the model has no output for
    thresholds, best, rows = tune_thresholds(probabilities, truth, concepts, candidates=[0.3, 0.5])
    # 0.3: {A,B} {B,C} {A,C} -> 1, 1, 0.5;  0.5: {A} {B} {A} -> 2/3, 2/3, 2/3
    assert [round(r["primary_f1"], 4) for r in rows] == [round(2.5 / 3, 4), round(2 / 3, 4)]
    assert best == 0.3 and thresholds.tolist() == [0.3, 0.3, 0.3]
    assert rows[0]["concepts_per_image"] == 2.0


def test_per_concept_tuning_never_lowers_the_validation_score():
    rng = np.random.default_rng(0)
    concepts = [f"C{i}" for i in range(8)]
    truth = [[c for c in concepts if rng.random() < 0.3] for _ in range(120)]
    hits = np.array([[c in t for c in concepts] for t in truth], np.float32)
    probabilities = np.clip(hits * rng.uniform(0.2, 0.9, hits.shape) + rng.uniform(0, 0.5, hits.shape), 0, 1)
    thresholds, best, rows = tune_thresholds(probabilities, truth, concepts, candidates=[0.1 * i for i in range(1, 10)],
                                             per_concept=True, per_concept_min_support=3)
    assert rows[-1]["threshold"] == "per-concept"
    assert rows[-1]["primary_f1"] >= max(r["primary_f1"] for r in rows[:-1]) - 1e-9
    # The vectorised search scores exactly what the official formula gives for the chosen thresholds.
    predictions = {i: [concepts[c] for c in idx] for i, idx in enumerate(select(probabilities, thresholds))}
    assert rows[-1]["primary_f1"] == pytest.approx(primary_f1(dict(enumerate(truth)), predictions))
