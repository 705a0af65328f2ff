"""Compile and fit a Keras model into a run folder, and resume a run that was killed.

`fit` turns a `TrainConfig` into an optimiser, a learning-rate schedule, a loss and metrics, fits the model with
callbacks that write into the run folder, and returns a `FitResult`:

    weights/best.keras   the best epoch so far on `config.monitor` (over the whole run, all phases)
    weights/last.keras   the model and optimiser state after the last completed epoch (and at the end of a phase)
    results.csv          one row per epoch: `epoch` (counted over the whole run), `phase`, losses, metrics
    state.json           how far the run got: the next epoch, the best value, which phases finished
    tensorboard/         when `config.tensorboard`

Every file is written atomically, so a run killed at any moment can be resumed with `fit(..., resume=True)`:
it reloads `weights/last.keras` (weights and optimiser state, so the schedule continues where it stopped), drops
rows of `results.csv` from epochs that did not finish, and continues at the next epoch. Keras' own
`BackupAndRestore` deletes its backup when a `fit` call ends, so it cannot tell a later call that an earlier
phase (head-only training) already finished; `state.json` can.

`fit_plan` is what the apps and `cv.cross_validate` call: it sets the dtype policy (`train.mixed_precision`) and
the distribution (`train.distribution`), builds the model under both, and runs the fine-tuning plan of
`models.classifier.finetune_phases` (head on a frozen backbone at `train.head_learning_rate`, then the freeze
policy at `train.learning_rate`) as one `fit` call per phase on one run folder. Each phase starts at the run-wide
epoch where the previous one ended, and `results.csv` keeps one row per epoch with its phase.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import keras
import numpy as np

from keras_medimg.backend import gpu_available
from keras_medimg.config import TrainConfig
from keras_medimg.errors import ConfigError, require
from keras_medimg.models import torch_kernels
from keras_medimg.models.classifier import Phase, apply_freeze, finetune_phases, load_model
from keras_medimg.training.checkpoints import RESULTS_FILE, STATE_FILE, read_results, truncate_results
from keras_medimg.training.losses import on_probabilities
from keras_medimg.runs import Run, atomic_path, remove_stale_temporaries, write_json

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What one `fit` call (one training phase) did.

    Args:
        history: this phase's rows of results.csv as column -> list of values (epochs before a resume included).
        monitor: the metric that chose the best epoch.
        best_epoch: 0-based epoch (counted over the whole run) with the best `monitor` value, None if none finished.
        best_value: that value.
        best_path: weights/best.keras, None when no epoch finished.
        last_path: weights/last.keras.
        epochs_run: epochs this call trained (0 when a resumed phase had already finished).
        next_epoch: the epoch the next phase starts at (pass it as `initial_epoch`).
        stopped_early: early stopping ended the phase before `config.epochs`.
        diverged: the loss became NaN or infinite and training stopped.
        phase: the phase name written in results.csv.
    """

    history: dict[str, list[Any]]
    monitor: str
    best_epoch: int | None
    best_value: float | None
    best_path: Path | None
    last_path: Path
    epochs_run: int
    next_epoch: int
    stopped_early: bool
    diverged: bool
    phase: str


