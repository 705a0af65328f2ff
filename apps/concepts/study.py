"""The paper's runs beside ours: Model1 / Model2 heads, fixed and tuned thresholds, and the Table 5 comparison.

    targets     Model2 learns the MultiLabelBinarizer matrix with one sigmoid per concept; our reading of Model1
                is a softmax over the concepts whose target spreads an image's k concepts evenly (1/k each)
    thresholds  tuned on the validation split by primary F1, taken from an earlier run (`thresholds.from_run`),
                or, when the validation split was trained on, the first fixed threshold
    run table   one row per threshold setting (the paper's fixed 0.3 and 0.5, runs 422 / 425, and ours), plus the
                paper's own Table 5 rows for reference: run, data, threshold, F1, secondary F1
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keras_medimg.apps.concepts.config import ConceptsConfig
from keras_medimg.apps.concepts.detector import APP, CONCEPTS_FILE, ConceptModel
from keras_medimg.errors import ConfigError
from keras_medimg.metrics import imageclef as scoring
from keras_medimg.metrics.thresholds import select, tune_thresholds
from keras_medimg.reporting import markdown_table

log = logging.getLogger("keras_medimg.concepts")

RUN_COLUMNS = ["run", "data", "threshold", "F1", "secondary F1", "concepts per image"]
PAPER_DATA = "ImageCLEF 2024 test (paper)"
#: Table 5 of the paper (SSNMLRGKSR at ImageCLEFmedical 2024): submitted run, approach, threshold, scores.
PAPER_RUNS: tuple[dict[str, Any], ...] = (
    {"run": "paper run 421: Model1", "data": PAPER_DATA, "threshold": "not stated", "F1": 0.546, "secondary F1": 0.796},
    {"run": "paper run 422: Model2", "data": PAPER_DATA, "threshold": 0.3, "F1": 0.600, "secondary F1": 0.905},
    {"run": "paper run 425: Model2", "data": PAPER_DATA, "threshold": 0.5, "F1": 0.600, "secondary F1": 0.905},
)


def model_name(cfg: ConceptsConfig) -> str:
    """The paper's name of the method `labels.head` trains: Model1 (softmax) or Model2 (MultiLabelBinarizer + sigmoid)."""
    return "Model1" if cfg.labels.head == "softmax" else "Model2"


def check_head(cfg: ConceptsConfig) -> None:
    """A softmax head needs a categorical loss; fail before any work when the config pairs it with a binary one."""
    if cfg.labels.head == "softmax" and cfg.train.loss == "binary_crossentropy":
        raise ConfigError("labels.head=softmax (Model1) learns one distribution over the concepts, which "
                          "train.loss=binary_crossentropy does not fit. Set train.loss=crossentropy (or focal).")


def fine_tune_freeze(cfg: ConceptsConfig) -> str:
    """The freeze policy of the fine-tuning phase: `model.freeze` with pretrained weights; with random weights
    nothing is frozen (frozen random layers would only pass random features on), and the log says so."""
    if cfg.model.weights is not None:
        return cfg.model.freeze
    if cfg.model.freeze != "none":
        log.warning(f"Random weights (model.weights: null): model.freeze '{cfg.model.freeze}' is not applied, "
                    f"every layer trains. Pass pretrained weights (--weights imagenet or a local file) to freeze.")
    return "none"


def spread_targets(dataset: Any) -> Any:
    """Multi-hot label rows -> distributions: each of an image's k concepts gets 1/k (Model1's softmax targets).

    An image none of whose concepts is in the vocabulary keeps a row of zeros (it adds no loss).
    """
    import tensorflow as tf

    def spread(images, labels, *weights):
        total = tf.reduce_sum(labels, axis=-1, keepdims=True)
        return (images, labels / tf.maximum(total, 1.0), *weights)

    return dataset.map(spread, num_parallel_calls=tf.data.AUTOTUNE)


@dataclass
class SavedThresholds:
    """The thresholds a train run saves, how they were found, and the search table (empty when not tuned)."""

    thresholds: np.ndarray
    source: str  # "tuned on <split>", "from <run>", "fixed"
    global_threshold: float
    table: list[dict[str, Any]]


