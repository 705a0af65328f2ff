"""fit: learning, the run folder, resume after a kill, two phases, schedules, losses, class weights."""

from __future__ import annotations

import csv
import importlib.util
import json

import keras
import numpy as np
import pytest

from keras_medimg.config import TrainConfig
from keras_medimg.errors import ConfigError, MissingDependencyError
from keras_medimg.runs import create_run
from keras_medimg.training import trainer
from keras_medimg.training.trainer import balanced_class_weight, fit, make_learning_rate, set_seed

from .conftest import make_dataset, make_images, tiny_classifier
from ._callbacks import Kill


def quick(**overrides) -> TrainConfig:
    base = dict(epochs=3, learning_rate=0.05, verbose=0, early_stopping_patience=0)
    return TrainConfig(**{**base, **overrides})


def read_rows(run) -> list[dict[str, str]]:
    with open(run.dir / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def data():
    x, y = make_images(64)
    return make_dataset(x, y), make_dataset(*make_images(32, seed=1))


def test_fit_learns_and_fills_the_run_folder(run, data):
    set_seed(0)
    train, val = data
    result = fit(tiny_classifier(), train, val, config=quick(epochs=4), run=run)
    assert result.history["epoch"] == [0, 1, 2, 3]
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert result.history["val_accuracy"][-1] >= 0.9
    for name in ("weights/best.keras", "weights/last.keras", "results.csv", "state.json"):
        assert (run.dir / name).is_file(), name
    assert result.best_epoch == int(np.argmin(result.history["val_loss"]))
    assert result.best_value == pytest.approx(min(result.history["val_loss"]))
    assert result.epochs_run == 4 and result.next_epoch == 4 and not result.stopped_early
    assert {row["phase"] for row in read_rows(run)} == {"train"}
    reloaded = keras.saving.load_model(result.best_path)
    assert reloaded.output_shape == (None, 2)


def test_resume_after_kill_continues_at_the_next_epoch(tmp_path, data):
    train, val = data
    set_seed(0)
    whole = create_run("t", "whole", project=tmp_path)
    fit(tiny_classifier(), train, val, config=quick(), run=whole)

    set_seed(0)
    killed = create_run("t", "killed", project=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_classifier(), train, val, config=quick(), run=killed, callbacks=[Kill(0)])
    assert [row["epoch"] for row in read_rows(killed)] == ["0"]

    result = fit(tiny_classifier(), train, val, config=quick(), run=killed, resume=True)
    assert result.epochs_run == 2
    assert [row["epoch"] for row in read_rows(killed)] == ["0", "1", "2"]
    # Weights and optimiser state came back: the resumed run retraces the uninterrupted one.
    expected = [float(row["loss"]) for row in read_rows(whole)]
    assert [float(row["loss"]) for row in read_rows(killed)] == pytest.approx(expected, rel=1e-4)


def test_two_phases_share_one_results_csv_and_resume(run, data):
    train, val = data
    set_seed(0)
    model = tiny_classifier()
    head = fit(model, train, val, config=quick(epochs=2), run=run, phase_name="head")
    assert head.next_epoch == 2
    with pytest.raises(KeyboardInterrupt):
        fit(model, train, val, config=quick(epochs=2, learning_rate=0.01), run=run, phase_name="finetune",
            initial_epoch=head.next_epoch, callbacks=[Kill(2)])

    # A fresh process: new model object, both phases asked again with resume.
    model = tiny_classifier()
    head = fit(model, train, val, config=quick(epochs=2), run=run, phase_name="head", resume=True)
    assert head.epochs_run == 0 and head.next_epoch == 2 and head.history["epoch"] == [0, 1]
    tune = fit(model, train, val, config=quick(epochs=2, learning_rate=0.01), run=run, phase_name="finetune",
               initial_epoch=head.next_epoch, resume=True)
    assert tune.epochs_run == 1 and tune.next_epoch == 4
    rows = read_rows(run)
    assert [(row["epoch"], row["phase"]) for row in rows] == [
        ("0", "head"), ("1", "head"), ("2", "finetune"), ("3", "finetune")
    ]
    state = json.loads((run.dir / "state.json").read_text())
    assert state["phases"]["head"]["complete"] and state["phases"]["finetune"]["complete"]


def test_exponential_schedule_is_a_staircase():
    schedule = make_learning_rate(TrainConfig(schedule="exponential", learning_rate=1e-3, decay_steps=100, decay_rate=0.9), 10)
    rates = [float(schedule(step)) for step in (0, 99, 100, 250)]
    assert rates == pytest.approx([1e-3, 1e-3, 9e-4, 8.1e-4])


def test_cosine_schedule_warms_up_then_decays():
    schedule = make_learning_rate(TrainConfig(schedule="cosine", learning_rate=1e-2, epochs=10, warmup_epochs=1), 10)
    assert float(schedule(0)) == pytest.approx(0.0)
    assert float(schedule(5)) == pytest.approx(5e-3)
    assert float(schedule(10)) == pytest.approx(1e-2)
    assert float(schedule(55)) == pytest.approx(5e-3, rel=1e-3)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-8)


