"""The one-line detector summary the apps log and print."""

from keras_medimg.io.annotations import Box
from keras_medimg.metrics.detection import detection_report, format_detection_line


def test_format_detection_line_reads_a_report_or_its_dict():
    truth = [[Box(0, 0, 10, 10, "t")], [Box(0, 0, 10, 10, "t")], []]
    predicted = [[Box(0, 0, 10, 10, "t", 0.9)], [], [Box(5, 5, 9, 9, "t", 0.8)]]
    report = detection_report(predicted, truth)
    line = format_detection_line(report)
    assert line == ("precision 0.500, recall 0.500, F1 0.500, accuracy 0.333, mAP50 0.500 (3 images)")
    assert format_detection_line(report.to_dict()) == line
