"""What a detection app writes: its test scores (P/R/F1 at one confidence and IoU, mAP50, per class, a PR curve)
as tables and a plot, each predicted image's VOC XML / YOLO txt / overlay / predictions.csv rows, and ablation
grids repeated over seeds and summarised as mean +/- std rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keras_medimg.io.annotations import Box
from keras_medimg.metrics.detection import detection_report, match_boxes
from keras_medimg.runs import Run

log = logging.getLogger(__name__)

#: The columns of per_class.csv / per_class.md.
PER_CLASS_COLUMNS = ["class", "tp", "fp", "fn", "precision", "recall", "f1", "ap50"]
#: The columns of predictions.csv (one row per box).
PREDICTION_COLUMNS = ["id", "path", "class", "score", "x1", "y1", "x2", "y2"]
#: The scores a seeded grid row summarises.
SUMMARY_KEYS = ("precision", "recall", "f1", "map50")


def score_detections(predicted: Sequence[Sequence[Box]], truth: Sequence[Sequence[Box]], *, conf: float, iou: float,
                     class_names: Sequence[str]) -> dict[str, Any]:
    """P/R/F1 at `conf` and `iou`, mAP50, per class (`detection_report`), plus the PR curve, conf, iou and the
    detector's class names; `predicted` should hold every box down to a low score (0.001) for mAP and the curve."""
    report = detection_report(predicted, truth, conf=conf, iou_threshold=iou).to_dict()
    report["pr_curve"] = pr_curve(predicted, truth, iou)
    report.update(conf=conf, iou=iou, class_names=list(class_names))
    return report


