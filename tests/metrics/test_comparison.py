"""Comparison rows and the scores-by-method table keep every method, score and interval."""

from keras_medimg.metrics.comparison import comparison_columns, comparison_rows, interval_cell, scores_by_method


def test_rows_intervals_and_table():
    reports = {"a": {"f1": 0.8, "sensitivity": 1.0, "support": 10, "ci": {"f1": [0.6, 0.9]}},
               "b": {"f1": None, "sensitivity": 0.5, "support": 9}}
    rows = comparison_rows(reports, {"a": "Method A"}, scores=("sensitivity", "f1"))
    assert [r["method"] for r in rows] == ["Method A", "b"]
    assert rows[0]["f1_low"] == 0.6 and rows[0]["sensitivity_low"] is None and rows[1]["images"] == 9
    assert list(rows[0]) == comparison_columns(("sensitivity", "f1"))
    assert interval_cell(0.8, 0.6, 0.9) == "0.80 [0.60, 0.90]" and interval_cell(0.5, None, None) == "0.50"
    assert interval_cell(None, 0.1, 0.2) == "n/a"
    table = scores_by_method(rows, ("sensitivity", "f1"))
    assert "Method A" in table and "0.80 [0.60, 0.90]" in table and "n/a" in table and "F-score" in table