def choose_thresholds(cfg: ConceptsConfig, probabilities: np.ndarray, truth: Sequence[Sequence[str]],
                      concepts: list[str]) -> SavedThresholds:
    """The thresholds to save: from `thresholds.from_run`, else tuned on the validation split when it was held
    out, else (train + valid) the first of `thresholds.fixed` (tuning on images trained on would be optimistic).
    """
    t = cfg.thresholds
    if t.from_run:
        return _from_run(t.from_run, concepts)
    if cfg.data.train_with_valid:
        if not t.fixed:
            raise ConfigError("data.train_with_valid=true leaves no held-out split to tune the thresholds on, and "
                              "thresholds.fixed is empty. Give thresholds.from_run (a train run without "
                              "train_with_valid) or a fixed threshold, e.g. --set thresholds.fixed=[0.5].")
        log.warning(f"The validation split is part of the training data, so the thresholds are not tuned on it: "
                    f"saving the fixed threshold {t.fixed[0]:g} (thresholds.fixed[0]). Pass thresholds.from_run "
                    f"to reuse the thresholds a train-only run tuned.")
        return SavedThresholds(np.full(len(concepts), float(t.fixed[0])), "fixed", float(t.fixed[0]), [])
    thresholds, best, rows = tune_thresholds(probabilities, truth, concepts, candidates=t.candidates,
                                             per_concept=t.per_concept, per_concept_min_support=t.per_concept_min_support,
                                             top1=t.top1)  # fmt: skip
    return SavedThresholds(thresholds, f"tuned on {cfg.data.valid_split}", best, rows)


def _from_run(folder: str, concepts: list[str]) -> SavedThresholds:
    """Per-concept thresholds of an earlier train run; a concept it did not have gets its most common threshold."""
    from keras_medimg.runs import open_trained

    model_path = open_trained(folder, APP, ConceptsConfig, lone_model=True).model_path
    record_file = model_path.parent / CONCEPTS_FILE
    if not record_file.is_file():
        raise ConfigError(f"thresholds.from_run={folder}: {record_file} is missing. Give a `medimg concepts train` run folder.")
    record = json.loads(record_file.read_text(encoding="utf-8"))
    earlier = dict(zip(record["concepts"], record["thresholds"]))
    common = Counter(record["thresholds"]).most_common(1)[0][0]
    missing = sum(c not in earlier for c in concepts)
    if missing:
        log.info(f"{missing} of {len(concepts)} concepts have no threshold in {folder}: they get its most common one, {common:g}.")
    thresholds = np.array([float(earlier.get(c, common)) for c in concepts])
    return SavedThresholds(thresholds, f"from {folder}", float(common), [])


def run_rows(cfg: ConceptsConfig, detector: ConceptModel, probabilities: np.ndarray, ids: Sequence[str],
             truth: Mapping[str, Sequence[str]], manual: Mapping[str, Sequence[str]] | None,
             saved: SavedThresholds, *, held_out: bool) -> list[dict[str, Any]]:
    """The run table: one row per fixed threshold and one for the saved thresholds, then the paper's rows.

    Args:
        cfg: the config (`thresholds.fixed`, `top1`, `max_concepts`, `data.edition`).
        detector: the trained detector (concepts, saved thresholds).
        probabilities: (N, C) probabilities of the validation images `ids`.
        truth, manual: their ground truth and manual ground truth (secondary F1).
        saved: the thresholds the run saves.
        held_out: the validation images were not trained on.
    """
    name = model_name(cfg)
    data = cfg.data.valid_split if held_out else f"{cfg.data.valid_split} (trained on: optimistic)"
    settings: list[tuple[str, Any, np.ndarray | float]] = [
        (f"{name} (threshold={t:g})", float(t), float(t)) for t in cfg.thresholds.fixed
    ]
    if len(set(np.round(saved.thresholds, 6))) > 1:
        shown: Any = "per concept"
    else:
        shown = float(round(saved.thresholds[0], 6)) if len(saved.thresholds) else saved.global_threshold
    text = shown if isinstance(shown, str) else f"{shown:g}"
    settings.append((f"{name} ({saved.source}, threshold={text})", shown, saved.thresholds))
    rows = []
    for label, shown_threshold, thresholds in settings:
        chosen = select(probabilities, thresholds, top1=cfg.thresholds.top1, max_concepts=cfg.thresholds.max_concepts)
        predictions = {i: [detector.concepts[c] for c in indices] for i, indices in zip(ids, chosen)}
        scores = scoring.score(truth, predictions, manual_truth=manual, edition=cfg.data.edition)
        rows.append({"run": label, "data": data, "threshold": shown_threshold, "F1": scores.primary_f1,
                     "secondary F1": scores.secondary_f1,
                     "concepts per image": float(np.mean([len(c) for c in chosen])) if chosen else 0.0})
    return rows + [dict(row) for row in PAPER_RUNS]


def format_runs(rows: Sequence[Mapping[str, Any]]) -> str:
    """The run table as Markdown text (what `train` prints and saves as runs.md)."""
    return markdown_table(rows, RUN_COLUMNS).rstrip()


def write_runs(run: Any, rows: Sequence[Mapping[str, Any]]) -> Path:
    """runs.csv and runs.md in the run folder, with a bar chart of F1 (plots/runs.png); returns runs.csv."""
    from keras_medimg.reporting import write_comparison

    return write_comparison(run, "runs", rows, columns=RUN_COLUMNS, metric="F1", label="run",
                            title="Primary F1 per run", ylabel="primary F1")["csv"]
