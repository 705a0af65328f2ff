"""Data-parallel training over the devices of one process or of several: `train.distribution`.

- "none": one device.
- "mirrored": every device of this process. TensorFlow: `tf.distribute.MirroredStrategy` over all GPUs (all logical
  CPUs when there is none); JAX: `keras.distribution.DataParallel` over `keras.distribution.list_devices()`.
- "multiworker": every device of every worker process, one process per machine (or per GPU), on JAX:
  `keras.distribution.initialize()` (which calls `jax.distributed.initialize`), the cluster read from
  `KERAS_DISTRIBUTION_JOB_ADDRESSES` (the coordinator's host:port, or every worker's, comma-separated; worker 0 is the
  coordinator), `KERAS_DISTRIBUTION_NUM_PROCESSES` and `KERAS_DISTRIBUTION_PROCESS_ID` (0 .. N-1), or detected by JAX
  itself on SLURM, Open MPI and Cloud TPU when those are unset; then `keras.distribution.DataParallel` over all global
  devices. TensorFlow's `MultiWorkerMirroredStrategy` would be the TensorFlow way, but Keras 3's `fit` fails under it
  (keras-team/keras#20585, open for Keras 3.15 / TensorFlow 2.21: it cannot reduce the first batch), so on
  TensorFlow "multiworker" raises `ConfigError` pointing to JAX.
- torch: Keras has no distribution API for the torch backend, so "mirrored" and "multiworker" raise `ConfigError`.

`train.batch_size` is the GLOBAL batch: each optimiser step sees `batch_size` images in all, every device
`batch_size / replicas` of them (it must divide evenly). A 2-worker run therefore takes the same steps as a 1-process
run with the same `batch_size`, which is what makes their losses comparable (tests/training/test_multiworker.py).
Each worker reads the same dataset and keeps its share of every global batch (Keras' `DataParallel.distribute_dataset`
rebatches to `batch_size / workers` and shards), so every worker still decodes every image: worker processes scale
the model's compute, not the input pipeline. It also means every worker must build the SAME global batches, in the
same order: a pipeline whose parallel maps may reorder elements (`deterministic=False`) gives each process its own
order, and the workers' shares of a step then overlap (some images trained twice, others not at all) without any
error. Build training datasets with a fixed order whenever `worker().count > 1`
(tests/training/test_multiworker.py::test_every_worker_builds_the_same_training_batches).

Multi-worker start-up must come first: JAX starts its distributed runtime only before the first computation, so
`initialize("multiworker")` must run before any dataset or model is made.
`runs.start_run` calls it for a training run (every `medimg <app> train` command), and `strategy_scope` calls it
(which fails if something already ran). Only the chief (worker 0) writes the run folder: `runs` gives the other
workers a temporary copy that is deleted when they exit, as TensorFlow's multi-worker guide recommends.
Metrics and losses are computed on the global batch (the arrays span every worker's devices), so every worker
reports the same, reduced values.

Build the model AND call `trainer.fit` inside `strategy_scope(config.distribution)`: variables created in the scope
are mirrored (or sharded) over the devices, and `fit` splits every batch between them. `trainer.fit_plan` does both.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import keras

from keras_medimg.errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("none", "mirrored", "multiworker")

JAX_ENV = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES", "KERAS_DISTRIBUTION_PROCESS_ID")


@dataclass(frozen=True)
class Worker:
    """This process's place in the training cluster.

    Args:
        index: 0 .. count - 1; worker 0 is the chief, the one that writes the run folder.
        count: number of worker processes (1 unless `initialize("multiworker")` joined a cluster).
    """

    index: int = 0
    count: int = 1

    @property
    def is_chief(self) -> bool:
        return self.index == 0


_worker = Worker()
_joined = False  # jax.distributed can be initialised once per process


def worker() -> Worker:
    """This process's place in the cluster; `Worker(0, 1)` until `initialize("multiworker")` joined one."""
    return _worker


