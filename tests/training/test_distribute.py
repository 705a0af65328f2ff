"""strategy_scope: a tiny model trains over two logical CPU devices on the current backend (in a child process,
because the device count must be fixed before the backend starts); torch answers with a ConfigError."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from keras_medimg.errors import ConfigError
from keras_medimg.training.distribute import Worker, per_replica_batch, replicas, strategy_scope, worker

BACKEND = keras.backend.backend()
CHILD = Path(__file__).with_name("_distributed_fit.py")
MODES = {"tensorflow": ["mirrored"], "jax": ["mirrored"], "torch": []}[BACKEND]


@pytest.mark.parametrize("mode", MODES)
def test_training_under_the_strategy_uses_two_devices(tmp_path, mode):
    env = {**os.environ, "KERAS_BACKEND": BACKEND, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, str(CHILD), mode, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["loss"][-1] < report["loss"][0]


def test_none_is_a_plain_block():
    with strategy_scope("none") as strategy:
        assert strategy is None
    assert replicas(strategy) == 1


@pytest.mark.skipif(BACKEND != "torch", reason="torch has no Keras distribution API")
@pytest.mark.parametrize("mode", ["mirrored", "multiworker"])
def test_torch_says_which_backend_to_use(mode):
    with pytest.raises(ConfigError, match="torch backend"):
        with strategy_scope(mode):
            pass


def test_unknown_mode():
    with pytest.raises(ConfigError, match="Choose one of"):
        with strategy_scope("horovod"):
            pass


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the TensorFlow answer")
def test_multiworker_on_tensorflow_points_to_jax():
    with pytest.raises(ConfigError, match="jax backend"):
        with strategy_scope("multiworker"):
            pass


def test_without_a_cluster_this_process_is_the_only_worker():
    assert worker() == Worker(0, 1) and worker().is_chief


def test_the_global_batch_must_divide_between_the_devices():
    class TwoDevices:
        num_replicas_in_sync = 2

    assert per_replica_batch(16, TwoDevices()) == 8
    with pytest.raises(ConfigError, match="global batch"):
        per_replica_batch(15, TwoDevices())


def test_the_old_key_names_the_new_one():
    from keras_medimg.config import TrainConfig, from_dict

    with pytest.raises(ConfigError, match="train.distribution"):
        from_dict(TrainConfig, {"distribute": "mirrored"}, prefix="train.")
