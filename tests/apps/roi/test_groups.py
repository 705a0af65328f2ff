"""The study's grouping: group keys, the rules for groups that cannot be trained, routing to parents, the ROI-only rule."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from keras_medimg.apps.roi import pipeline
from keras_medimg.apps.roi.config import GroupsConfig, RoiAppConfig
from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.metrics.comparison import comparison_rows, interval_cell
from keras_medimg.training import groups as groups_lib


def _sample(i: int, label: str, view: str = "CC", side: str = "L", roi: bool = False) -> Sample:
    return Sample(id=f"s{i}", path=Path(f"/none/s{i}.png"), label=label, view=view, laterality=side, group=f"p{i}",
                  meta={"roi": roi})


def test_group_keys_follow_the_study():
    sample = _sample(0, "benign", "MLO", "R", roi=True)
    assert pipeline.group_of(sample, "pooled") == "all"
    assert pipeline.group_of(sample, "baseline") == "RMLO"
    assert pipeline.group_of(sample, "roi_aware") == "roi-RMLO"
    assert pipeline.group_of(sample, "roi_aware", roi=False) == "noroi-RMLO"
    assert pipeline.parent_of("roi_aware", "noroi-RMLO") == ("baseline", "RMLO")
    assert pipeline.parent_of("baseline", "RMLO") == ("pooled", "all")
    assert len(pipeline.all_groups("roi_aware")) == 8 and len(pipeline.all_groups("baseline")) == 4


def test_rules_for_small_one_class_and_empty_groups():
    train = ([_sample(i, "malignant", roi=True) for i in range(8)]  # roi-LCC: one class
             + [_sample(10 + i, "benign") for i in range(6)] + [_sample(20, "malignant")]  # noroi-LCC: trainable
             + [_sample(30, "benign", "MLO", "R"), _sample(31, "malignant", "MLO", "R")])  # RMLO: too small
    cfg = RoiAppConfig()
    plans = pipeline.plan_groups(train, cfg)
    assert plans["pooled"]["all"].rule == "model"
    assert plans["roi_aware"]["roi-LCC"].rule == "constant" and plans["roi_aware"]["roi-LCC"].probability == 1.0
    assert plans["roi_aware"]["noroi-LCC"].rule == "model"
    assert plans["roi_aware"]["noroi-RMLO"].rule == "parent" and "fewer than" in plans["roi_aware"]["noroi-RMLO"].reason
    assert plans["baseline"]["RMLO"].rule == "parent"
    assert plans["baseline"]["RCC"].rule == "parent"  # empty: its images (if any at test time) go to the pooled model
    constant = pipeline.plan_groups(train, replace(cfg, groups=GroupsConfig(fallback="constant", one_class="parent")))
    assert constant["roi_aware"]["roi-LCC"].rule == "parent"
    assert constant["baseline"]["RMLO"].rule == "constant" and constant["baseline"]["RMLO"].probability == 0.5
    rows = groups_lib.group_table(plans, pipeline.parent_of, positive="malignant")
    assert len(rows) == 13 and {r["rule"].split()[0] for r in rows} == {"model", "parent", "constant"}


def test_router_follows_parents_and_constants(tmp_path):
    routing = {"schemes": {
        "pooled": {"all": {"rule": "constant", "probability": 0.25}},
        "baseline": {v: {"rule": "parent"} for v in ("RCC", "LCC", "RMLO", "LMLO")},
        "roi_aware": {**{f"noroi-{v}": {"rule": "parent"} for v in ("RCC", "LCC", "RMLO", "LMLO")},
                      **{f"roi-{v}": {"rule": "constant", "probability": 1.0} for v in ("RCC", "LCC", "RMLO", "LMLO")}}}}
    router = pipeline.Router(routing, tmp_path, RoiAppConfig())
    assert router.resolve("roi_aware", "noroi-LCC") == ("pooled", "all", 0.25)
    samples = [_sample(0, "benign"), _sample(1, "malignant", roi=True)]
    probs, groups, kept = router.predict(samples, "roi_aware", Skipped())
    assert list(probs) == [0.25, 1.0] and groups == ["pooled/all", "roi_aware/roi-LCC"]
    probs, groups, _ = router.predict(samples, "roi_aware", Skipped(), roi=[True, False])
    assert list(probs) == [1.0, 0.25]  # the detector's ROI flags, not the annotation, choose the group
    rule, _, _ = router.predict(samples, "roi_only_rule", Skipped())
    np.testing.assert_array_equal(rule, [0.0, 1.0])


def test_comparison_rows_keep_every_method_and_interval():
    report = {"sensitivity": 1.0, "specificity": 0.5, "f1": 0.8, "accuracy": 0.7, "roc_auc": None, "support": 10,
              "ci": {"sensitivity": [0.9, 1.0], "f1": [0.6, 0.9]}}
    rows = comparison_rows({m: report for m in pipeline.METHODS}, pipeline.METHOD_NAMES, pipeline.SCORES)
    assert [r["method"] for r in rows] == [pipeline.METHOD_NAMES[m] for m in pipeline.METHODS]
    assert rows[0]["f1_low"] == 0.6 and rows[0]["roc_auc_low"] is None

    assert interval_cell(0.8, 0.6, 0.9) == "0.80 [0.60, 0.90]" and interval_cell(None, None, None) == "n/a"


def test_predict_csv_by_path_or_id_and_bad_rows(tmp_path):
    from keras_medimg.datasets.mammography import read_view_csv

    csv_file = tmp_path / "meta.csv"
    csv_file.write_text("path,view,laterality,roi\nimgs/a.png,MLO,R,yes\nimgs/b.png,CC,,\n", encoding="utf-8")
    table = read_view_csv(csv_file)
    assert table["imgs/a.png"] == {"view": "MLO", "laterality": "R", "roi": True}
    assert table[str((tmp_path / "imgs/b.png").resolve())] == {"view": "CC"}
    csv_file.write_text("id,view\na,XX\n", encoding="utf-8")
    from keras_medimg.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="line 2"):
        read_view_csv(csv_file)


@pytest.mark.parametrize("backbone", ["convnextv2_atto", "swin_tiny"])
def test_both_study_models_build_small_and_classify(backbone):
    """--model convnextv2 (ours) and --model swin (keras-hub) at network.widths: a grey 64 px classifier."""
    from keras_medimg.models.classifier import build_classifier

    cfg = RoiAppConfig()
    cfg = replace(cfg, model=replace(cfg.model, backbone=backbone),
                  network=replace(cfg.network, widths=[16, 32, 64, 128] if backbone.startswith("swin") else [8, 16, 32, 64]))
    model = build_classifier(pipeline.backbone_model(cfg), 2, input_shape=(64, 64, 1))
    out = model.predict(np.random.default_rng(0).random((2, 64, 64, 1), dtype=np.float32), verbose=0)
    assert out.shape == (2, 2) and np.allclose(out.sum(axis=1), 1, atol=1e-5)
    with pytest.raises(Exception, match="widths"):
        pipeline.backbone_model(replace(cfg, model=replace(cfg.model, weights="some.weights.h5")))
