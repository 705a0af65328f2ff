"""cross_validate: a fresh model per fold, fold folders, mean +/- std in metrics.json, resume skips done folds."""

from __future__ import annotations

import json

import numpy as np
import pytest

import csv

import keras

from keras_medimg.config import TrainConfig
from keras_medimg.datasets.records import Sample
from keras_medimg.models.classifier import build_classifier
from keras_medimg.training.cv import cross_validate, summarize

from .conftest import make_dataset, make_images, tiny_classifier

IMAGES, LABELS = make_images(48)
SAMPLES = [Sample(id=str(i), path=f"{i}.png", label=str(LABELS[i]), group=f"p{i // 2}") for i in range(48)]


def two_fold_split(samples, k, seed):
    """A fixed split standing in for datasets.splits.kfold: even and odd patients."""
    assert k == 2
    even = [s for s in samples if int(s.group[1:]) % 2 == 0]
    odd = [s for s in samples if int(s.group[1:]) % 2 == 1]
    return [(even, odd), (odd, even)]


def datasets_of(train, val):
    def pick(part):
        index = [int(s.id) for s in part]
        return make_dataset(IMAGES[index], LABELS[index])

    return pick(train), pick(val)


def accuracy_of(model, val):
    index = [int(s.id) for s in val]
    predicted = np.asarray(model.predict(IMAGES[index], verbose=0)).argmax(axis=1)
    return {"accuracy": float(np.mean(predicted == LABELS[index])), "report": {"macro": {"f1": 0.5}}}


def test_cross_validate_writes_folds_and_summary(run):
    built = []

    def build():
        built.append(tiny_classifier())
        return built[-1]

    config = TrainConfig(epochs=2, learning_rate=0.05, verbose=0, early_stopping_patience=0)
    result = cross_validate(SAMPLES, build, datasets_of, k=2, config=config, run=run, evaluate=accuracy_of,
                            seed=0, split=two_fold_split)
    assert len(built) == 2 and built[0] is not built[1]
    for i in range(2):
        assert (run.dir / f"fold_{i}" / "weights" / "best.keras").is_file()
        assert (run.dir / f"fold_{i}" / "metrics.json").is_file()
    saved = json.loads(result.metrics_path.read_text())
    accuracies = [f["metrics"]["accuracy"] for f in saved["folds"]]
    assert saved["mean"]["accuracy"] == pytest.approx(np.mean(accuracies))
    assert saved["std"]["accuracy"] == pytest.approx(np.std(accuracies, ddof=1))
    assert saved["mean"]["report.macro.f1"] == pytest.approx(0.5)
    assert [f["val_size"] for f in saved["folds"]] == [24, 24]

    # Resuming a finished cross-validation trains nothing again.
    again = cross_validate(SAMPLES, lambda: pytest.fail("no fold should be retrained"), datasets_of, k=2,
                           config=config, run=run, evaluate=accuracy_of, split=two_fold_split, resume=True)
    assert again.mean == result.mean


def tiny_backbone_classifier():
    inputs = keras.Input((16, 16, 1))
    features = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    return build_classifier(keras.Model(inputs, features, name="tiny"), 2)


def test_every_fold_trains_the_head_then_fine_tunes_with_balanced_weights(run):
    config = TrainConfig(epochs=2, head_epochs=1, head_learning_rate=0.05, learning_rate=0.01, verbose=0,
                         early_stopping_patience=0, class_weight="balanced")
    result = cross_validate(SAMPLES, tiny_backbone_classifier, datasets_of, k=2, config=config, run=run,
                            evaluate=accuracy_of, split=two_fold_split, weights="imagenet", freeze="none",
                            class_names=["0", "1"])
    for i, fold in enumerate(result.folds):
        with open(run.dir / f"fold_{i}" / "results.csv", newline="") as fh:
            assert [(r["epoch"], r["phase"]) for r in csv.DictReader(fh)] == [("0", "head"), ("1", "finetune")]
        assert [(p["phase"], p["learning_rate"]) for p in fold["phases"]] == [("head", 0.05), ("finetune", 0.01)]
    saved = json.loads(result.metrics_path.read_text())
    assert [len(fold["phases"]) for fold in saved["folds"]] == [2, 2]


def test_default_split_keeps_patients_together(run):
    from keras_medimg.datasets.splits import kfold

    for train, val in kfold(SAMPLES, 3, seed=0):
        assert not {s.group for s in train} & {s.group for s in val}


def test_summarize_uses_only_metrics_every_fold_has():
    mean, std = summarize([{"a": 1.0, "b": 2.0, "name": "x"}, {"a": 3.0}])
    assert mean == {"a": 2.0} and std == pytest.approx({"a": np.sqrt(2.0)})
