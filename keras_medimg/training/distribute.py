"""Data-parallel training over several devices: `train.distribute: none | mirrored | data_parallel`.

Build the model AND call `trainer.fit` inside `strategy_scope(config.distribute)`: variables created in the scope
are mirrored (or sharded) over the devices, and `fit` splits every batch between them.

- "mirrored": `tf.distribute.MirroredStrategy` over all GPUs, or over all logical CPUs when there is no GPU
  (TensorFlow backend only).
- "data_parallel": `keras.distribution.DataParallel` over `keras.distribution.list_devices()` (JAX backend, and
  the TensorFlow backend where Keras supports it).
- Keras has no distribution API on the torch backend: both raise `ConfigError` there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import keras

from keras_medimg.errors import ConfigError

MODES = ("none", "mirrored", "data_parallel")


@contextlib.contextmanager
def strategy_scope(distribute: str) -> Iterator[Any]:
    """Enter the distribution named by `train.distribute` for the duration of the block.

    Args:
        distribute: "none", "mirrored" or "data_parallel".

    Yields:
        None for "none", the `tf.distribute.MirroredStrategy`, or the `keras.distribution.DataParallel`;
        `replicas(yielded)` tells how many devices share each batch.
    """
    if distribute not in MODES:
        raise ConfigError(f"Unknown train.distribute '{distribute}'. Choose one of: {', '.join(MODES)}.")
    if distribute == "none":
        yield None
        return
    backend = keras.backend.backend()
    if backend == "torch":
        raise ConfigError(
            f"train.distribute={distribute} is not available on the torch backend: Keras has no distribution API "
            "for torch. Use the tensorflow backend (mirrored) or the jax backend (data_parallel), or set "
            "train.distribute=none."
        )
    if distribute == "mirrored":
        if backend != "tensorflow":
            raise ConfigError(
                f"train.distribute=mirrored needs the tensorflow backend (this is {backend}). "
                "Use train.distribute=data_parallel on jax."
            )
        strategy = _mirrored_strategy()
        with strategy.scope():
            yield strategy
        return
    yield from _data_parallel()


def _mirrored_strategy() -> Any:
    import tensorflow as tf

    # MirroredStrategy() alone takes only /cpu:0 without GPUs; listing the logical CPUs lets a CPU machine (and
    # the tests) run several replicas.
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy(devices=[d.name for d in devices])


def _data_parallel() -> Iterator[Any]:
    devices = keras.distribution.list_devices()
    try:
        distribution = keras.distribution.DataParallel(devices=devices)
    except (NotImplementedError, ValueError) as exc:
        raise ConfigError(
            f"train.distribute=data_parallel is not supported on the {keras.backend.backend()} backend here ({exc}). "
            "Use the jax backend, or train.distribute=mirrored on tensorflow."
        ) from exc
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(distribution)
    try:
        yield distribution
    finally:
        keras.distribution.set_distribution(previous)


def replicas(strategy: Any) -> int:
    """How many devices share each batch under what `strategy_scope` yielded (1 for None)."""
    if strategy is None:
        return 1
    if hasattr(strategy, "num_replicas_in_sync"):
        return int(strategy.num_replicas_in_sync)
    return int(strategy.device_mesh.shape[0])
