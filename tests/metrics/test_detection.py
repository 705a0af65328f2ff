"""Detection metrics against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from keras_medimg.io.annotations import Box
from keras_medimg.metrics.detection import average_precision, box_iou, detection_report, match_boxes


def test_box_iou():
    assert box_iou(Box(0, 0, 10, 10), Box(0, 0, 10, 10)) == 1.0
    assert box_iou(Box(0, 0, 10, 10), Box(5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou(Box(0, 0, 10, 10), Box(10, 0, 20, 10)) == 0.0  # touching edges do not overlap
    assert box_iou(Box(0, 0, 10, 10), Box(1, 1, 11, 11)) == pytest.approx(81 / 119)


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
