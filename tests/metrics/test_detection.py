"""Detection metrics against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from keras_medimg.io.annotations import Box
import numpy as np

from keras_medimg.errors import ConfigError
from keras_medimg.metrics.detection import (
    AGNOSTIC_LABEL,
    average_precision,
    box_iou,
    detection_report,
    match_boxes,
    remap_boxes,
)


def test_box_iou_pairs_every_box_of_a_with_every_box_of_b():
    a = [Box(0, 0, 10, 10), Box(5, 0, 15, 10)]
    b = [Box(0, 0, 10, 10), Box(10, 0, 20, 10), Box(1, 1, 11, 11)]
    expected = [[1.0, 0.0, 81 / 119],  # touching edges do not overlap
                [50 / 150, 50 / 150, 54 / 146]]
    np.testing.assert_allclose(box_iou(a, b), expected)
    np.testing.assert_allclose(box_iou(np.array([[0, 0, 4, 4]]), np.array([[2, 2, 6, 6]])), [[4 / 28]])
    assert box_iou([], b).shape == (0, 3) and box_iou(a, []).shape == (2, 0)
    assert box_iou([Box(3, 3, 3, 3)], [Box(3, 3, 3, 3)])[0, 0] == 0.0  # empty boxes have no IoU, not NaN


def test_greedy_matching_takes_best_score_first_and_each_truth_once():
    truth = [Box(0, 0, 10, 10, "tumor")]
    predicted = [Box(1, 1, 11, 11, "tumor", 0.6), Box(0, 0, 10, 10, "tumor", 0.9)]
    assert match_boxes(predicted, truth) == [False, True]
    assert match_boxes([Box(0, 0, 10, 10, "other", 0.9)], truth) == [False]  # class must agree


def _study_case():
    truth = [
        [Box(0, 0, 10, 10)],
        [Box(0, 0, 10, 10), Box(20, 20, 30, 30)],
        [],
        [],
    ]
    predicted = [
        [Box(0, 0, 10, 10, score=0.9), Box(20, 20, 30, 30, score=0.8)],  # TP, FP
        [Box(0, 0, 10, 10, score=0.7), Box(1, 1, 11, 11, score=0.6)],  # TP, duplicate = FP; one truth missed
        [Box(5, 5, 9, 9, score=0.3)],  # FP on an image without tumour
        [],
    ]
    return predicted, truth


def test_report_by_hand():
    predicted, truth = _study_case()
    # Ranked: .9 T, .8 F, .7 T, .6 F, .3 F with 3 truths -> envelope 1 up to recall 1/3, 2/3 up to 2/3.
    report = detection_report(predicted, truth, conf=0.5)
    assert report.map50 == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3)
    assert (report.tp, report.fp, report.fn) == (2, 2, 1)
    assert report.precision == pytest.approx(0.5)
    assert report.recall == pytest.approx(2 / 3)
    assert report.f1 == pytest.approx(4 / 7)
    assert report.accuracy == 1.0
    low = detection_report(predicted, truth, conf=0.25)
    assert low.fp == 3 and low.accuracy == 0.75
    assert low.map50 == report.map50  # mAP ranks every box whatever the threshold


def test_average_precision_edge_cases():
    assert average_precision([0.9, 0.8], [True, True], 2) == 1.0
    assert average_precision([], [], 2) == 0.0
    assert average_precision([0.5], [False], 0) == 0.0
    assert math.isnan(average_precision([], [], 0))
    # A miss ranked above a hit halves the precision at full recall.
    assert average_precision([0.9, 0.8], [False, True], 1) == pytest.approx(0.5)


def test_map_averages_classes_with_truth():
    truth = [[Box(0, 0, 10, 10, "glioma"), Box(20, 20, 30, 30, "pituitary")]]
    predicted = [[Box(0, 0, 10, 10, "glioma", 0.9), Box(20, 20, 30, 30, "glioma", 0.8)]]
    report = detection_report(predicted, truth)
    assert report.ap50 == {"glioma": 1.0, "pituitary": 0.0}
    assert report.map50 == 0.5


def test_lengths_must_agree():
    with pytest.raises(ValueError, match="one per image"):
        detection_report([[]], [[], []])


def test_agnostic_turns_a_class_mismatch_into_a_match():
    # One tumour outlined well but named with the wrong class: per class that is a FP (glioma) and a FN
    # (pituitary); agnostic evaluation asks only "was it found?" and counts a TP.
    truth = [[Box(0, 0, 10, 10, "pituitary")]]
    predicted = [[Box(1, 0, 10, 10, "glioma", 0.9)]]  # IoU 0.9
    strict = detection_report(predicted, truth)
    assert (strict.tp, strict.fp, strict.fn) == (0, 1, 1)
    assert strict.per_class["glioma"]["fp"] == 1 and strict.per_class["pituitary"]["fn"] == 1
    assert strict.map50 == 0.0 and math.isnan(strict.per_class["glioma"]["ap50"])
    agnostic = detection_report(predicted, truth, class_remap="agnostic")
    assert (agnostic.tp, agnostic.fp, agnostic.fn) == (1, 0, 0)
    assert agnostic.precision == agnostic.recall == agnostic.map50 == 1.0
    assert agnostic.ap50 == {AGNOSTIC_LABEL: 1.0}


def test_mapping_remap_merges_only_the_named_classes():
    remap = {"glioma": "tumour", "meningioma": "tumour"}
    truth = [[Box(0, 0, 10, 10, "meningioma"), Box(20, 20, 30, 30, "pituitary")]]
    predicted = [[Box(0, 0, 10, 10, "glioma", 0.9), Box(20, 20, 30, 30, "glioma", 0.8)]]
    report = detection_report(predicted, truth, class_remap=remap)
    # glioma->tumour matches meningioma->tumour; pituitary keeps its name, so the second box is still wrong.
    assert (report.tp, report.fp, report.fn) == (1, 1, 1)
    assert report.ap50 == {"pituitary": 0.0, "tumour": pytest.approx(1.0)}
    assert report.per_class["tumour"] == {"tp": 1, "fp": 1, "fn": 0, "precision": 0.5, "recall": 1.0,
                                          "f1": pytest.approx(2 / 3), "ap50": pytest.approx(1.0)}
    assert [b.label for b in remap_boxes(truth[0], remap)] == ["tumour", "pituitary"]


def test_unknown_remap_word_is_a_config_error():
    with pytest.raises(ConfigError, match="'binary' is unknown"):
        detection_report([[Box(0, 0, 1, 1, "a")]], [[]], class_remap="binary")


def test_per_class_counts_add_up_to_the_totals():
    predicted, truth = _study_case()
    report = detection_report(predicted, truth, conf=0.5)
    assert report.per_class == {"0": {"tp": 2, "fp": 2, "fn": 1, "precision": 0.5, "recall": pytest.approx(2 / 3),
                                      "f1": pytest.approx(4 / 7), "ap50": pytest.approx(report.map50)}}