def check_mode(distribution: str) -> None:
    """Raise `ConfigError` for an unknown `train.distribution` or one the current backend cannot run."""
    if distribution not in MODES:
        raise ConfigError(f"Unknown train.distribution '{distribution}'. Choose one of: {', '.join(MODES)}.")
    backend = keras.backend.backend()
    if distribution == "multiworker" and backend == "tensorflow":
        raise ConfigError(
            "train.distribution=multiworker is not available on the tensorflow backend: Keras 3's fit fails under "
            "tf.distribute.MultiWorkerMirroredStrategy (it cannot reduce the first batch, keras-team/keras#20585, "
            "still open for Keras 3.15 / TensorFlow 2.21). Use the jax backend (`medimg --backend jax ...`), "
            "or train.distribution=mirrored for the devices of one machine."
        )
    if distribution != "none" and backend not in ("tensorflow", "jax"):
        raise ConfigError(
            f"train.distribution={distribution} is not available on the {backend} backend: Keras has no "
            "distribution API for torch. Use the jax backend (keras.distribution, jax.distributed) or the tensorflow "
            "backend (tf.distribute), e.g. `medimg --backend jax ...`, or set train.distribution=none."
        )


def initialize(distribution: str) -> Worker:
    """Join the training cluster when `distribution` is "multiworker"; call it before any tensor operation.

    Safe to call again (later calls return the same `Worker`). For "none" and "mirrored" it only checks the mode.

    Returns:
        This process's `Worker` (index, count).

    Raises:
        ConfigError: unknown mode, torch backend, cluster environment missing, or called too late.
    """
    global _worker, _joined
    check_mode(distribution)
    if distribution != "multiworker" or _joined:
        return _worker
    _worker = _jax_initialize()
    _joined = True
    log.info("Worker %d of %d joined the training cluster%s.", _worker.index, _worker.count,
             " (chief: writes the run folder)" if _worker.is_chief else "")
    return _worker


def _jax_initialize() -> Worker:
    import jax

    # CPU-only workers need a collectives library to all-reduce across processes; GPUs and TPUs use their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        keras.distribution.initialize()
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"JAX could not join the worker cluster ({exc}). Set {', '.join(JAX_ENV)} on every worker (the "
            "coordinator's host:port, the number of workers, this worker's index from 0), or launch under SLURM / "
            "Open MPI where JAX finds them itself; and call keras_medimg.training.distribute.initialize('multiworker') "
            "before any JAX computation (`medimg <app> train` does)."
        ) from exc
    return Worker(index=jax.process_index(), count=jax.process_count())


@contextlib.contextmanager
def strategy_scope(distribution: str) -> Iterator[Any]:
    """Enter the distribution named by `train.distribution` for the duration of the block.

    Args:
        distribution: "none", "mirrored" or "multiworker".

    Yields:
        None for "none"; TensorFlow's `MirroredStrategy`, or JAX's `keras.distribution.DataParallel`;
        `replicas(yielded)` tells how many devices share each batch.
    """
    initialize(distribution)
    if distribution == "none":
        yield None
        return
    if keras.backend.backend() == "tensorflow":
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
    # list_devices() is every device of every process once jax.distributed is initialised, this process's before.
    distribution_lib = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(distribution_lib)
    try:
        yield distribution_lib
    finally:
        keras.distribution.set_distribution(previous)


def replicas(strategy: Any) -> int:
    """How many devices share each batch under what `strategy_scope` yielded (1 for None)."""
    if strategy is None:
        return 1
    if hasattr(strategy, "num_replicas_in_sync"):
        return int(strategy.num_replicas_in_sync)
    return int(strategy.device_mesh.shape[0])


def per_replica_batch(batch_size: int, strategy: Any) -> int:
    """`train.batch_size` (the global batch) split between the replicas; `ConfigError` when it does not divide."""
    count = replicas(strategy)
    if batch_size % count:
        raise ConfigError(
            f"train.batch_size={batch_size} is the global batch, shared by {count} devices"
            f"{f' on {_worker.count} workers' if _worker.count > 1 else ''}, and does not divide evenly. Choose a "
            f"multiple of {count} (e.g. {max(count, batch_size // count * count)})."
        )
    return batch_size // count
