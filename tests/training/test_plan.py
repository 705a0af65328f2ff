"""fit_plan: head then fine-tune on one run folder, per-phase learning rates, resume, class weights, precision."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import replace

import keras
import numpy as np
import pytest

from keras_medimg.config import TrainConfig
from keras_medimg.errors import ConfigError
from keras_medimg.models.classifier import Phase, backbone_of, build_classifier, finetune_phases
from keras_medimg.runs import create_run
from keras_medimg.training import trainer
from keras_medimg.training.trainer import balanced_class_weight, fit, fit_plan, set_seed

from .conftest import make_dataset, make_images, tiny_classifier
from ._callbacks import Kill


def quick(**overrides) -> TrainConfig:
    base = dict(epochs=4, head_epochs=2, head_learning_rate=0.05, learning_rate=0.01, verbose=0,
                early_stopping_patience=0, jit_compile=False)
    return TrainConfig(**{**base, **overrides})


def tiny_backbone_classifier() -> keras.Model:
    """build_classifier on a two-layer backbone with BatchNormalization, whose statistics a frozen phase keeps."""
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    return build_classifier(keras.Model(inputs, x, name="tiny"), 2)


def values(weights) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(w)) for w in weights]


class Recorder(keras.callbacks.Callback):
    """Per `model.fit` call: the optimiser's learning rate, and backbone and head weights before and after."""

    def __init__(self):
        super().__init__()
        self.calls: list[dict] = []

    def _snapshot(self):
        return values(backbone_of(self.model).weights), values(self.model.get_layer("predictions").weights)

    def on_train_begin(self, logs=None):
        backbone, head = self._snapshot()
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.calls.append({"learning_rate": rate, "backbone": [backbone], "head": [head]})

    def on_train_end(self, logs=None):
        backbone, head = self._snapshot()
        self.calls[-1]["backbone"].append(backbone)
        self.calls[-1]["head"].append(head)


def unchanged(before: list[np.ndarray], after: list[np.ndarray]) -> bool:
    return all(np.array_equal(a, b) for a, b in zip(before, after))


