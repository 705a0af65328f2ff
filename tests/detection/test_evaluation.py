"""`detection.evaluation`: scores, tables, per-image outputs and seeded grids of a detection app."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from keras_medimg.detection import evaluation
from keras_medimg.io.annotations import Box
from keras_medimg.runs import RunPlace, start_run


@dataclass
class _Config:
    seed: int = 0


def test_score_detections_and_pr_curve_rank_every_box():
    truth = [[Box(0, 0, 10, 10, "a")], [Box(20, 20, 30, 30, "a")]]
    predicted = [[Box(0, 0, 10, 10, "a", 0.9), Box(50, 50, 60, 60, "a", 0.8)], [Box(20, 20, 30, 30, "a", 0.1)]]
    report = evaluation.score_detections(predicted, truth, conf=0.5, iou=0.5, class_names=["a"])
    assert (report["tp"], report["fp"], report["fn"]) == (1, 1, 1)  # the 0.1 box is below conf
    curve = report["pr_curve"]
    assert curve["score"] == [0.9, 0.8, 0.1]
    assert curve["precision"] == pytest.approx([1.0, 0.5, 2 / 3], abs=1e-4)
    assert curve["recall"] == [0.5, 0.5, 1.0]
    rows = evaluation.per_class_rows(report)
    assert [r["class"] for r in rows] == ["a", "all"] and rows[-1]["tp"] == 1
    assert "| all |" in evaluation.per_class_table(report)


def test_seeded_grid_reports_mean_and_sample_std(tmp_path):
    def run_one(row: str, k: int) -> dict:
        f1 = {"a": [0.4, 0.6], "b": [0.5, 0.5]}[row][k]
        return {"precision": f1, "recall": f1, "f1": f1, "map50": f1, "extra": "dropped"}

    results, table = evaluation.run_seeded_grid(["a", "b"], 2, run_one, label="tiling")
    assert results["a"] == [{"precision": 0.4, "recall": 0.4, "f1": 0.4, "map50": 0.4},
                            {"precision": 0.6, "recall": 0.6, "f1": 0.6, "map50": 0.6}]
    assert table[0]["tiling"] == "a" and table[0]["seeds"] == 2 and table[0]["f1"] == 0.5
    assert table[0]["f1_std"] == pytest.approx(np.std([0.4, 0.6], ddof=1), abs=1e-4) and table[1]["f1_std"] == 0.0
    assert evaluation.mean_std_row("x", "r", [{"f1": 0.3}], keys=("f1",)) == {"x": "r", "seeds": 1, "f1": 0.3,
                                                                              "f1_std": 0.0}
    run = start_run("test", "ablate", _Config(), RunPlace(str(tmp_path), "grid", False))
    markdown = evaluation.write_grid_table(run, "tiling", table)
    assert "| a |" in markdown and (run.dir / "ablation_tiling.csv").is_file()


def test_write_detections_writes_voc_yolo_overlay_and_rows(tmp_path):
    run = start_run("test", "predict", _Config(), RunPlace(str(tmp_path), "p", False))
    image = np.zeros((40, 80), np.uint8)
    boxes = [Box(10, 10, 30, 20, "b", 0.91234)]
    rows = evaluation.write_detections(run, "scan1", Path("in/scan1.png"), image, boxes, ["a", "b"])
    assert rows == [{"id": "scan1", "path": str(Path("in/scan1.png")), "class": "b", "score": 0.9123, "x1": 10,
                     "y1": 10, "x2": 30, "y2": 20}]
    # YOLO: class index 1, centre (20, 15) of an 80x40 image, size 20x10.
    values = [float(v) for v in (run.dir / "labels" / "scan1.txt").read_text().split()]
    assert values == pytest.approx([1, 0.25, 0.375, 0.25, 0.25])
    assert "<name>b</name>" in (run.dir / "labels_voc" / "scan1.xml").read_text()
    assert (run.dir / "overlays" / "scan1.png").is_file()
    evaluation.write_detections(run, "scan2", Path("scan2.png"), image, [], ["a"], overlay=False)
    assert not (run.dir / "overlays" / "scan2.png").exists() and (run.dir / "labels" / "scan2.txt").is_file()
    run.write_csv("predictions.csv", rows, evaluation.PREDICTION_COLUMNS)
    assert next(csv.DictReader((run.dir / "predictions.csv").open()))["class"] == "b"
