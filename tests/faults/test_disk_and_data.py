"""A full disk during a checkpoint, data that must stay untouched, and two runs started at once."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_medimg.config import TrainConfig
from keras_medimg.runs import create_run
from keras_medimg.training import trainer

from .conftest import leftover_temporaries, snapshot


def _tiny():
    inputs = keras.Input((8, 8, 1))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))


def _data():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8, 8, 1)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


def test_disk_full_during_a_checkpoint_keeps_the_previous_best(tmp_path, monkeypatch):
    run = create_run("faults", "train", project=tmp_path)
    save = keras.Model.save
    calls = {"n": 0}

    def save_then_fill_the_disk(self, filepath, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 0 wrote best and last; the disk is full from epoch 1 on
            with open(filepath, "wb") as fh:
                fh.write(b"PK\x03\x04 half a zip")
            raise OSError(errno.ENOSPC, "No space left on device", str(filepath))
        return save(self, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", save_then_fill_the_disk)
    data = _data()
    config = TrainConfig(epochs=3, learning_rate=0.01, verbose=0, early_stopping_patience=0, monitor="loss")
    with pytest.raises(OSError) as info:
        trainer.fit(_tiny(), data, data, config=config, run=run)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.setattr(keras.Model, "save", save)
    best = keras.saving.load_model(run.dir / "weights" / "best.keras", compile=False)  # epoch 0's, whole
    assert best.output_shape == (None, 2)
    assert not leftover_temporaries(run.dir)


_APP_RUN = [pytest.mark.slow, pytest.mark.skipif(
    os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
    reason="an app run through the CLI; what it writes is backend-independent, so CI runs it once, under TensorFlow")]


@_APP_RUN[0]
@_APP_RUN[1]
def test_disk_full_is_a_clear_cli_error_not_a_traceback(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from keras_medimg.apps.cli import cli
    from keras_medimg.datasets.synthetic.concepts import generate_concepts

    data = generate_concepts(tmp_path / "data", n_train=12, n_valid=6, n_test=4, size=32, seed=1)

    def full(self, filepath, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(filepath))

    monkeypatch.setattr(keras.Model, "save", full)
    result = CliRunner().invoke(cli, ["concepts", "train", "--data", str(data), "--project", str(tmp_path / "runs"),
                                      "--set", "model.backbone=vgg16", "--set", "model.image_size=32",
                                      "--set", "model.hidden_units=8", "--set", "train.epochs=1",
                                      "--set", "train.head_epochs=0", "--set", "train.verbose=0",
                                      "--set", "data.cache=null"])
    assert result.exit_code == 2, result.output
    assert "error: No space left on device" in result.output
    assert "Traceback" not in result.output


@_APP_RUN[0]
@_APP_RUN[1]
def test_training_and_prediction_never_write_into_the_data(tmp_path):
    from click.testing import CliRunner

    from keras_medimg.apps.cli import cli
    from keras_medimg.datasets.synthetic.concepts import generate_concepts

    data = generate_concepts(tmp_path / "data", n_train=12, n_valid=6, n_test=4, size=32, seed=1)
    before = snapshot(data)
    runner = CliRunner()
    tiny = ["--set", "model.backbone=vgg16", "--set", "model.image_size=32", "--set", "model.hidden_units=8",
            "--set", "train.epochs=1", "--set", "train.head_epochs=0", "--set", "train.verbose=0",
            "--set", "data.cache=null"]
    trained = runner.invoke(cli, ["concepts", "train", "--data", str(data), "--project", str(tmp_path / "runs"),
                                  "--name", "t", *tiny])
    assert trained.exit_code == 0, trained.output
    images = next(p for p in data.iterdir() if p.is_dir() and any(p.glob("*.jpg")))
    predicted = runner.invoke(cli, ["concepts", "predict", "--images", str(images), "--weights", str(tmp_path / "runs/concepts/t"),
                                    "--project", str(tmp_path / "runs")])
    assert predicted.exit_code == 0, predicted.output
    assert snapshot(data) == before


_RACER = """
import sys, time
from keras_medimg.runs import create_run
start = float(sys.argv[2])
while time.time() < start:
    pass
print(create_run("faults", "train", project=sys.argv[1]).dir)
"""


def test_two_runs_started_at_once_get_two_folders(tmp_path):
    start_at = time.time() + 3.0  # every process is up and spinning by then; all create their run together
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(tmp_path), repr(start_at)], stdout=subprocess.PIPE,
                               text=True) for _ in range(4)]
    folders = [racer.communicate(timeout=60)[0].strip() for racer in racers]
    assert all(racer.returncode == 0 for racer in racers)
    assert len(set(folders)) == 4
    assert sorted(p.name for p in (tmp_path / "faults").iterdir()) == ["train", "train2", "train3", "train4"]
