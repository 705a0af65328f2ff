"""Comparison rows of several methods' reports, each score with its bootstrap 95% interval.

A report is what `metrics.classification.binary_report(..., bootstrap=N)` returns: scores by name, `support`, and
`ci` = {score: [low, high]}. `comparison_rows` flattens reports into one row per method (`<score>`,
`<score>_low`, `<score>_high`, `images`), ready for `reporting.write_comparison`; `scores_by_method` lays the
same rows out as a study's results table: one row per score, one column per method, "0.80 [0.60, 0.90]" cells.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from keras_medimg.reporting import markdown_table

BINARY_SCORES = ("sensitivity", "specificity", "f1", "accuracy", "roc_auc")
SCORE_NAMES = {"sensitivity": "Sensitivity", "specificity": "Specificity", "f1": "F-score", "accuracy": "Accuracy",
               "roc_auc": "ROC AUC", "precision": "Precision", "balanced_accuracy": "Balanced accuracy"}


def comparison_rows(reports: Mapping[str, Mapping[str, Any]], names: Mapping[str, str] | None = None,
                    scores: Sequence[str] = BINARY_SCORES) -> list[dict[str, Any]]:
    """One row per method (in `reports`' order): method (its display name from `names`), each score with its
    interval bounds (None where the report has none), and `images` (the report's support)."""
    rows = []
    for method, report in reports.items():
        row: dict[str, Any] = {"method": (names or {}).get(method, method)}
        for score in scores:
            row[score] = report.get(score)
            low, high = (report.get("ci") or {}).get(score) or (None, None)
            row[f"{score}_low"], row[f"{score}_high"] = low, high
        row["images"] = report.get("support")
        rows.append(row)
    return rows


def comparison_columns(scores: Sequence[str] = BINARY_SCORES) -> list[str]:
    """The columns of `comparison_rows`, in order."""
    return ["method", *[c for s in scores for c in (s, f"{s}_low", f"{s}_high")], "images"]


def interval_cell(value: Any, low: Any, high: Any, digits: int = 2) -> str:
    """'0.80 [0.60, 0.90]'; '0.80' without an interval; 'n/a' without a value."""
    if value is None:
        return "n/a"
    if low is None or high is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def scores_by_method(rows: Sequence[Mapping[str, Any]], scores: Sequence[str] = BINARY_SCORES) -> str:
    """Markdown: one row per score, one column per method (rows from `comparison_rows`), intervals in brackets."""
    layout = [{"": SCORE_NAMES.get(s, s), **{r["method"]: interval_cell(r[s], r[f"{s}_low"], r[f"{s}_high"])
                                              for r in rows}} for s in scores]
    return markdown_table(layout, ["", *[r["method"] for r in rows]])