def test_cosine_needs_a_finite_dataset():
    with pytest.raises(ConfigError, match="cosine"):
        make_learning_rate(TrainConfig(schedule="cosine"), None)


def test_balanced_class_weight_by_hand():
    # 4 samples, 2 present classes: 4 / (2 * 3) and 4 / (2 * 1); class 2 is absent and keeps weight 1.
    weights = balanced_class_weight([0, 0, 0, 1], 3)
    assert weights == pytest.approx({0: 2 / 3, 1: 2.0, 2: 1.0})


@pytest.mark.parametrize("loss, smoothing", [("focal", 0.0), ("crossentropy", 0.1)])
def test_sparse_labels_with_focal_and_smoothing(run, data, loss, smoothing):
    train, val = data
    set_seed(0)
    result = fit(tiny_classifier(), train, val, config=quick(loss=loss, label_smoothing=smoothing, epochs=2),
                 run=run, class_weight={0: 1.0, 1: 2.0})
    assert result.history["loss"][-1] < result.history["loss"][0]


def test_multilabel_head_gets_binary_metrics(run):
    x, y = make_images(32, classes=2)
    multi_hot = np.stack([y == 1, np.ones_like(y, bool)], axis=1).astype("float32")
    ds = make_dataset(x, multi_hot)
    set_seed(0)
    result = fit(tiny_classifier(activation="sigmoid"), ds, ds, config=quick(epochs=2, monitor="val_auc"), run=run)
    assert {"binary_accuracy", "auc", "f1", "val_auc"} <= set(result.history)


def test_early_stopping_stops_when_nothing_improves(run, data):
    train, val = data
    config = quick(epochs=6, optimizer="sgd", learning_rate=0.0, early_stopping_patience=1)
    result = fit(tiny_classifier(), train, val, config=config, run=run)
    assert result.stopped_early and result.epochs_run == 2


def test_tensorboard_logs_or_says_what_to_install(run, data):
    train, val = data
    config = quick(epochs=1, tensorboard=True)
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(MissingDependencyError, match="tensorboard"):
            fit(tiny_classifier(), train, val, config=config, run=run)
        assert not (run.dir / "results.csv").exists()
        return
    fit(tiny_classifier(), train, val, config=config, run=run)
    assert any((run.dir / "tensorboard").rglob("events.out.tfevents.*"))


def test_nan_loss_stops_and_keeps_no_nan_checkpoint(run):
    x, y = make_images(16)
    x[:] = np.nan
    ds = make_dataset(x, y)
    inputs = keras.Input((16, 16, 1))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs)))
    result = fit(model, ds, None, config=quick(monitor="loss"), run=run)
    assert result.diverged
    assert not (run.dir / "weights" / "last.keras").exists()


def test_user_errors_are_config_errors(run, data):
    train, val = data
    with pytest.raises(ConfigError, match="no validation data"):
        fit(tiny_classifier(), train, None, config=quick(), run=run)
    with pytest.raises(ConfigError, match="val_acc"):
        fit(tiny_classifier(), train, val, config=quick(monitor="val_acc", epochs=1), run=run)
    with pytest.raises(ConfigError, match="setup_precision"):
        fit(tiny_classifier(), train, val, config=quick(mixed_precision=True), run=run)


def test_jitted_mixed_training_on_a_jax_cpu_is_a_clear_error_before_compiling(run, data, monkeypatch):
    train, val = data
    config = quick(epochs=1, mixed_precision=True, jit_compile=True)
    try:
        trainer.setup_precision(config)
        model = tiny_classifier()
    finally:
        keras.config.set_dtype_policy("float32")
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    monkeypatch.setattr(trainer, "gpu_available", lambda: False)
    with pytest.raises(ConfigError, match="train.jit_compile=false"):
        fit(model, train, val, config=config, run=run)
    assert not model.compiled  # refused before compile
    monkeypatch.setattr(trainer, "gpu_available", lambda: True)  # with a GPU the same settings are allowed
    trainer.check_jit_with_mixed_precision(True, True, section="train")


def test_auto_settings_are_off_without_a_gpu():
    if trainer.gpu_available():
        pytest.skip("this machine has a GPU")
    assert trainer.resolve_jit_compile(TrainConfig()) is False
    assert trainer.resolve_mixed_precision(TrainConfig()) is False


def test_mixed_precision_policy_set_before_building(run, data):
    train, val = data
    try:
        assert trainer.setup_precision(quick(mixed_precision=True)) == "mixed_float16"
        model = tiny_classifier()
        result = fit(model, train, val, config=quick(epochs=1, mixed_precision=True), run=run)
        assert np.isfinite(result.history["loss"][0])
        assert keras.saving.load_model(result.last_path).dtype_policy.name == "mixed_float16"
    finally:
        keras.config.set_dtype_policy("float32")


def test_single_sigmoid_output_takes_integer_labels(run, data):
    train, val = data
    set_seed(0)
    result = fit(tiny_classifier(1, activation="sigmoid"), train, val,
                 config=quick(epochs=2, loss="binary_crossentropy"), run=run)
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert "val_auc" in result.history
