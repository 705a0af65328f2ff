"""The label-count curve: k-fold fine-tuning of image classifiers at several training-set sizes, on shared folds.

A study such as MAM-CLIP's Fig. 3 / Table 2 compares initialisations (a pretrained encoder against ImageNet or
random weights) at 1K, 3K, ... labels. `label_count_curve` runs that grid: the same patient-grouped, stratified
folds and the same stratified subsets for every init, one row per (init, label count) with the macro F1 mean and
std over folds, per-class F1 and the summed confusion matrix; `write_curve` writes the table, plot and confusion
matrices into a run folder.

Pieces: `CurveSettings`, `parse_train_samples`, `subsample`, `ResettableClassifier`, `head_logits`,
`label_count_curve`, `compare_at_smallest`, `write_curve`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurveSettings:
    """How every fold of the curve trains and reads its images.

    image_size / normalization: the classifier's input (a side or (height, width)), as for
        `datasets.pipeline.make_dataset`.
    folds: k of the k-fold split; seed: seeds the folds, the subsets and each fold's data order.
    epochs, batch_size, learning_rate, weight_decay: AdamW training of each fold.
    class_weight: "none" or "balanced" (inverse class frequency of each fold's training subset).
    pool_norm: LayerNorm on the pooled features before the head, as ConvNeXt's own head (`build_classifier`).
    augment: a `preprocessing.augment.Augment` for the training images, or None.
    distribution: "none" | "mirrored" | "multiworker" (`training.distribute`): each init's classifier is built and
        fitted in `distribute.strategy_scope(distribution)`, `batch_size` being the global batch.
    """

    image_size: int | tuple[int, int]
    normalization: Any = None
    folds: int = 4
    seed: int = 0
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    class_weight: str = "balanced"
    pool_norm: bool = False
    augment: Any = None
    strict: bool = False
    verbose: int = 0
    distribution: str = "none"


def parse_train_samples(values: Sequence[str], available: int) -> list[tuple[str, int]]:
    """Label counts ("1000") or fractions ("0.25") -> [(name, count)], each at most `available`; [] = all.

    Counts past `available` would train the same full set again (the study's 30000 on a smaller dataset): each
    count is trained once, under "all" when that is asked for, and the others are named in a warning."""
    out = []
    for value in values or ["all"]:
        text = str(value).strip()
        if text == "all":
            out.append(("all", available))
            continue
        try:
            number = float(text)
        except ValueError:
            raise ConfigError(f"finetune.train_samples: '{text}' is not a count, a fraction or 'all'.") from None
        count = int(round(number * available)) if 0 < number <= 1 and "." in text else int(number)
        if count < 2:
            raise ConfigError(f"finetune.train_samples: '{text}' gives {count} training images; use at least 2.")
        out.append((text, min(count, available)))
    # One name per count, "all" preferred; each count at the place of its first name.
    names = {count: "all" if ("all", count) in out else name for name, count in reversed(out)}
    unique = [(names[count], count) for count in dict.fromkeys(count for _, count in out)]
    dropped = [name for name, count in out if name != names[count]]
    if dropped:
        log.warning("finetune.train_samples: %s give the same training images as %s (%d available); each count is "
                    "trained once.", ", ".join(dropped), ", ".join(dict.fromkeys(names[c] for n, c in out if n in dropped)),
                    available)
    return unique


def subsample(samples: Sequence[Sample], count: int, seed: int) -> list[Sample]:
    """A stratified random subset of `count` samples (each class in proportion, at least one per class)."""
    if count >= len(samples):
        return list(samples)
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_class.setdefault(str(s.label), []).append(i)
    chosen = []
    for label in sorted(by_class):
        members = rng.permutation(by_class[label])
        take = max(1, int(round(count * len(members) / len(samples))))
        chosen += members[:take].tolist()
    chosen = rng.permutation(chosen)[:count]
    return [samples[i] for i in sorted(chosen)]


class ResettableClassifier:
    """One compiled softmax classifier on `backbone`, reset to its starting weights (and a fresh optimizer state)
    before each fold, so that every fold trains from the same start without rebuilding and retracing the model.

    `model` is what trains: the classifier up to the head's logits, compiled with a cross-entropy on logits.
    `classifier` is the softmax classifier (layer "predictions") on the same variables: what predicts.
    `head_weights` (classifier layer name -> weights) starts those head layers from pretrained values, such as a
    pretrained encoder's "pool_norm"; names of layers the classifier does not have are ignored.

    Training on the softmax output instead fails on every backend but TensorFlow: Keras' torch and JAX
    cross-entropy clips probabilities to [1e-7, 1 - 1e-7] before the log, and the clip has no gradient, so once
    one early step pushes the true class below 1e-7 (a large first step is enough) those samples stop
    contributing gradient for good and the model stays on whatever class it saturated to. TensorFlow hides this
    because its cross-entropy finds the logits behind a softmax op and uses them.
    """

    def __init__(self, backbone: Any, num_classes: int, settings: CurveSettings,
                 head_weights: Mapping[str, Sequence[Any]] | None = None):
        import keras

        from keras_medimg.models.classifier import build_classifier

        self.classifier = build_classifier(backbone, num_classes, pool_norm=settings.pool_norm)
        names = {layer.name for layer in self.classifier.layers}
        for name, values in (head_weights or {}).items():
            if name in names:
                self.classifier.get_layer(name).set_weights(list(values))
        head = self.classifier.get_layer("predictions")
        self.model = keras.Model(self.classifier.input, head_logits(head, name="logits")(head.input),
                                 name=f"{self.classifier.name}_logits")
        optimizer = keras.optimizers.AdamW(settings.learning_rate, weight_decay=settings.weight_decay)
        self.model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                           jit_compile=False)
        self.model.optimizer.build(self.model.trainable_variables)
        self.weights = [np.array(w) for w in self.model.get_weights()]
        self.optimizer_state = [np.array(keras.ops.convert_to_numpy(v)) for v in self.model.optimizer.variables]

    def reset(self) -> None:
        """Back to the weights and optimizer state it was built with."""
        self.model.set_weights(self.weights)
        for variable, value in zip(self.model.optimizer.variables, self.optimizer_state):
            variable.assign(value)


@functools.cache
def _head_logits_class() -> type:
    import keras  # imported on first use: the CLI loads this module without building a model

    class HeadLogits(keras.layers.Layer):
        """The pre-activation (logits) of the Dense layer `head`, computed on `head`'s own variables."""

        def __init__(self, head: Any, **kwargs):
            super().__init__(dtype=head.dtype_policy, **kwargs)
            self.head = head

        def call(self, inputs):
            outputs = keras.ops.matmul(keras.ops.cast(inputs, self.compute_dtype), self.head.kernel)
            return outputs + self.head.bias if self.head.use_bias else outputs

        def compute_output_shape(self, input_shape):
            return (*input_shape[:-1], self.head.units)

    return HeadLogits


def head_logits(head: Any, **kwargs) -> Any:
    """A layer whose output is the logits of the Dense layer `head` (its output before the activation), sharing
    `head`'s kernel and bias, so that training it trains `head`."""
    return _head_logits_class()(head, **kwargs)


def _fold_data(samples: Sequence[Sample], class_names: Sequence[str], settings: CurveSettings, *, skipped: Skipped,
               seed: int):
    from keras_medimg.datasets.pipeline import make_dataset, memory_cache_for
    from keras_medimg.training.distribute import worker

    # The same batches in the same order on every run (the curve compares inits by small differences, so a run
    # must repeat exactly) and on every worker (each keeps its share of a global batch, whole ones only).
    return make_dataset(samples, image_size=settings.image_size, training=True, batch_size=settings.batch_size,
                        channels=3, normalization=settings.normalization, augment=settings.augment,
                        class_names=class_names, cache=memory_cache_for(len(samples), settings.image_size), seed=seed, skipped=skipped, strict=settings.strict,
                        deterministic=True, drop_remainder=worker().count > 1)


def _evaluate_fold(model: Any, val: Sequence[Sample], class_names: Sequence[str], settings: CurveSettings,
                   skipped: Skipped) -> dict[str, Any]:
    from keras_medimg.datasets.pipeline import predict_samples
    from keras_medimg.metrics.classification import classification_report

    probs, kept = predict_samples(model, val, image_size=settings.image_size, channels=3,
                                  normalization=settings.normalization, skipped=skipped)
    truth = [class_names.index(s.label) for s in kept]
    return classification_report(truth, probs.argmax(axis=1), class_names=list(class_names), y_prob=probs)


def _summary_row(init: str, size_name: str, count: int, reports: list[dict[str, Any]],
                 class_names: Sequence[str]) -> dict[str, Any]:
    f1 = np.array([r["macro"]["f1"] for r in reports])
    return {
        "init": init, "train_samples": size_name, "train_images": count,
        "macro_f1_mean": round(float(f1.mean()), 4), "macro_f1_std": round(float(f1.std()), 4),
        "accuracy_mean": round(float(np.mean([r["accuracy"] for r in reports])), 4),
        "per_class_f1": {c: round(float(np.mean([r["per_class"][c]["f1"] for r in reports])), 4)
                         for c in class_names},
        "fold_macro_f1": [round(float(v), 4) for v in f1],
        "confusion_matrix": np.sum([r["confusion_matrix"] for r in reports], axis=0).tolist(),
    }


def label_count_curve(samples: Sequence[Sample], class_names: Sequence[str],
                      backbones: Mapping[str, Callable[[], Any]], sizes: Sequence[str], settings: CurveSettings,
                      skipped: Skipped) -> list[dict[str, Any]]:
    """k-fold CV for every init and label count, on the same folds and the same subsets.

    Args:
        samples: labelled samples (`group` = patient, kept on one side of every split).
        class_names: the classes in output order; every sample's label is one of them.
        backbones: init name -> a function that builds that init's headless backbone (called once per init), or
            a (backbone, head_weights) pair whose head weights start the classifier's head layers of those names
            (see `ResettableClassifier`).
        sizes: label counts, fractions or "all" (see `parse_train_samples`), taken from each fold's training part.
        settings: how each fold trains.
        skipped: receives unreadable images.

    Returns:
        One row per (init, label count): init, train_samples, train_images, macro_f1_mean / _std over folds,
        accuracy_mean, per_class_f1, fold_macro_f1, confusion_matrix (summed over folds).
    """
    from keras_medimg.datasets.splits import kfold
    from keras_medimg.training.distribute import per_replica_batch, strategy_scope, worker

    folds = kfold(list(samples), settings.folds, seed=settings.seed)
    counts = parse_train_samples(sizes, min(len(train) for train, _ in folds))
    if worker().count > 1 and min(count for _, count in counts) < settings.batch_size:
        raise ConfigError(f"finetune.train_samples: {min(count for _, count in counts)} training images do not fill "
                          f"one global batch of {settings.batch_size}, which the {worker().count} workers share. "
                          "Use larger label counts or a smaller finetune.batch_size.")
    rows = []
    # Every init's classifier is built (and a pretrained one loaded) in the scope, so its variables are mirrored.
    with strategy_scope(settings.distribution) as strategy:
        per_replica_batch(settings.batch_size, strategy)  # ConfigError when the global batch does not divide
        for init_name, make_backbone in backbones.items():
            rows += _init_rows(init_name, make_backbone, samples, class_names, folds, counts, settings, skipped)
    return rows


def _init_rows(init_name: str, make_backbone: Callable[[], Any], samples: Sequence[Sample],
               class_names: Sequence[str], folds: list, counts: list[tuple[str, int]], settings: CurveSettings,
               skipped: Skipped) -> list[dict[str, Any]]:
    """The curve's rows of one init: every label count, k-fold."""
    from keras_medimg.training.trainer import balanced_class_weight, epochs_end_with_the_data, set_seed

    # Every init from the same random state: reproducible, and inits differ by their weights only (without it
    # the head's start depended on whatever ran before in the process, and a CI order failed the separable set).
    set_seed(settings.seed)
    start = make_backbone()
    backbone, head_weights = start if isinstance(start, tuple) else (start, None)
    trainer = ResettableClassifier(backbone, len(class_names), settings, head_weights)
    rows = []
    for size_name, count in counts:
        reports = []
        for k, (train, val) in enumerate(folds):
            subset = subsample(train, count, seed=settings.seed * 1000 + k)
            trainer.reset()
            started = time.time()
            weights = None
            if settings.class_weight == "balanced":
                weights = balanced_class_weight([class_names.index(s.label) for s in subset], len(class_names))
            data = _fold_data(subset, class_names, settings, skipped=skipped, seed=settings.seed + k)
            with epochs_end_with_the_data():
                trainer.model.fit(data, epochs=settings.epochs, verbose=settings.verbose, shuffle=False,
                                  class_weight=weights)
            reports.append(_evaluate_fold(trainer.classifier, val, class_names, settings, skipped))
            log.info("%s, %s labels (%d), fold %d: macro F1 %.3f (%.0f s).", init_name, size_name, len(subset),
                     k + 1, reports[-1]["macro"]["f1"], time.time() - started)
        rows.append(_summary_row(init_name, size_name, count, reports, class_names))
    return rows


def compare_at_smallest(rows: Sequence[Mapping[str, Any]], reference: str, *, label: str | None = None) -> str:
    """At the curve's smallest label count: the `reference` init against every other init, one line each, saying
    whether its macro F1 is higher by more than the fold std (the larger of the two rows' std). "" when the
    reference has no row there."""
    if not rows:
        return ""
    smallest = min(r["train_images"] for r in rows)
    at = {r["init"]: r for r in rows if r["train_images"] == smallest}
    if reference not in at:
        return ""
    ref, name = at[reference], label or reference
    lines = []
    for init, r in at.items():
        if init == reference:
            continue
        gap = ref["macro_f1_mean"] - r["macro_f1_mean"]
        std = max(ref["macro_f1_std"], r["macro_f1_std"])
        lines.append(f"At {smallest} labels, {name} init {'beats' if gap > std else 'does not beat'} {init} init by "
                     f"more than the fold std: {ref['macro_f1_mean']:.3f} vs {r['macro_f1_mean']:.3f} "
                     f"(gap {gap:+.3f}, std {std:.3f}).")
    return "\n".join(lines)


def write_curve(run: Any, rows: Sequence[Mapping[str, Any]], class_names: Sequence[str], title: str) -> str:
    """label_curve.csv / .md / plot and one summed confusion matrix per row into `run`; returns the Markdown table."""
    from keras_medimg.reporting import markdown_table, plot_confusion_matrix, write_comparison

    table_rows = [{**{k: v for k, v in r.items() if not isinstance(v, (dict, list))},
                   "macro_f1": f"{r['macro_f1_mean']:.3f} ± {r['macro_f1_std']:.3f}",
                   **{f"f1 {c}": r["per_class_f1"][c] for c in class_names}} for r in rows]
    columns = ["init", "train_samples", "train_images", "macro_f1", "macro_f1_mean", "macro_f1_std",
               "accuracy_mean", *[f"f1 {c}" for c in class_names]]
    write_comparison(run, "label_curve", table_rows, columns=columns, metric="macro_f1_mean", label="train_samples",
                     group="init", error="macro_f1_std", title=f"{title}: average F1 by label count (k-fold)",
                     ylabel="macro F1")
    for r in rows:
        plot_confusion_matrix(r["confusion_matrix"], class_names,
                              run.path("plots", f"confusion_{r['init']}_{r['train_samples']}.png"),
                              title=f"{r['init']}, {r['train_samples']} labels (all folds)")
    return markdown_table(table_rows, ["init", "train_samples", "train_images", "macro_f1",
                                       *[f"f1 {c}" for c in class_names]])
