"""End to end on tiny demo sets: the ROI-aware pipeline learns, and no DICOM PHI reaches any output file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from keras_medimg.apps.roi import pipeline
from keras_medimg.apps.roi.config import RoiAppConfig
from keras_medimg.config import load_config
from keras_medimg.datasets.synthetic.roi import DEMO_PHI, generate_vindr
from keras_medimg.runs import RunPlace

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, root: Path, *overrides: str) -> RoiAppConfig:
    return load_config(RoiAppConfig, app="roi", options={"data.root": str(root), "data.prepared": str(tmp_path / "prepared")},
                       overrides=["train.epochs=6", "evaluate.bootstrap=50", "prepare.size=128", "model.image_size=64",
                                  *overrides])


def test_roi_aware_pipeline_is_clearly_above_chance(tmp_path):
    """Only the left CC view (a manifest of the VinDr demo), so few models train: the ROI-aware merge must beat
    chance clearly and the baseline on F-score, as in the study."""
    root = generate_vindr(tmp_path / "vindr", n_studies=44, height=128, width=96, seed=3)
    rows = []
    with open(root / "breast-level_annotations.csv", newline="") as fh:
        breast = [r for r in csv.DictReader(fh) if r["laterality"] == "L" and r["view_position"] == "CC"]
    with open(root / "finding_annotations.csv", newline="") as fh:
        boxed = {r["image_id"] for r in csv.DictReader(fh) if r["xmin"]}
    for r in breast:
        if r["breast_birads"] != "BI-RADS 1":
            rows.append({"path": f"images/{r['study_id']}/{r['image_id']}.dicom", "label": r["breast_birads"],
                         "view": "CC", "laterality": "L", "roi": int(r["image_id"] in boxed), "patient": r["study_id"]})
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cfg = _config(tmp_path, manifest, "data.format=csv", "data.test_ratio=0.4", "groups.min_images=6",
                  "train.epochs=5")
    result = pipeline.train(cfg, run=RunPlace(tmp_path / "runs", "learn"))
    methods = result.metrics["methods"]
    roi_aware, baseline = methods["roi_aware"]["merged"], methods["baseline"]["merged"]
    assert roi_aware["support"] >= 12 and roi_aware["positives"] >= 3
    assert roi_aware["accuracy"] >= 0.75 and roi_aware["f1"] >= 0.6, roi_aware
    assert roi_aware["f1"] >= baseline["f1"]
    assert roi_aware["ci"]["f1"][0] <= roi_aware["f1"] <= roi_aware["ci"]["f1"][1]
    run = result.run.dir
    assert {"comparison.csv", "comparison.md", "study_table.md", "predictions.csv", "routing.json", "groups.csv"} <= {
        p.name for p in run.iterdir()}
    assert "ROI-only rule" in (run / "study_table.md").read_text()


def test_no_phi_in_any_output_of_train_predict_export(tmp_path):
    root = generate_vindr(tmp_path / "vindr", n_studies=8, height=96, width=72, seed=4)
    cfg = _config(tmp_path, root, "groups.min_images=20", "train.epochs=1", "export.formats=[onnx]")
    trained = pipeline.train(cfg, run=RunPlace(tmp_path / "runs", "train")).run.dir
    routing = json.loads((trained / "routing.json").read_text())
    assert routing["schemes"]["pooled"]["all"]["rule"] == "model"
    predict_cfg = load_config(RoiAppConfig, app="roi", options={"predict.weights": str(trained),
                                                               "predict.source": str(root / "images"),
                                                               "predict.gradcam": True})
    predicted = pipeline.predict(predict_cfg, run=RunPlace(tmp_path / "runs", "predict"))
    with open(predicted.run.dir / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 32 and all(r["view"] in ("CC", "MLO") and r["laterality"] in ("L", "R") for r in rows)
    assert {r["group"] for r in rows} == {"pooled/all"}  # no ROI given: view baselines, whose parent is pooled
    pipeline.export(load_config(RoiAppConfig, app="roi", options={"predict.weights": str(trained)},
                                overrides=["export.formats=[onnx]"]), run=RunPlace(tmp_path / "runs", "export"))
    markers = [value.format(n=n).encode() for value in DEMO_PHI.values() for n in range(8)]
    markers += [b"DEMO^PATIENT", b"PHI-ID-", b"DEMO-PHI-HOSPITAL", b"PHI-ACC-", b"19580412"]
    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert len(files) > 20
    leaks = [(str(p), m) for p in files for m in set(markers) if m in p.read_bytes()]
    assert not leaks


def test_detector_routes_by_detected_roi(tmp_path):
    """roi.source detector: a YOLO stage trained on the ROI boxes decides ROI presence; the detected rows are
    scored beside the annotated ones, and predict routes by detection."""
    root = generate_vindr(tmp_path / "vindr", n_studies=8, height=128, width=96, seed=5)
    cfg = _config(tmp_path, root, "groups.min_images=20", "train.epochs=1", "roi.source=detector", "roi.detector_epochs=1",
                  "roi.detector_imgsz=64")
    result = pipeline.train(cfg, run=RunPlace(tmp_path / "runs", "train"))
    assert {"roi_aware_detected", "roi_only_rule_detected"} <= set(result.metrics["methods"])
    with open(result.run.dir / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["roi_detected"] in ("0", "1") for r in rows)
    for row in rows:  # the detected ROI flag, not the annotation, chose the ROI-aware group
        assert float(row["roi_only_rule_detected_probability"]) == float(row["roi_detected"])
    assert (result.run.dir / "weights" / "detector.pt").is_file()
    predict_cfg = load_config(RoiAppConfig, app="roi", options={"predict.weights": str(result.run.dir),
                                                               "predict.source": str(root / "images"),
                                                               "roi.source": "detector"})
    predicted = pipeline.predict(predict_cfg, run=RunPlace(tmp_path / "runs", "predict"))
    with open(predicted.run.dir / "predictions.csv", newline="") as fh:
        assert {r["roi_source"] for r in csv.DictReader(fh)} == {"detector"}
