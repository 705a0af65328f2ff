"""brats learns: the classifier stage on a small learnable set ends clearly above chance (CI runs it)."""

from __future__ import annotations

import pytest

from keras_medimg.apps.brats import pipeline
from keras_medimg.runs import create_run

from .conftest import tiny_config, write_brain_set


@pytest.mark.slow  # about 40 s on an idle 2-core CPU
def test_classifier_on_lesion_crops_beats_chance(tmp_path):
    root = write_brain_set(tmp_path / "brain", n_per_class=12, size=64, seed=3)
    cfg = tiny_config(root, **{
        "classify.crop_source": "truth", "model.backbone": "convnextv2_atto", "model.image_size": 32,
        "train.epochs": 10, "train.learning_rate": 1e-3, "classify.augment.probability": 0.0,
    })
    result = pipeline.train(cfg, "classify", run=create_run("brats", "train", project=tmp_path / "runs"))
    report = result.metrics["classify"]["test"]
    # Four classes: chance is 0.25. The crops differ in lesion size and brightness, so a model that learns
    # separates them; a broken pipeline (labels shuffled against images, crops empty) stays near chance.
    assert report["accuracy"] >= 0.7, report
    assert report["macro"]["f1"] >= 0.6, report
