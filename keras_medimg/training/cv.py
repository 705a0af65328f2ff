"""k-fold cross-validation: a fresh model per fold, each fold in its own run folder, mean and std of the metrics.

Every fold trains with `trainer.fit_plan`, so a fold is trained exactly as a single run is: same precision, same
head-then-fine-tune phases, same class weights.

    <run>/fold_0/ ... fold_<k-1>/   a full training run folder each (results.csv, weights/, metrics.json)
    <run>/metrics.json              per-fold metrics, their mean and sample standard deviation
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_medimg.config import TrainConfig
from keras_medimg.datasets.records import Sample
from keras_medimg.runs import Run
from keras_medimg.training.trainer import fit_plan, set_seed

Folds = list[tuple[list[Sample], list[Sample]]]


@dataclass
class CVResult:
    """The outcome of `cross_validate`.

    Args:
        folds: per fold: {"fold", "train_size", "val_size", "best_epoch", "metrics"}.
        mean: metric -> mean over folds (nested metrics flattened to dotted names, e.g. "macro.f1").
        std: metric -> sample standard deviation over folds (ddof=1; 0 for one fold).
        metrics_path: the run's metrics.json.
    """

    folds: list[dict[str, Any]]
    mean: dict[str, float]
    std: dict[str, float]
    metrics_path: Path


def _default_split(samples: Sequence[Sample], k: int, seed: int) -> Folds:
    from keras_medimg.datasets.splits import kfold

    return kfold(samples, k, seed=seed)


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a (nested) metrics dict under dotted names; lists and text are left out."""
    flat: dict[str, float] = {}
    for name, value in metrics.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, f"{key}."))
        elif isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            flat[key] = float(value)
    return flat


def summarize(fold_metrics: Sequence[Mapping[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample std (ddof=1) of every numeric metric that all folds report."""
    flats = [flatten_metrics(m) for m in fold_metrics]
    names = [n for n in flats[0] if all(n in f for f in flats)] if flats else []
    mean = {n: float(np.mean([f[n] for f in flats])) for n in names}
    std = {n: float(np.std([f[n] for f in flats], ddof=1)) if len(flats) > 1 else 0.0 for n in names}
    return mean, std


def cross_validate(
    samples: Sequence[Sample],
    build_model: Callable[[], keras.Model],
    make_datasets: Callable[[list[Sample], list[Sample]], tuple[Any, Any]],
    *,
    k: int,
    config: TrainConfig,
    run: Run,
    evaluate: Callable[[keras.Model, list[Sample]], Mapping[str, Any]],
    seed: int = 0,
    split: Callable[[Sequence[Sample], int, int], Folds] | None = None,
    resume: bool = False,
    weights: str | Path | None = None,
    freeze: str = "none",
    class_names: Sequence[str] | None = None,
    multilabel: bool | None = None,
) -> CVResult:
    """Train and evaluate one fresh model per fold and write per-fold and summary metrics.

    Args:
        samples: every labelled sample of the study.
        build_model: returns a new, uncompiled model (called once per fold by `trainer.fit_plan`, after clearing
            the Keras session).
        make_datasets: (train samples, val samples) -> (train dataset, val dataset) for `trainer.fit_plan`.
        k: number of folds.
        config: the training section, used for every fold.
        run: the cross-validation run folder; fold i trains in `fold_<i>/`.
        evaluate: (trained model, val samples) -> metrics dict (nested dicts allowed, e.g. a classification
            report); the model is as the last phase left it (best weights restored when early stopping is on).
        seed: seeds the split and, as seed + i, fold i's weights and shuffling.
        split: (samples, k, seed) -> k (train, val) pairs; default `datasets.splits.kfold` (stratified,
            patient-grouped).
        resume: folds whose metrics.json exists are not trained again; an interrupted fold resumes.
        weights: the backbone weights `build_model` uses (`model.weights`); with weights and `config.head_epochs`,
            every fold trains the head first, then fine-tunes (see `trainer.fit_plan`).
        freeze: the freeze policy of the fine-tuning phase (`model.freeze`).
        class_names: the classes in head order; each fold's `Sample.label`s become the class indices that
            `config.class_weight: balanced` counts. Needed only for balanced class weights.
        multilabel: sigmoid head with multi-hot labels; None infers it from the model's last layer.

    Returns:
        CVResult.
    """
    folds = (split or _default_split)(samples, k, seed)
    results: list[dict[str, Any]] = []
    for i, (train, val) in enumerate(folds):
        fold_run = Run(dir=run.subdir(f"fold_{i}"), app=run.app, mode=run.mode)
        done = fold_run.dir / "metrics.json"
        if resume and done.is_file():
            results.append(json.loads(done.read_text(encoding="utf-8")))
            continue
        # Each fold starts from a clean graph and its own seed, so folds are independent and reproducible.
        keras.backend.clear_session()
        set_seed(seed + i)
        train_ds, val_ds = make_datasets(list(train), list(val))
        plan = fit_plan(build_model, train_ds, val_ds, config=config, run=fold_run, weights=weights, freeze=freeze,
                        labels=_class_indices(train, class_names), multilabel=multilabel, resume=resume)
        record = {
            "fold": i,
            "train_size": len(train),
            "val_size": len(val),
            "best_epoch": plan.best_epoch,
            "phases": plan.phases,
            "metrics": dict(evaluate(plan.model, list(val))),
        }
        fold_run.write_json("metrics.json", record)
        results.append(record)

    mean, std = summarize([r["metrics"] for r in results])
    metrics_path = run.write_json("metrics.json", {"k": k, "seed": seed, "folds": results, "mean": mean, "std": std})
    return CVResult(folds=results, mean=mean, std=std, metrics_path=metrics_path)


def _class_indices(samples: Sequence[Sample], class_names: Sequence[str] | None) -> np.ndarray | None:
    """Class index of every sample's label, for balanced class weights; None without a class list."""
    if class_names is None:
        return None
    from keras_medimg.datasets.pipeline import encode_labels

    return encode_labels(samples, "int", class_names)