def pr_curve(predicted: Sequence[Sequence[Box]], truth: Sequence[Sequence[Box]], iou: float) -> dict[str, list[float]]:
    """All classes together: precision and recall as the score threshold falls through every predicted box."""
    ranked = []
    for boxes, gts in zip(predicted, truth):
        ranked += [(b.score, hit) for b, hit in zip(boxes, match_boxes(boxes, gts, iou_threshold=iou))]
    ranked.sort(key=lambda item: -item[0])
    n_truth = sum(len(g) for g in truth)
    hits = np.cumsum([hit for _, hit in ranked]) if ranked else np.zeros(0)
    precision = hits / np.arange(1, len(ranked) + 1) if ranked else hits
    recall = hits / max(n_truth, 1)
    step = max(1, len(ranked) // 200)  # enough points to draw, not thousands in metrics.json
    return {"score": [round(s, 4) for s, _ in ranked[::step]], "precision": precision[::step].round(4).tolist(),
            "recall": recall[::step].round(4).tolist()}


def per_class_rows(report: Mapping[str, Any], *, digits: int | None = None) -> list[dict[str, Any]]:
    """A row per class and an "all" row of a `score_detections` report (floats rounded to `digits` if given)."""

    def rounded(value: Any) -> Any:
        return round(value, digits) if digits is not None and isinstance(value, float) else value

    rows = [{"class": name, **{k: rounded(v) for k, v in values.items()}} for name, values in report["per_class"].items()]
    overall = {"tp": report["tp"], "fp": report["fp"], "fn": report["fn"], "precision": report["precision"],
               "recall": report["recall"], "f1": report["f1"], "ap50": report["map50"]}
    rows.append({"class": "all", **{k: rounded(v) for k, v in overall.items()}})
    return rows


def per_class_table(report: Mapping[str, Any]) -> str:
    """The per-class rows of a `score_detections` report as a Markdown table."""
    from keras_medimg.reporting import markdown_table

    return markdown_table(per_class_rows(report, digits=4), PER_CLASS_COLUMNS)


def write_evaluation(run: Run, report: Mapping[str, Any], split: str) -> None:
    """per_class.csv, per_class.md and plots/pr_curve.png of a `score_detections` report on `split`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_medimg.runs import atomic_write_text

    run.write_csv("per_class.csv", per_class_rows(report), PER_CLASS_COLUMNS)
    atomic_write_text(run.path("per_class.md"), per_class_table(report))
    curve = report["pr_curve"]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(curve["recall"], curve["precision"], lw=1.5)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"{split}: mAP50 {report['map50']:.3f}, F1 {report['f1']:.3f} at conf {report['conf']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run.path("plots", "pr_curve.png"), dpi=100)
    plt.close(fig)


def write_detections(run: Run, sample_id: str, path: Path, image: np.ndarray, boxes: Sequence[Box],
                     class_names: Sequence[str], *, overlay: bool = True) -> list[dict[str, Any]]:
    """One image's outputs in `run`: labels_voc/ID.xml, labels/ID.txt (YOLO, indices of `class_names`) and, with
    `overlay`, overlays/ID.png (8-bit); returns its `PREDICTION_COLUMNS` rows for predictions.csv.

    Args:
        image: the image as the detector saw it (uint8, 2-D or RGB); its size is the labels' frame.
        path: the source file (named in the VOC XML and the rows).
    """
    from keras_medimg.io.annotations import write_voc, write_yolo
    from keras_medimg.io.images import write_image
    from keras_medimg.reporting import draw_overlay

    size = (image.shape[1], image.shape[0])
    write_voc(run.path("labels_voc", f"{sample_id}.xml"), boxes, size, path.name)
    write_yolo(run.path("labels", f"{sample_id}.txt"), boxes, size, class_names)
    if overlay:
        write_image(run.path("overlays", f"{sample_id}.png"), draw_overlay(image, boxes, None, sample_id))
    return [{"id": sample_id, "path": str(path), "class": b.label, "score": round(b.score, 4), "x1": round(b.x1, 1),
             "y1": round(b.y1, 1), "x2": round(b.x2, 1), "y2": round(b.y2, 1)} for b in boxes]


def mean_std_row(label: str, row: str, scores: Sequence[Mapping[str, Any]],
                 keys: Sequence[str] = SUMMARY_KEYS) -> dict[str, Any]:
    """One table row of a grid row run once per seed: `{label: row, "seeds": n, key: mean, key_std: std}` (sample
    std, ddof 1; 0 for a single seed), rounded to 4 digits."""
    out: dict[str, Any] = {label: row, "seeds": len(scores)}
    for key in keys:
        values = np.array([s[key] for s in scores], float)
        out[key] = round(float(values.mean()), 4)
        out[f"{key}_std"] = round(float(values.std(ddof=1)) if len(values) > 1 else 0.0, 4)
    return out


def run_seeded_grid(rows: Sequence[str], seeds: int, run_one: Callable[[str, int], Mapping[str, Any]], *,
                    label: str) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Run `run_one(row, k)` (returning a report with `SUMMARY_KEYS`) for every row and seed index k < `seeds`.

    Returns:
        (row -> its per-seed summaries, the `mean_std_row` of every row in order).
    """
    results: dict[str, list[dict[str, Any]]] = {}
    table = []
    for row in rows:
        scores = []
        for k in range(seeds):
            report = run_one(row, k)
            log.info("%s %s seed %d: P %.3f R %.3f F1 %.3f", label, row, k, report["precision"], report["recall"],
                     report["f1"])
            scores.append({key: report[key] for key in SUMMARY_KEYS})
        results[row] = scores
        table.append(mean_std_row(label, row, scores))
    return results, table


def write_grid_table(run: Run, label: str, table: Sequence[Mapping[str, Any]]) -> str:
    """ablation_<label>.csv/.md and its bar chart of test F1 (mean, std as error bar); returns the Markdown."""
    from keras_medimg.reporting import markdown_table, write_comparison

    columns = [label, "seeds", "precision", "precision_std", "recall", "recall_std", "f1", "f1_std", "map50"]
    write_comparison(run, f"ablation_{label}", table, columns=columns, metric="f1", label=label, error="f1_std",
                     title=f"{label} ablation (test F1, mean +/- std over seeds)", ylabel="F1")
    return markdown_table(table, columns)