def rows_of(run) -> list[tuple[str, str]]:
    with open(run.dir / "results.csv", newline="") as fh:
        return [(row["epoch"], row["phase"]) for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def data():
    return make_dataset(*make_images(24, size=32)), make_dataset(*make_images(16, seed=1, size=32))


def test_head_phase_trains_only_the_head_then_fine_tuning_trains_the_backbone(run, data):
    train, val = data
    set_seed(0)
    recorder = Recorder()
    plan = fit_plan(tiny_backbone_classifier, train, val, config=quick(), run=run, weights="imagenet",
                    freeze="none", callbacks=[recorder])

    head, tune = recorder.calls
    # Head phase: the backbone (BatchNormalization statistics included) stays as built, the head learns.
    assert unchanged(*head["backbone"])
    assert not unchanged(*head["head"])
    # Fine-tuning starts from the head phase's model and trains the backbone too.
    assert unchanged(head["backbone"][1], tune["backbone"][0]) and unchanged(head["head"][1], tune["head"][0])
    assert not unchanged(*tune["backbone"])
    # The rule: head_learning_rate for the head phase, learning_rate for the fine-tuning phase.
    assert [call["learning_rate"] for call in recorder.calls] == pytest.approx([0.05, 0.01])

    assert rows_of(run) == [("0", "head"), ("1", "head"), ("2", "finetune"), ("3", "finetune")]
    assert [p["phase"] for p in plan.phases] == ["head", "finetune"]
    assert [(p["initial_epoch"], p["next_epoch"], p["epochs_run"]) for p in plan.phases] == [(0, 2, 2), (2, 4, 2)]
    assert [p["learning_rate"] for p in plan.phases] == pytest.approx([0.05, 0.01])
    assert plan.best_path == run.dir / "weights" / "best.keras" and plan.best_path.is_file()
    assert plan.precision == "float32" and not plan.diverged


def test_learning_rate_factor_of_a_given_plan_is_honoured(run, data):
    train, val = data
    recorder = Recorder()
    phases = finetune_phases("imagenet", 1, 2, "none", finetune_lr_factor=0.1)
    plan = fit_plan(tiny_backbone_classifier, train, val, config=quick(epochs=2, head_epochs=1), run=run,
                    weights="imagenet", phases=phases, callbacks=[recorder])
    assert [call["learning_rate"] for call in recorder.calls] == pytest.approx([0.05, 0.001])
    assert [p["learning_rate"] for p in plan.phases] == pytest.approx([0.05, 0.001])


def test_random_weights_skip_the_head_phase(run, data, caplog):
    train, val = data
    with caplog.at_level(logging.WARNING, logger="keras_medimg.training.trainer"):
        plan = fit_plan(tiny_backbone_classifier, train, val, config=quick(epochs=2), run=run, weights=None)
    assert "skipping the 2 frozen-backbone head epochs" in caplog.text
    assert rows_of(run) == [("0", "train"), ("1", "train")]
    assert plan.phases[0]["learning_rate"] == pytest.approx(0.01)


def test_resume_skips_the_finished_head_phase_and_continues_fine_tuning(tmp_path, data):
    train, val = data
    set_seed(0)
    whole = create_run("t", "whole", project=tmp_path)
    fit_plan(tiny_backbone_classifier, train, val, config=quick(), run=whole, weights="imagenet")

    set_seed(0)
    killed = create_run("t", "killed", project=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        fit_plan(tiny_backbone_classifier, train, val, config=quick(), run=killed, weights="imagenet",
                 callbacks=[Kill(2)])
    assert rows_of(killed) == [("0", "head"), ("1", "head"), ("2", "finetune")]

    recorder = Recorder()
    plan = fit_plan(tiny_backbone_classifier, train, val, config=quick(), run=killed, weights="imagenet",
                    resume=True, callbacks=[recorder])
    assert [fitted.epochs_run for fitted in plan.fits] == [0, 1]
    assert len(recorder.calls) == 1  # only the fine-tuning phase called model.fit
    assert recorder.calls[0]["learning_rate"] == pytest.approx(0.01)
    assert rows_of(killed) == rows_of(whole)
    state = json.loads((killed.dir / "state.json").read_text())
    assert state["phases"]["head"]["complete"] and state["phases"]["finetune"]["complete"]

    def losses(run):
        with open(run.dir / "results.csv", newline="") as fh:
            return [float(row["loss"]) for row in csv.DictReader(fh)]

    # The model and the fine-tuning optimiser came back: the resumed run retraces the uninterrupted one.
    assert losses(killed) == pytest.approx(losses(whole), rel=1e-4)


def test_balanced_class_weight_weighs_the_loss_by_class(run):
    """With a learning rate of 0 the model stays put, so the epoch loss is the (weighted) mean cross-entropy."""
    images, labels = make_images(32, size=32)
    labels = np.where(np.arange(32) < 24, 0, 1).astype("int32")  # 24 of class 0, 8 of class 1
    train = make_dataset(images, labels)
    config = quick(epochs=1, head_epochs=0, optimizer="sgd", learning_rate=0.0, monitor="loss")

    losses = {}
    for mode in ("none", "balanced"):
        set_seed(0)
        folder = create_run("t", mode, project=run.dir)
        plan = fit_plan(lambda: tiny_classifier(size=32), train, None, config=replace(config, class_weight=mode),
                        run=folder, weights=None, labels=labels)
        probabilities = np.asarray(plan.model.predict(images, verbose=0))
        cross_entropy = -np.log(probabilities[np.arange(32), labels])
        losses[mode] = (plan.fits[0].history["loss"][0], cross_entropy)

    weights = balanced_class_weight(labels, 2)
    assert weights == pytest.approx({0: 32 / (2 * 24), 1: 32 / (2 * 8)})
    loss, cross_entropy = losses["none"]
    assert loss == pytest.approx(cross_entropy.mean(), rel=1e-4)
    loss, cross_entropy = losses["balanced"]
    expected = np.mean(np.array([weights[y] for y in labels]) * cross_entropy)
    assert loss == pytest.approx(expected, rel=1e-4)
    assert abs(losses["balanced"][0] - losses["none"][0]) > 1e-3


def test_balanced_class_weights_need_labels_and_one_label_per_image(run, data):
    train, val = data
    with pytest.raises(ConfigError, match="labels="):
        fit_plan(lambda: tiny_classifier(size=32), train, val, config=quick(class_weight="balanced"), run=run,
                 weights=None)
    multi_hot = make_dataset(np.zeros((8, 32, 32, 1), "float32"), np.ones((8, 2), "float32"))
    with pytest.raises(ConfigError, match="multi-label"):
        fit(tiny_classifier(size=32, activation="sigmoid"), multi_hot, None,
            config=quick(class_weight="balanced", monitor="loss"), run=run, labels=[0] * 8)


def test_balanced_class_weight_edge_cases():
    assert balanced_class_weight([], 3) == {0: 1.0, 1: 1.0, 2: 1.0}
    with pytest.raises(ConfigError, match="3 classes"):
        balanced_class_weight([0, 3], 3)


def test_auto_precision_never_refuses_a_model(run, data, monkeypatch, caplog):
    """On a GPU, "auto" asks for mixed precision: fit_plan builds under it; a float32 model built earlier trains."""
    train, val = data
    monkeypatch.setattr(trainer, "gpu_available", lambda: True)
    config = quick(epochs=1, head_epochs=0, mixed_precision="auto")
    with caplog.at_level(logging.INFO, logger="keras_medimg.training.trainer"):
        result = fit(tiny_classifier(size=32), train, val, config=config, run=run)
    assert np.isfinite(result.history["loss"][0])
    assert "trains in that" in caplog.text

    folder = create_run("t", "mixed", project=run.dir)
    plan = fit_plan(tiny_backbone_classifier, train, val, config=config, run=folder, weights=None)
    assert plan.precision == "mixed_float16" and plan.model.dtype_policy.name == "mixed_float16"
    assert np.isfinite(plan.fits[0].history["loss"][0])
    assert keras.config.dtype_policy().name == "float32"  # the global policy is put back

    with pytest.raises(ConfigError, match="setup_precision"):  # an explicit demand is still checked
        fit(tiny_classifier(size=32), train, val, config=quick(epochs=1, mixed_precision=True), run=run)


def test_an_empty_plan_is_refused(run, data):
    train, val = data
    with pytest.raises(ConfigError, match="no phases"):
        fit_plan(tiny_backbone_classifier, train, val, config=quick(), run=run, weights=None, phases=[])


def test_head_epochs_beyond_epochs_train_the_head_only(caplog):
    with caplog.at_level(logging.WARNING, logger="keras_medimg.training.trainer"):
        phases = trainer.plan_phases(quick(epochs=2, head_epochs=5), weights="imagenet", freeze="none")
    assert phases == [Phase("head", "backbone", 0, 2)]
    assert "head_epochs (5)" in caplog.text