# === Seeds, devices, precision ===


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and the backend (weights init, dropout, shuffling) for a reproducible run."""
    keras.utils.set_random_seed(seed)


def resolve_jit_compile(config: TrainConfig) -> bool:
    """`jit_compile` as a bool: "auto" means on only with a GPU (XLA measured slower on our CPUs)."""
    return gpu_available() if config.jit_compile == "auto" else bool(config.jit_compile)


class PrecisionSetting(Protocol):
    """A config section with a `mixed_precision` key: `train`, or an app's own section (mamclip's `pretrain`)."""

    mixed_precision: Literal["auto", True, False]


def resolve_mixed_precision(config: PrecisionSetting) -> bool:
    """`mixed_precision` as a bool: "auto" means on only with a GPU (float16 compute is slow on CPUs)."""
    return gpu_available() if config.mixed_precision == "auto" else bool(config.mixed_precision)


def setup_precision(config: PrecisionSetting) -> str:
    """Set the global dtype policy from `config.mixed_precision`; call it BEFORE building the model.

    Keras fixes a layer's compute dtype when the layer is created, so the policy cannot be changed by `fit`.
    `fit_plan` calls it for you (and puts the previous policy back once the model is built).

    Args:
        config: the training section (any section with `mixed_precision`).

    Returns:
        The policy name now in force ("mixed_float16" or "float32").
    """
    policy = "mixed_float16" if resolve_mixed_precision(config) else "float32"
    keras.config.set_dtype_policy(policy)
    return policy


@contextlib.contextmanager
def precision_scope(config: PrecisionSetting) -> Iterator[str]:
    """`setup_precision(config)` for the models built (and compiled) inside, then the previous global policy back.

    Layers keep the policy they were built under, so a model built here trains in it, while models built later in
    the same process (SAM, evaluation, the next stage of a study) get the caller's policy. Compile inside: Keras
    wraps the optimizer in a `LossScaleOptimizer` for a model built under "mixed_float16".

    Yields:
        The policy name in force inside ("mixed_float16" or "float32").
    """
    previous = keras.config.dtype_policy()
    try:
        yield setup_precision(config)
    finally:
        keras.config.set_dtype_policy(previous)


# === Optimiser, schedule, loss, metrics ===


def balanced_class_weight(labels: Sequence[int], num_classes: int) -> dict[int, float]:
    """Class weights n_samples / (n_present_classes * count), scikit-learn's "balanced" over the classes present.

    A class without training samples weighs 1.0: it never occurs in a batch, so its weight is never used, but
    Keras wants one for every class. No labels at all give every class 1.0.

    Args:
        labels: integer class index of every training sample.
        num_classes: number of classes of the model's head (2 for a single sigmoid output).

    Returns:
        class index -> weight for every class 0 .. num_classes - 1, for `fit(class_weight=...)`.
    """
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels, dtype="int64").reshape(-1)
    result = {i: 1.0 for i in range(num_classes)}
    if labels.size == 0:
        return result
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ConfigError(
            f"Class weights: the training labels range over {labels.min()}..{labels.max()}, but the model has "
            f"{num_classes} classes (0..{num_classes - 1}). Check that the class list matches the model's head."
        )
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    result.update({int(c): float(w) for c, w in zip(present, weights)})
    return result


def make_learning_rate(
    config: TrainConfig, steps_per_epoch: int | None
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate or schedule of `config.schedule`.

    Args:
        config: the training section (`learning_rate`, `schedule`, `decay_steps`, `decay_rate`, `warmup_epochs`,
            `epochs`).
        steps_per_epoch: batches per epoch; the cosine schedule needs it to know its length.
    """
    if config.schedule == "constant":
        return config.learning_rate
    if config.schedule == "exponential":
        # Staircase as in the ImageCLEF 2024 code: the rate drops in steps (x0.9 every 100 steps), not smoothly.
        return keras.optimizers.schedules.ExponentialDecay(
            config.learning_rate, decay_steps=config.decay_steps, decay_rate=config.decay_rate, staircase=True
        )
    if config.schedule == "cosine":
        if not steps_per_epoch:
            raise ConfigError(
                "train.schedule=cosine needs the number of batches per epoch, but the training dataset has an "
                "unknown or infinite length. Use a finite dataset or train.schedule=constant|exponential."
            )
        total = max(1, config.epochs * steps_per_epoch)
        warmup = min(total - 1, int(round(config.warmup_epochs * steps_per_epoch)))
        if warmup <= 0:
            return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=total)
        return keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=total - warmup, warmup_target=config.learning_rate, warmup_steps=warmup
        )
    raise ConfigError(f"Unknown train.schedule '{config.schedule}'. Choose constant, exponential or cosine.")


def make_optimizer(config: TrainConfig, steps_per_epoch: int | None = None) -> keras.optimizers.Optimizer:
    """The optimiser of `config.optimizer` with its learning-rate schedule.

    Args:
        config: the training section.
        steps_per_epoch: batches per epoch (needed by the cosine schedule only).
    """
    rate = make_learning_rate(config, steps_per_epoch)
    decay = config.weight_decay or None
    if config.optimizer == "adam":
        return keras.optimizers.Adam(rate, weight_decay=decay)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=config.momentum, weight_decay=decay)
    raise ConfigError(f"Unknown train.optimizer '{config.optimizer}'. Choose adam, adamw or sgd.")


