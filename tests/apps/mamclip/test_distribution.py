"""pretrain.distribution and finetune.distribution: the keys reach `training.distribute.strategy_scope`, modes a
backend cannot run are refused before a run folder exists, and (slow) mirrored training equals one device's.

The 2-worker pretraining (JAX worker processes) is in tests/training/test_multiworker.py."""

import contextlib
import sys
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_medimg.apps.mamclip import pipeline
from keras_medimg.apps.mamclip.config import MamclipConfig
from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.errors import ConfigError
from keras_medimg.runs import RunPlace
from keras_medimg.training import distribute

sys.path.insert(0, str(Path(__file__).parent))
from _mamclip_data import tiny_config, write_pairs  # noqa: E402
from _multiworker_pretrain import order_free  # noqa: E402

BACKEND = keras.backend.backend()


class Entered(Exception):
    """Raised by the spy once the strategy scope is entered: the wiring is what is tested, not the training."""


@pytest.fixture
def entered(monkeypatch):
    modes = []

    @contextlib.contextmanager
    def spy(distribution):
        modes.append(distribution)
        raise Entered
        yield  # pragma: no cover

    monkeypatch.setattr(distribute, "strategy_scope", spy)
    return modes


def _samples(tmp_path, n=8):
    return [Sample(id=str(i), path=tmp_path / f"{i}.png", label="ab"[i % 2], group=f"p{i}") for i in range(n)]


@pytest.mark.skipif(BACKEND == "torch", reason="torch refuses mirrored (test below)")
def test_the_distribution_keys_reach_the_strategy(tmp_path, entered):
    cfg = tiny_config(MamclipConfig(), write_pairs(tmp_path, n=12))
    with pytest.raises(Entered):
        pipeline.pretrain(replace(cfg, pretrain=replace(cfg.pretrain, distribution="mirrored")),
                          run=RunPlace(tmp_path / "runs"))
    cfg = replace(cfg, finetune=replace(cfg.finetune, distribution="mirrored", folds=2))
    with pytest.raises(Entered):
        pipeline.run_curve(_samples(tmp_path), ["a", "b"], {"none": ("none", None)}, ["all"], cfg, Skipped())
    assert entered == ["mirrored", "mirrored"]


REFUSED = {"torch": ["mirrored", "multiworker"], "tensorflow": ["multiworker"], "jax": []}


@pytest.mark.skipif(not REFUSED[BACKEND], reason="jax runs every mode")
@pytest.mark.parametrize("section", ["pretrain", "finetune"])
def test_a_mode_the_backend_cannot_run_is_refused_before_the_run_folder(tmp_path, section):
    cfg = tiny_config(MamclipConfig(), write_pairs(tmp_path, n=12))
    for mode in REFUSED[BACKEND]:
        cfg = replace(cfg, **{section: replace(getattr(cfg, section), distribution=mode)})
        with pytest.raises(ConfigError, match=f"not available on the {BACKEND} backend.*jax"):
            getattr(pipeline, section)(cfg, run=RunPlace(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


# TensorFlow only: on JAX the dual encoder trains only XLA-compiled, which takes minutes per run on a CPU; JAX's
# DataParallel is checked by the 2-worker test in tests/training/test_multiworker.py. "full": two pretraining runs,
# 328 s on the shared 2-core CPU (measured: loss 2.9180522 both, val_loss 8.3110800 vs 8.3110771); -m full runs it.
@pytest.mark.slow
@pytest.mark.full
@pytest.mark.skipif(BACKEND != "tensorflow", reason="tensorflow's MirroredStrategy; jax: see the 2-worker test")
def test_mirrored_pretraining_equals_one_device(tmp_path):
    import tensorflow as tf

    if len(tf.config.list_logical_devices("GPU")) > 1:
        pytest.skip("several GPUs: TensorFlow pretraining refuses mirrored on more than one device")
    pairs = write_pairs(tmp_path, n=32)
    results = {}
    for mode in ("none", "mirrored"):
        cfg = order_free(tiny_config(MamclipConfig(), pairs, epochs=1), mode)  # val_loss: after one step
        results[mode] = pipeline.pretrain(cfg, run=RunPlace(tmp_path / "runs", mode)).metrics
    devices = results["mirrored"]["distribution"]["replicas"]  # every device of this process: 1 on a CPU
    assert results["mirrored"]["distribution"] == {"mode": "mirrored", "global_batch": 16, "replicas": devices,
                                                   "per_device_batch": 16 // devices, "workers": 1}
    assert results["none"]["distribution"]["replicas"] == 1
    for key in ("loss", "val_loss", "contrastive"):
        np.testing.assert_allclose(results["mirrored"]["final"][key], results["none"]["final"][key], rtol=1e-4)