def make_loss(config: TrainConfig, *, multilabel: bool, sparse: bool, from_logits: bool = False) -> keras.losses.Loss:
    """The loss of `config.loss` for this head.

    "crossentropy" means the cross-entropy that fits the head: categorical for one label per image, binary for
    multi-label; "binary_crossentropy" forces binary; "focal" is the focal version of the fitting one.

    Args:
        config: the training section (`loss`, `focal_gamma`, `label_smoothing`).
        multilabel: sigmoid head with multi-hot (or 0/1) labels.
        sparse: single-label labels are class indices rather than one-hot rows.
        from_logits: the model outputs logits rather than probabilities. On probabilities, under torch and JAX the
            loss is taken on logits recovered from them (`training.losses`), so a saturated head still learns.
    """
    smoothing = config.label_smoothing
    binary = multilabel or config.loss == "binary_crossentropy"

    def build(make: Any, **kwargs: Any) -> keras.losses.Loss:
        # On probabilities, a loss whose gradient survives a saturated head under torch and JAX (training.losses).
        return make(from_logits=True, **kwargs) if from_logits else on_probabilities(make, binary=binary, **kwargs)

    if binary:
        if config.loss == "focal":
            return build(keras.losses.BinaryFocalCrossentropy, gamma=config.focal_gamma, label_smoothing=smoothing)
        return build(keras.losses.BinaryCrossentropy, label_smoothing=smoothing)
    if config.loss == "focal":
        return build(keras.losses.CategoricalFocalCrossentropy, gamma=config.focal_gamma, label_smoothing=smoothing)
    if sparse:
        return build(keras.losses.SparseCategoricalCrossentropy)
    return build(keras.losses.CategoricalCrossentropy, label_smoothing=smoothing)


def make_metrics(*, multilabel: bool) -> list[Any]:
    """Accuracy for one label per image; binary accuracy, ROC-AUC and micro F1 (threshold 0.5) for multi-label."""
    if not multilabel:
        return ["accuracy"]
    return [
        keras.metrics.BinaryAccuracy(name="binary_accuracy"),
        keras.metrics.AUC(multi_label=True, name="auc"),
        keras.metrics.F1Score(average="micro", threshold=0.5, name="f1"),
    ]


def _head_activation(model: keras.Model) -> str | None:
    activation = getattr(model.layers[-1], "activation", None) if model.layers else None
    return getattr(activation, "__name__", None)


def _label_spec(dataset: Any) -> tuple[int, str]:
    """Rank and dtype of the label tensor of a batched tf.data dataset of (images, labels[, weights])."""
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) < 2:
        raise ValueError("fit expects a tf.data.Dataset of (images, labels) or (images, labels, sample_weights).")
    return len(spec[1].shape), spec[1].dtype.name


@contextlib.contextmanager
def epochs_end_with_the_data() -> Iterator[None]:
    """Around a `model.fit` on our datasets: without Keras' "Your input ran out of data" warning.

    Our datasets drop files that cannot be decoded (skipped.csv), so tf.data cannot know their length before the
    first pass and Keras ends each epoch when the data ends, as intended; the warning would print after every epoch
    of every run without anything being wrong.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
        yield


def _steps_per_epoch(dataset: Any) -> int | None:
    cardinality = int(dataset.cardinality())
    return cardinality if cardinality > 0 else None


# === Run-folder state ===


def _read_state(run: Run) -> dict[str, Any] | None:
    path = run.dir / STATE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _phase_history(run: Run, phase: str) -> dict[str, list[Any]]:
    fields, rows = read_results(run)
    rows = [row for row in rows if row.get("phase") == phase]
    history: dict[str, list[Any]] = {}
    for name in fields:
        if name == "phase":
            continue
        values = [row[name] for row in rows]
        history[name] = [int(v) for v in values] if name == "epoch" else [_number(v) for v in values]
    return history


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _load_model_weights(model: keras.Model, path: Path) -> None:
    """Copy the layer weights of a saved model into `model`, leaving its (new) optimiser alone."""
    saved = load_model(path)
    model.set_weights(saved.get_weights())


def _save_model(model: keras.Model, path: Path) -> None:
    with atomic_path(path) as tmp:
        model.save(tmp)


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


class _PhaseCSVLogger(keras.callbacks.CSVLogger):
    """CSVLogger that adds a `phase` column, without putting a string into the logs other callbacks read."""

    def __init__(self, filename: str, phase: str):
        super().__init__(filename, append=True)
        self.phase = phase

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        super().on_epoch_end(epoch, {**(logs or {}), "phase": self.phase})


class _RunCheckpoint(keras.callbacks.Callback):
    """Writes best.keras, last.keras and state.json atomically at the end of every epoch.

    Keras' ModelCheckpoint writes in place, so a kill during a save would leave half a file; here each file is
    renamed into place, and state.json is written last: whatever it says has finished is on disk.
    """

    def __init__(self, run: Run, state: dict[str, Any], phase: str, monitor: str):
        super().__init__()
        self.run = run
        self.state = state
        self.phase = phase
        self.monitor = monitor
        self.mode = "min" if monitor.endswith("loss") else "max"
        self.diverged = False

    def _improved(self, value: float) -> bool:
        best = self.state["best"]["value"]
        if best is None:
            return True
        return value < best if self.mode == "min" else value > best

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        logs = logs or {}
        if not _finite(logs.get("loss")):
            self.diverged = True  # a NaN epoch is not a state worth resuming from
            return
        if self.monitor not in logs:
            raise ConfigError(
                f"train.monitor is '{self.monitor}', which this model does not report. "
                f"Choose one of: {', '.join(sorted(logs))}."
            )
        value = float(logs[self.monitor])
        if _finite(value) and self._improved(value):
            _save_model(self.model, self.run.path("weights", "best.keras"))
            self.state["best"] = {"value": value, "epoch": epoch}
        _save_model(self.model, self.run.path("weights", "last.keras"))
        self.state["epoch"] = epoch + 1
        self.state["phases"][self.phase]["next_epoch"] = epoch + 1
        write_json(self.run.path(STATE_FILE), self.state)

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        if self.diverged:
            return
        # EarlyStopping (earlier in the list) has restored the best weights by now; the next phase starts from
        # exactly this model, so last.keras holds it.
        _save_model(self.model, self.run.path("weights", "last.keras"))
        self.state["phases"][self.phase]["complete"] = True
        write_json(self.run.path(STATE_FILE), self.state)


# === fit ===


def fit(
    model: keras.Model,
    train_ds: Any,
    val_ds: Any | None,
    *,
    config: TrainConfig,
    run: Run,
    class_weight: Mapping[int, float] | None = None,
    labels: Sequence[int] | None = None,
    resume: bool = False,
    initial_epoch: int = 0,
    phase_name: str | None = None,
    multilabel: bool | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> FitResult:
    """Compile `model` from `config` and train it for `config.epochs` epochs, writing into `run`.

    One phase; `fit_plan` (what the apps call) builds the model under the configured precision and distribution
    and calls `fit` once per phase. Called directly, build the model (and call `setup_precision`) inside
    `distribute.strategy_scope(...)` when distributing; `fit` compiles in the scope active when it is called.

    Args:
        model: a built Keras model whose head outputs probabilities (softmax or sigmoid) or logits (linear).
        train_ds: batched tf.data.Dataset of (images, labels) or (images, labels, sample_weights); labels are class
            indices or one-hot rows for one label per image, multi-hot rows for multi-label.
        val_ds: the validation dataset in the same form, or None (then `config.monitor` must not start with val_).
        config: the training section.
        run: the run folder.
        class_weight: class index -> weight; overrides `config.class_weight`. Not for multi-label heads.
        labels: class index of every training sample; with `config.class_weight` "balanced" (and no
            `class_weight`) the weights are `balanced_class_weight(labels, classes of the head)`.
        resume: continue this run from its state.json: a finished phase is skipped (unless it is the last one and
            `config.epochs` now asks for more), an interrupted one continues
            at its next epoch with the saved optimiser state.
        initial_epoch: the run-wide epoch this phase starts at (the previous phase's `FitResult.next_epoch`).
        phase_name: the `phase` column of results.csv (default "train").
        multilabel: sigmoid head with multi-hot labels; None infers it from the last layer's activation.
        callbacks: extra Keras callbacks, run after the run-folder ones.

    Returns:
        FitResult of this phase.
    """
    phase = phase_name or "train"
    if val_ds is None and config.monitor.startswith("val_"):
        raise ConfigError(
            f"train.monitor is '{config.monitor}' but no validation data was given. "
            "Provide validation data or set train.monitor=loss."
        )
    if config.tensorboard:
        # Without it Keras' TensorBoard callback fails at the first epoch's end, after training started.
        require("tensorboard", extra="tensorboard", feature="train.tensorboard=true")
    _check_precision(model, config)
    torch_kernels.install()  # a model built outside the registry trains with the fast torch kernels too
    head = _Head.of(model, train_ds, config, multilabel)
    class_weight = _class_weight(config, head, class_weight, labels)
    train_ds = head.encode(train_ds)
    val_ds = head.encode(val_ds) if val_ds is not None else None

    model.compile(
        optimizer=make_optimizer(config, _steps_per_epoch(train_ds)),
        loss=make_loss(config, multilabel=head.binary_loss, sparse=head.sparse, from_logits=head.from_logits),
        metrics=make_metrics(multilabel=head.binary_loss),
        jit_compile=resolve_jit_compile(config),
    )

    if resume:
        remove_stale_temporaries(run.dir)  # a kill -9 during the last checkpoint write left its temporary file
    state = _read_state(run) if (resume or initial_epoch > 0) else None
    if state is None:
        state = {"epoch": 0, "phase": phase, "monitor": config.monitor, "best": {"value": None, "epoch": None},
                 "phases": {}}
    phase_state = state["phases"].get(phase) if resume else None
    last_path = run.path("weights", "last.keras")
    if phase_state is not None and phase_state.get("complete") and _extends(state, phase, phase_state, config):
        phase_state["complete"] = False  # the latest phase, resumed with more epochs: train on from where it ended
    if phase_state is not None and phase_state.get("complete"):
        _load_model_weights(model, last_path)
        return _result(run, state, phase, config, epochs_run=0, stopped_early=phase_state.get("stopped_early", False),
                       diverged=False)
    if phase_state is not None and last_path.is_file():
        # An interrupted phase: same model, same optimiser, so its saved state (step count included) loads back.
        model.optimizer.build(model.trainable_variables)
        model.load_weights(last_path)
        start, end = phase_state["next_epoch"], phase_state["start"] + config.epochs
    else:
        if resume and last_path.is_file() and state["phases"]:
            _load_model_weights(model, last_path)  # an earlier phase finished; this one starts from its model
        start, end = initial_epoch, initial_epoch + config.epochs
        state["phases"][phase] = {"start": start, "next_epoch": start, "complete": False}
    state["phase"] = phase
    truncate_results(run, start)

    checkpoint = _RunCheckpoint(run, state, phase, config.monitor)
    early = _early_stopping(config, checkpoint.mode)
    run_callbacks = [_PhaseCSVLogger(str(run.path(RESULTS_FILE)), phase), *([early] if early else []),
                     keras.callbacks.TerminateOnNaN(), checkpoint]
    if config.tensorboard:
        run_callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run.subdir("tensorboard"))))
    if start < end:
        with epochs_end_with_the_data():
            _fit_keras(model, train_ds, val_ds, start=start, end=end, class_weight=class_weight,
                       callbacks=run_callbacks + list(callbacks), verbose=config.verbose)
    else:
        # Every epoch had finished, but the kill came before the phase was marked complete.
        checkpoint.set_model(model)
        checkpoint.on_train_end()
    stopped_early = bool(early is not None and early.stopped_epoch > 0)
    state["phases"][phase]["stopped_early"] = stopped_early
    write_json(run.path(STATE_FILE), state)
    return _result(run, state, phase, config, epochs_run=state["phases"][phase]["next_epoch"] - start,
                   stopped_early=stopped_early, diverged=checkpoint.diverged)


def _fit_keras(model: keras.Model, train_ds: Any, val_ds: Any | None, *, start: int, end: int,
               class_weight: Mapping[int, float] | None, callbacks: list[Any], verbose: int) -> None:
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=end,
        initial_epoch=start,
        class_weight=dict(class_weight) if class_weight is not None else None,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # tf.data datasets shuffle themselves; Keras would only warn
    )


def _extends(state: dict[str, Any], phase: str, phase_state: dict[str, Any], config: TrainConfig) -> bool:
    """Whether resuming asks a finished phase for more epochs (only the run's last phase, if it did not stop early)."""
    return (state.get("phase") == phase and not phase_state.get("stopped_early")
            and phase_state["start"] + config.epochs > phase_state["next_epoch"])


def _early_stopping(config: TrainConfig, mode: str) -> keras.callbacks.EarlyStopping | None:
    if config.early_stopping_patience <= 0:
        return None
    return keras.callbacks.EarlyStopping(
        monitor=config.monitor,
        mode=mode,
        patience=config.early_stopping_patience,
        restore_best_weights=True,
        verbose=min(config.verbose, 1),
    )


@dataclass(frozen=True)
class _Head:
    """What the model's head and the labels imply for the loss, and how labels must be re-encoded."""

    multilabel: bool
    binary_loss: bool
    sparse: bool
    from_logits: bool
    num_outputs: int | None
    one_hot: bool
    single_sigmoid: bool

    @classmethod
    def of(cls, model: keras.Model, dataset: Any, config: TrainConfig, multilabel: bool | None) -> "_Head":
        activation = _head_activation(model)
        multilabel = activation == "sigmoid" if multilabel is None else multilabel
        num_outputs = int(model.outputs[0].shape[-1]) if getattr(model, "outputs", None) else None
        rank, dtype = _label_spec(dataset)
        sparse = rank == 1 or (rank == 2 and dtype.startswith("int") and num_outputs != 1)
        binary_loss = multilabel or config.loss == "binary_crossentropy"
        # Class indices become one-hot rows wherever Keras has no sparse loss (focal, smoothing, binary losses).
        one_hot = sparse and num_outputs != 1 and (binary_loss or config.loss == "focal" or config.label_smoothing > 0)
        single_sigmoid = binary_loss and num_outputs == 1
        return cls(
            multilabel=multilabel,
            binary_loss=binary_loss,
            sparse=sparse and not (one_hot or single_sigmoid),
            from_logits=activation == "linear",
            num_outputs=num_outputs,
            one_hot=one_hot,
            single_sigmoid=single_sigmoid,
        )

    def encode(self, dataset: Any) -> Any:
        """Labels as float rows: one-hot for class indices, (batch, 1) for a single sigmoid output."""
        if not (self.one_hot or self.single_sigmoid):
            return dataset
        import tensorflow as tf

        def encode(images, labels, *weights):
            if self.one_hot:
                labels = tf.one_hot(tf.cast(tf.reshape(labels, [-1]), "int32"), self.num_outputs)
            else:
                labels = tf.reshape(tf.cast(labels, "float32"), [-1, 1])
            return (images, labels, *weights)

        return dataset.map(encode, num_parallel_calls=tf.data.AUTOTUNE)


def _result(run: Run, state: dict[str, Any], phase: str, config: TrainConfig, *, epochs_run: int,
            stopped_early: bool, diverged: bool) -> FitResult:
    best_path = run.dir / "weights" / "best.keras"
    return FitResult(
        history=_phase_history(run, phase),
        monitor=config.monitor,
        best_epoch=state["best"]["epoch"],
        best_value=state["best"]["value"],
        best_path=best_path if best_path.is_file() else None,
        last_path=run.dir / "weights" / "last.keras",
        epochs_run=epochs_run,
        next_epoch=state["phases"][phase]["next_epoch"],
        stopped_early=stopped_early,
        diverged=diverged,
        phase=phase,
    )


def _class_weight(config: TrainConfig, head: _Head, given: Mapping[int, float] | None,
                  labels: Sequence[int] | None) -> Mapping[int, float] | None:
    """The class weights to train with: the given ones, else the balanced ones when the config asks for them."""
    wanted = given is not None or config.class_weight == "balanced"
    if wanted and head.multilabel:
        raise ConfigError(
            "train.class_weight=balanced applies to one label per image, but this model has a multi-label "
            "(sigmoid) head, where each label is its own yes/no question. Set train.class_weight=none."
        )
    if given is not None or config.class_weight != "balanced":
        return given
    if labels is None:
        raise ConfigError(
            "train.class_weight is 'balanced', but no training labels were given to count the classes. Pass "
            "labels= (the class index of every training sample) to fit_plan or fit, or set train.class_weight=none."
        )
    num_classes = head.num_outputs if head.num_outputs and head.num_outputs > 1 else 2
    weights = balanced_class_weight(labels, num_classes)
    log.info("Balanced class weights: %s.", ", ".join(f"{c}: {w:.3g}" for c, w in weights.items()))
    return weights


def _check_precision(model: keras.Model, config: TrainConfig) -> None:
    """Refuse a model whose dtype policy contradicts an explicit `train.mixed_precision`.

    "auto" never refuses: it is a preference, not a demand, so a model built under the other policy (before
    `setup_precision`, or loaded from a file) trains as it was built, with a log line saying so.
    """
    wanted = resolve_mixed_precision(config)
    built_mixed = model.dtype_policy.name.startswith("mixed")
    check_jit_with_mixed_precision(resolve_jit_compile(config), built_mixed, section="train")
    if wanted != built_mixed and config.mixed_precision == "auto":
        log.info("train.mixed_precision=auto would train in %s, but the model was built with the '%s' dtype "
                 "policy, so it trains in that. Build it after training.trainer.setup_precision(config) (fit_plan "
                 "does) to change that.", "mixed_float16" if wanted else "float32", model.dtype_policy.name)
        return
    if wanted != built_mixed:
        raise ConfigError(
            f"train.mixed_precision resolves to {wanted} but the model was built with the "
            f"'{model.dtype_policy.name}' dtype policy. Call training.trainer.setup_precision(config) before "
            "building the model, or set train.mixed_precision to match."
        )


def check_jit_with_mixed_precision(jit_compile: bool, mixed: bool, *, section: str) -> None:
    """Refuse XLA with float16 compute on the jax backend without a GPU, before it fails deep in compilation:
    JAX's CPU compiler refuses float16 matrix products with float32 accumulation."""
    if jit_compile and mixed and keras.backend.backend() == "jax" and not gpu_available():
        raise ConfigError(f"{section}.jit_compile with {section}.mixed_precision on the jax backend needs a GPU: "
                          "JAX's CPU compiler refuses float16 matrix products with float32 accumulation. Set "
                          f"{section}.mixed_precision=auto (float32 on a CPU) or {section}.jit_compile=false.")


# === Phased plans ===


@dataclass
class PlanResult:
    """What `fit_plan` did.

    Args:
        model: the trained model as the last phase left it (best weights restored when early stopping is on).
        fits: the `FitResult` of every phase that ran or was resumed, in order.
        phases: one dict per phase for metrics.json: phase, freeze, learning_rate, initial_epoch, next_epoch,
            epochs_run, best_epoch, best_value, stopped_early, diverged.
        precision: the dtype policy the model was built under ("float32" or "mixed_float16").
        replicas: how many devices shared each batch (`train.distribution`), over all workers.
        workers: how many worker processes trained it (`train.distribution: multiworker`), 1 otherwise.
    """

    model: keras.Model
    fits: list[FitResult]
    phases: list[dict[str, Any]] = field(default_factory=list)
    precision: str = "float32"
    replicas: int = 1
    workers: int = 1

    @property
    def best_path(self) -> Path | None:
        """weights/best.keras, the best epoch over all phases; None when no epoch finished."""
        return self.fits[-1].best_path if self.fits else None

    @property
    def last_path(self) -> Path:
        """weights/last.keras, the model after the last phase."""
        return self.fits[-1].last_path

    @property
    def best_epoch(self) -> int | None:
        """Run-wide epoch of the best `train.monitor` value, over all phases."""
        return self.fits[-1].best_epoch if self.fits else None

    @property
    def diverged(self) -> bool:
        """A phase's loss became NaN or infinite; the phases after it did not run."""
        return any(result.diverged for result in self.fits)


def plan_phases(config: TrainConfig, *, weights: str | Path | None, freeze: str) -> list[Phase]:
    """The phases `fit_plan` runs for this config (see `models.classifier.finetune_phases`).

    `train.head_epochs` larger than `train.epochs` is cut to `train.epochs` (with a log line): the head phase
    then is the whole run. The phases' learning-rate factor is 1, because the config names both rates itself
    (`train.head_learning_rate` for the head phase, `train.learning_rate` for the others); see `phase_learning_rate`.

    Args:
        config: the training section (`epochs`, `head_epochs`).
        weights: the backbone weights the model was built with (`model.weights`); None skips the head phase.
        freeze: the freeze policy of the fine-tuning (or only) phase (`model.freeze`).
    """
    head_epochs = config.head_epochs
    if head_epochs and weights is None:
        log.warning("Random weights (model.weights: null): skipping the %d frozen-backbone head epochs, which would fit "
                    "a head on random features; all %d epochs train the whole network at learning rate %g.",
                    head_epochs, config.epochs, config.learning_rate)
        head_epochs = 0
    if head_epochs > config.epochs:
        log.warning("train.head_epochs (%d) is more than train.epochs (%d): training the head for all %d epochs.",
                    head_epochs, config.epochs, config.epochs)
        head_epochs = config.epochs
    return finetune_phases(weights, head_epochs, config.epochs, freeze, finetune_lr_factor=1.0)


def phase_learning_rate(config: TrainConfig, phase: Phase) -> float:
    """The (initial) learning rate of a phase: `train.head_learning_rate` for the "head" phase,
    `train.learning_rate` for any other, times the phase's `learning_rate_factor`."""
    base = config.head_learning_rate if phase.name == "head" else config.learning_rate
    return base * phase.learning_rate_factor


def fit_plan(
    build_model: Callable[[], keras.Model],
    train_ds: Any,
    val_ds: Any | None,
    *,
    config: TrainConfig,
    run: Run,
    weights: str | Path | None,
    freeze: str = "none",
    labels: Sequence[int] | None = None,
    multilabel: bool | None = None,
    resume: bool = False,
    phases: Sequence[Phase] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> PlanResult:
    """Build a model under the configured precision and distribution and train it phase by phase into `run`.

    The model is built inside `distribute.strategy_scope(train.distribution)` after `setup_precision(config)` (the
    global dtype policy is put back afterwards; the model keeps its own). Each phase then applies its freeze policy,
    and `fit`s `phase.epochs - phase.initial_epoch` epochs at `phase_learning_rate(config, phase)`, starting at the
    run-wide epoch where the previous phase ended (earlier when early stopping ended it early). With `resume`,
    finished phases are skipped (their model is reloaded) and an interrupted one continues at its next epoch.
    A phase whose loss diverges ends the plan.

    Args:
        build_model: returns a new, uncompiled model; one built by `models.classifier.build_classifier` for a
            plan that freezes (a model without a "backbone" layer can run only plans whose freeze is "none").
        train_ds: the batched training dataset, as for `fit`.
        val_ds: the validation dataset, or None (then `train.monitor` must not start with "val_").
        config: the training section (`epochs`, `head_epochs`, `head_learning_rate`, `learning_rate`,
            `class_weight`, `mixed_precision`, `distribution`, ...). `batch_size` is the global batch the datasets
            were batched with; under a distribution it must divide evenly between the devices.
        run: the run folder.
        weights: the backbone weights the model is built with (`model.weights`): None (random) skips the head phase.
        freeze: the freeze policy of the fine-tuning (or only) phase (`model.freeze`).
        labels: class index of every training sample; needed when `train.class_weight` is "balanced".
        multilabel: sigmoid head with multi-hot labels; None infers it from the last layer's activation.
        resume: continue `run` from its state.json.
        phases: run these phases instead of `plan_phases(config, weights=weights, freeze=freeze)`.
        callbacks: extra Keras callbacks, given to every phase.

    Returns:
        PlanResult: the trained model, each phase's FitResult, a metrics.json summary per phase.
    """
    from keras_medimg.training.distribute import per_replica_batch, replicas, strategy_scope, worker

    plan = list(phases) if phases is not None else plan_phases(config, weights=weights, freeze=freeze)
    if not plan:
        raise ConfigError("fit_plan was given no phases to train; pass phases=None for the configured plan.")
    with strategy_scope(config.distribution) as strategy:
        if strategy is not None:
            log.info("Global batch %d: %d per device on %d device(s), %d worker(s).", config.batch_size,
                     per_replica_batch(config.batch_size, strategy), replicas(strategy), worker().count)
        if worker().count > 1:
            train_ds, val_ds = _whole_batches(train_ds, config), _whole_batches(val_ds, config)
        with precision_scope(config) as precision:
            model = build_model()
        log.info("Built %s with the %s dtype policy.", model.name, precision)
        result = PlanResult(model=model, fits=[], precision=precision, replicas=replicas(strategy),
                            workers=worker().count)
        next_epoch = 0
        for phase in plan:
            fitted = _fit_phase(model, phase, train_ds, val_ds, config=config, run=run, initial_epoch=next_epoch,
                                labels=labels, multilabel=multilabel, resume=resume, callbacks=callbacks)
            result.fits.append(fitted)
            result.phases.append({
                "phase": phase.name, "freeze": phase.freeze, "learning_rate": phase_learning_rate(config, phase),
                "initial_epoch": next_epoch, "next_epoch": fitted.next_epoch, "epochs_run": fitted.epochs_run,
                "best_epoch": fitted.best_epoch, "best_value": fitted.best_value,
                "stopped_early": fitted.stopped_early, "diverged": fitted.diverged,
            })
            next_epoch = fitted.next_epoch
            if fitted.diverged:
                log.warning("Phase '%s' stopped: the loss became NaN or infinite. Lower train.learning_rate (or "
                            "train.head_learning_rate) and train again.", phase.name)
                break
    return result


def _whole_batches(dataset: Any | None, config: TrainConfig) -> Any | None:
    """The dataset in full global batches only: each worker takes its share of every batch, and a last, smaller
    batch would give the workers unequal shares (and step counts). Up to `batch_size - 1` images per pass are left
    out, different ones each epoch when the dataset shuffles."""
    if dataset is None:
        return None
    return dataset.rebatch(config.batch_size, drop_remainder=True)


def _fit_phase(model: keras.Model, phase: Phase, train_ds: Any, val_ds: Any | None, *, config: TrainConfig,
               run: Run, initial_epoch: int, **fit_options: Any) -> FitResult:
    """Freeze as the phase says and fit it with its own epoch count and learning rate."""
    if phase.freeze != "none" or _has_backbone(model):
        apply_freeze(model, phase.freeze)
    rate = phase_learning_rate(config, phase)
    phase_config = replace(config, epochs=phase.epochs - phase.initial_epoch, learning_rate=rate)
    log.info("Phase '%s': %d epochs from epoch %d, freeze '%s', learning rate %g, schedule %s.", phase.name,
             phase_config.epochs, initial_epoch, phase.freeze, rate, config.schedule)
    return fit(model, train_ds, val_ds, config=phase_config, run=run, initial_epoch=initial_epoch,
               phase_name=phase.name, **fit_options)


def _has_backbone(model: keras.Model) -> bool:
    return any(layer.name == "backbone" for layer in model.layers)
