"""ImageCLEFmedical concept detection as plain functions: train, predict, evaluate, export.

    train     train/valid splits -> MultiLabelBinarizer over the training CUIs -> DenseNet-121 + Dense(512) + sigmoid
              -> (head phase on a frozen backbone, pretrained weights only) -> fine-tuning -> thresholds tuned on
              valid by primary F1 -> weights/best.keras + weights/concepts.json
    predict   images -> probabilities -> thresholds (+ top-1) -> submission.csv (official format) + predictions.csv
    evaluate  submission + ground truth -> validation as the official evaluator -> primary / secondary F1,
              per-concept table, micro / macro F1
    export    best.keras -> SavedModel + ONNX + metadata.json (concepts, names, thresholds in output order)

Keras is imported inside the functions that need it, so `evaluate` runs without it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from keras_medimg.apps.concepts.config import ConceptsConfig, ThresholdConfig
from keras_medimg.datasets.imageclef import concepts_csv_text, list_images, read_cui_mapping, read_imageclef
from keras_medimg.datasets.records import Sample
from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.metrics import imageclef as scoring
from keras_medimg.runs import Run, RunResult, atomic_write_text, create_run, write_json

log = logging.getLogger("keras_medimg.concepts")

APP = "concepts"
CONCEPTS_FILE = "concepts.json"
SKIPPED_FIELDS = ["path", "reason"]
PREDICTION_FIELDS = ["ID", "CUI", "name", "probability"]
CHUNK = 512  # images decoded and predicted at a time by the fallback path, so memory stays flat


def _say(message: str) -> None:
    """Progress lines go to the log and to the terminal."""
    log.info(message)
    print(message, flush=True)


# === Data ===


def demo_data(out_dir: str | Path | None, cfg: ConceptsConfig) -> Path:
    """Make (or reuse) the synthetic concept set in the ImageCLEF layout.

    Args:
        out_dir: where to write it; None uses the shared demo-data cache.
        cfg: sizes come from `cfg.data.demo_*` and the seed from `cfg.seed`.

    Returns:
        The dataset folder (cui_mapping.csv, {train,valid,test}_concepts[_manual].csv, {split}/ images).
    """
    from keras_medimg.datasets.synthetic.concepts import generate_concepts

    params = {
        "n_train": cfg.data.demo_n_train,
        "n_valid": cfg.data.demo_n_valid,
        "n_test": cfg.data.demo_n_test,
        "size": cfg.data.demo_size,
        "seed": cfg.seed,
    }
    if out_dir is None:
        from keras_medimg.datasets.synthetic import ensure_demo_data

        return Path(ensure_demo_data("concepts", generate_concepts, **params))
    return generate_concepts(Path(out_dir), **params)


def data_root(cfg: ConceptsConfig) -> Path:
    """The dataset folder: `data.root`, or the demo set (made on first use)."""
    if cfg.data.root:
        root = Path(cfg.data.root)
        if not root.is_dir():
            raise InvalidInputError(
                root, "The dataset folder does not exist. Pass the folder holding cui_mapping.csv with --data, "
                "or leave --data out to use the demo data."
            )
        return root
    _say("No --data given: using the built-in synthetic ImageCLEF concept set.")
    return demo_data(None, cfg)


def concept_vocabulary(samples: Sequence[Sample], min_count: int) -> list[str]:
    """The model's outputs: the training CUIs seen on at least `min_count` images, in MultiLabelBinarizer order.

    Args:
        samples: the training samples.
        min_count: the smallest number of training images a kept concept appears on.
    """
    from sklearn.preprocessing import MultiLabelBinarizer

    binarizer = MultiLabelBinarizer().fit([s.labels for s in samples])
    counts = binarizer.transform([s.labels for s in samples]).sum(axis=0)
    concepts = [str(c) for c, n in zip(binarizer.classes_, counts) if n >= min_count]
    if not concepts:
        raise ConfigError(
            f"No training concept appears on at least labels.min_count={min_count} images. Lower labels.min_count."
        )
    return concepts


def _truth(samples: Sequence[Sample]) -> dict[str, list[str]]:
    return {s.id: list(s.labels) for s in samples}


def _manual_truth(samples: Sequence[Sample]) -> dict[str, list[str]] | None:
    manual = {s.id: list(s.meta.get("manual", [])) for s in samples}
    return manual if any(manual.values()) else None


# === Thresholds: probabilities -> concepts ===


def select(
    probabilities: np.ndarray, thresholds: np.ndarray | float, *, top1: bool = True, max_concepts: int = 100
) -> list[np.ndarray]:
    """The concept indices of each image, most probable first.

    Args:
        probabilities: (N, C) sigmoid outputs.
        thresholds: one threshold, or one per concept (C,).
        top1: an image with no concept above its threshold gets its most probable concept.
        max_concepts: keep at most this many concepts per image (the most probable ones).

    Returns:
        N arrays of concept indices.
    """
    chosen = []
    for row in probabilities:
        order = np.argsort(-row, kind="stable")
        above = order[row[order] >= (thresholds if np.ndim(thresholds) == 0 else np.asarray(thresholds)[order])]
        if len(above) == 0 and top1:
            above = order[:1]
        chosen.append(above[:max_concepts])
    return chosen


class _ThresholdSearch:
    """Primary F1 of many threshold settings on one validation set, from per-image counts (vectorised).

    Per image: `n_true` true CUIs (all of them, also those the model has no output for), and for the current
    thresholds the raw counts of predicted concepts and of true ones among them; with top-1, an image with no
    prediction gets its most probable concept. F1 = 2 tp / (n_true + n_predicted), averaged over images with truth.
    """

    def __init__(self, probabilities: np.ndarray, truth: Sequence[Sequence[str]], concepts: Sequence[str], top1: bool):
        index = {cui: i for i, cui in enumerate(concepts)}
        self.probabilities = probabilities
        self.hits = np.zeros(probabilities.shape, bool)
        for row, cuis in enumerate(truth):
            for cui in set(cuis):
                if cui in index:
                    self.hits[row, index[cui]] = True
        self.n_true = np.array([len(set(cuis)) for cuis in truth])
        self.top_hit = self.hits[np.arange(len(truth)), probabilities.argmax(axis=1)] if len(truth) else np.zeros(0, bool)
        self.top1 = top1
        self.counted = self.n_true > 0

    def counts(self, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        predicted = self.probabilities >= thresholds
        return (predicted & self.hits).sum(axis=1), predicted.sum(axis=1)

    def f1(self, tp: np.ndarray, n_predicted: np.ndarray) -> float:
        if self.top1:
            empty = n_predicted == 0
            tp = np.where(empty, self.top_hit, tp)
            n_predicted = np.where(empty, 1, n_predicted)
        if not self.counted.any():
            return float("nan")
        return float(np.mean(2.0 * tp[self.counted] / (self.n_true + n_predicted)[self.counted]))

    def tune_concept(
        self, c: int, thresholds: np.ndarray, candidates: Sequence[float], tp: np.ndarray, n_predicted: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """The best threshold of concept `c` with the others fixed, and the per-image counts it gives.

        Only column `c` changes, so the counts are updated rather than recomputed: O(N) per candidate.
        """
        old = self.probabilities[:, c] >= thresholds[c]
        base_tp = tp - (old & self.hits[:, c])
        base_n = n_predicted - old
        best = (float(thresholds[c]), self.f1(tp, n_predicted), tp, n_predicted)
        for t in candidates:
            new = self.probabilities[:, c] >= t
            new_tp, new_n = base_tp + (new & self.hits[:, c]), base_n + new
            score = self.f1(new_tp, new_n)
            if score > best[1] + 1e-12:
                best = (float(t), score, new_tp, new_n)
        return best[0], best[2], best[3]


def tune_thresholds(
    probabilities: np.ndarray, truth: Sequence[Sequence[str]], concepts: Sequence[str], settings: ThresholdConfig
) -> tuple[np.ndarray, float, list[dict[str, Any]]]:
    """Choose thresholds on a validation set by the primary F1.

    Every global candidate is scored; the best one is kept (on ties, the one closest to 0.5). With `settings.per_concept`,
    each concept on at least `per_concept_min_support` validation images then gets the candidate that maximises
    the primary F1 with the other thresholds fixed (one pass, most frequent concept first).

    Args:
        probabilities: (N, C) validation probabilities.
        truth: the N images' true CUIs.
        concepts: the C output concepts.
        settings: candidates, per-concept tuning, top-1 (`max_concepts` is left out of the search: it only
            matters for images with more than that many concepts above threshold).

    Returns:
        (C,) thresholds, the best global threshold, and the table rows (`threshold`, `primary_f1`,
        `concepts_per_image`), the last row being the per-concept result when tuned.
    """
    if not settings.candidates:
        raise ConfigError("thresholds.candidates is empty. Give at least one threshold, e.g. [0.3, 0.5].")
    search = _ThresholdSearch(probabilities, truth, concepts, settings.top1)
    rows = []
    for t in settings.candidates:
        tp, n_predicted = search.counts(np.full(len(concepts), t))
        shown = np.where(n_predicted == 0, int(settings.top1), n_predicted)
        rows.append({"threshold": float(t), "primary_f1": search.f1(tp, n_predicted), "concepts_per_image": float(shown.mean())})
    best = max(rows, key=lambda row: (np.nan_to_num(row["primary_f1"], nan=-1.0), -abs(row["threshold"] - 0.5)))
    thresholds = np.full(len(concepts), best["threshold"], dtype=np.float64)
    if settings.per_concept:
        support = search.hits.sum(axis=0)
        tp, n_predicted = search.counts(thresholds)
        for c in np.argsort(-support, kind="stable"):
            if support[c] < settings.per_concept_min_support:
                break
            thresholds[c], tp, n_predicted = search.tune_concept(c, thresholds, settings.candidates, tp, n_predicted)
        shown = np.where(n_predicted == 0, int(settings.top1), n_predicted)
        rows.append({"threshold": "per-concept", "primary_f1": search.f1(tp, n_predicted), "concepts_per_image": float(shown.mean())})
    return thresholds, best["threshold"], rows


# === The trained model and its concept file ===


@dataclass
class ConceptModel:
    """A trained concept detector: the Keras model plus what turns its outputs into CUIs.

    Args:
        model: the Keras model, (N, S, S, 3) images in -> (N, C) sigmoid probabilities out.
        concepts: the C CUIs in output order (the MultiLabelBinarizer's classes).
        thresholds: (C,) thresholds.
        names: CUI -> canonical name.
        image_size: S.
        normalization: the backbone's input normalisation (dict of `Normalization`).
        top1: always predict the most probable concept.
        max_concepts: the most concepts per image.
        backbone: the registry backbone name.
    """

    model: Any
    concepts: list[str]
    thresholds: np.ndarray
    names: dict[str, str]
    image_size: int
    normalization: dict[str, Any]
    top1: bool = True
    max_concepts: int = 100
    backbone: str = ""

    def record(self) -> dict[str, Any]:
        """The concept file's content (and export metadata)."""
        return {
            "concepts": self.concepts,
            "names": {cui: self.names.get(cui, "") for cui in self.concepts},
            "thresholds": [float(t) for t in self.thresholds],
            "top1": self.top1,
            "max_concepts": self.max_concepts,
            "image_size": self.image_size,
            "channels": 3,
            "normalization": self.normalization,
            "backbone": self.backbone,
        }

    def probabilities(self, samples: Sequence[Sample], *, batch_size: int, skipped: list[dict[str, str]], strict: bool) -> tuple[np.ndarray, list[Sample]]:
        """(N, C) probabilities of the readable samples, in their order, and those samples.

        One tf.data pipeline streams into the model, so decoding overlaps inference. Files that fail its up-front
        check are left out (and listed in `skipped`); if a file that passed the check still fails to decode,
        the outputs no longer line up with the samples, and the images are predicted again chunk by chunk with
        each image's position carried along.
        """
        from keras_medimg.datasets.pipeline import make_dataset

        before = len(skipped)
        dataset = make_dataset(
            samples, image_size=self.image_size, training=False, batch_size=batch_size, channels=3,
            normalization=self._normalization(), label_mode=None, skipped=skipped, strict=strict,
        )  # fmt: skip
        bad = {entry["path"] for entry in skipped[before:]}
        kept = [s for s in samples if str(s.path) not in bad]
        outputs = np.asarray(self.model.predict(dataset, verbose=0))
        if len(outputs) == len(kept):
            return outputs, kept
        del skipped[before:]
        return self._probabilities_by_chunk(samples, batch_size=batch_size, skipped=skipped, strict=strict)

    def _normalization(self):
        from keras_medimg.preprocessing.normalize import Normalization

        return Normalization.from_dict(self.normalization)

    def _probabilities_by_chunk(self, samples: Sequence[Sample], *, batch_size: int, skipped: list[dict[str, str]], strict: bool) -> tuple[np.ndarray, list[Sample]]:
        from keras_medimg.datasets.pipeline import load_images_numpy

        outputs, kept = [], []
        for start in range(0, len(samples), CHUNK):
            images, chunk_kept = load_images_numpy(
                samples[start : start + CHUNK], image_size=self.image_size, channels=3, normalization=self._normalization(),
                batch_size=batch_size, skipped=skipped, strict=strict,
            )  # fmt: skip
            if chunk_kept:
                outputs.append(np.asarray(self.model.predict(images, batch_size=batch_size, verbose=0)))
                kept += chunk_kept
        listed = {entry["path"] for entry in skipped}
        kept_paths = {str(s.path) for s in kept}
        skipped += [{"path": str(s.path), "reason": "The image could not be decoded."} for s in samples
                    if str(s.path) not in kept_paths and str(s.path) not in listed]  # fmt: skip
        if not kept:
            return np.zeros((0, len(self.concepts)), np.float32), []
        return np.concatenate(outputs), kept

    def predict_cuis(self, probabilities: np.ndarray) -> list[list[tuple[str, float]]]:
        """(CUI, probability) of each image, most probable first."""
        chosen = select(probabilities, self.thresholds, top1=self.top1, max_concepts=self.max_concepts)
        return [[(self.concepts[c], float(row[c])) for c in indices] for row, indices in zip(probabilities, chosen)]


def save_concepts(path: Path, detector: ConceptModel) -> Path:
    """Write the concept file (concept list, thresholds, names, input settings) beside the weights."""
    return write_json(path, detector.record())


def _model_file(weights: str | Path | None) -> Path:
    if weights is None:
        raise ConfigError("No trained model given. Pass a `medimg concepts train` run folder (or its .keras file) with --weights.")
    path = Path(weights)
    if path.is_dir():
        for candidate in (path / "weights" / "best.keras", path / "weights" / "last.keras", path / "best.keras"):
            if candidate.is_file():
                return candidate
        raise InvalidInputError(path, "The folder holds no trained model (weights/best.keras). Pass a finished `medimg concepts train` run.")
    if path.suffix != ".keras" or not path.is_file():
        raise InvalidInputError(path, "The weights must be a `concepts train` run folder or an existing .keras file.")
    return path


def load_detector(weights: str | Path | None) -> ConceptModel:
    """Load a trained detector from a train run folder or a .keras file with concepts.json beside it.

    Args:
        weights: the run folder (uses weights/best.keras) or a .keras file.

    Raises:
        InvalidInputError: no model, or no concepts.json beside it.
    """
    from keras_medimg.models.classifier import load_model

    model_path = _model_file(weights)
    concepts_file = model_path.parent / CONCEPTS_FILE
    if not concepts_file.is_file():
        raise InvalidInputError(
            concepts_file, f"The concept list of {model_path.name} is missing. Keep concepts.json (written by `medimg concepts train`) beside the model."
        )
    import json

    record = json.loads(concepts_file.read_text(encoding="utf-8"))
    model = load_model(model_path)
    outputs = int(model.outputs[0].shape[-1])
    if outputs != len(record["concepts"]):
        raise InvalidInputError(concepts_file, f"It lists {len(record['concepts'])} concepts but {model_path.name} has {outputs} outputs. Use the files of one run.")
    return ConceptModel(
        model=model,
        concepts=list(record["concepts"]),
        thresholds=np.asarray(record["thresholds"], np.float64),
        names=dict(record.get("names", {})),
        image_size=int(record["image_size"]),
        normalization=dict(record["normalization"]),
        top1=bool(record.get("top1", True)),
        max_concepts=int(record.get("max_concepts", scoring.MAX_CONCEPTS)),
        backbone=str(record.get("backbone", "")),
    )


# === train ===


def _datasets(cfg: ConceptsConfig, train: Sequence[Sample], valid: Sequence[Sample], concepts: list[str], skipped: list[dict[str, str]]):
    from keras_medimg.datasets.pipeline import make_dataset

    common = {
        "image_size": cfg.model.image_size, "batch_size": cfg.train.batch_size, "channels": 3,
        "normalization": _normalization(cfg.model.backbone), "label_mode": "multi_hot", "class_names": concepts,
        "cache": cfg.data.cache, "seed": cfg.seed, "skipped": skipped, "strict": cfg.strict,
    }  # fmt: skip
    return make_dataset(train, training=True, augment=cfg.augment, **common), make_dataset(valid, training=False, **common)


def _normalization(backbone: str):
    from keras_medimg.models.backbones import get_spec

    return get_spec(backbone).input_normalization(3)


def _fit_phases(cfg: ConceptsConfig, model: Any, train_ds: Any, valid_ds: Any, run: Run, *,
                resume: bool = False) -> list[dict[str, Any]]:
    """The study's two phases (head on a frozen backbone at head_learning_rate, then fine-tuning from the
    freeze policy at learning_rate); with random weights one phase trains the whole network."""
    from keras_medimg.models.classifier import apply_freeze, finetune_phases
    from keras_medimg.training.trainer import fit

    m, t = cfg.model, cfg.train
    if m.weights is None:
        if t.head_epochs:
            _say(
                f"Random weights (model.weights: null): skipping the {t.head_epochs} frozen-backbone head epochs, which "
                f"would fit a head on random features, and training the whole network for {t.epochs} epochs at "
                f"learning rate {t.learning_rate:g}."
            )
        phases = finetune_phases(None, 0, t.epochs, "none")
    else:
        phases = finetune_phases(m.weights, min(t.head_epochs, t.epochs), t.epochs, m.freeze)
    done = []
    next_epoch = 0
    for phase in phases:
        rate = t.head_learning_rate if phase.name == "head" else t.learning_rate
        apply_freeze(model, phase.freeze)
        phase_cfg = replace(t, epochs=phase.epochs - phase.initial_epoch, learning_rate=rate)
        _say(f"[{phase.name}] {phase_cfg.epochs} epochs, freeze '{phase.freeze}', learning rate {rate:g}, schedule {t.schedule}")
        result = fit(model, train_ds, valid_ds, config=phase_cfg, run=run, initial_epoch=next_epoch, phase_name=phase.name, multilabel=True, resume=resume)
        next_epoch = result.next_epoch
        done.append({"phase": phase.name, "freeze": phase.freeze, "learning_rate": rate, "epochs_run": result.epochs_run,
                     "best_epoch": result.best_epoch, "best_value": result.best_value, "stopped_early": result.stopped_early})  # fmt: skip
    return done


def _threshold_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [f"{'threshold':>11}  {'primary F1':>10}  {'concepts/image':>14}"]
    for row in rows:
        threshold = row["threshold"] if isinstance(row["threshold"], str) else f"{row['threshold']:.2f}"
        lines.append(f"{threshold:>11}  {row['primary_f1']:>10.4f}  {row['concepts_per_image']:>14.2f}")
    return "\n".join(lines)


def train(cfg: ConceptsConfig, *, run: Run | None = None, resume: bool = False) -> RunResult:
    """Train a concept detector, tune its thresholds on the validation split and score it there.

    Args:
        cfg: the resolved config.
        run: the run folder (default: a new runs/concepts/train[N]).
        resume: continue `run` from its last completed epoch (finished phases are skipped).

    Returns:
        RunResult with metrics.json's content and the threshold table.
    """
    from keras_medimg.models.classifier import build_classifier, load_model, model_summary_dict
    from keras_medimg.training.trainer import set_seed

    run = run or create_run(APP, "train")
    run.save_config(cfg)
    started = time.perf_counter()
    root = data_root(cfg)
    train_samples = read_imageclef(root, cfg.data.train_split)
    valid_samples = read_imageclef(root, cfg.data.valid_split)
    names = read_cui_mapping(root / "cui_mapping.csv")
    concepts = concept_vocabulary(train_samples, cfg.labels.min_count)
    _say(f"{len(train_samples)} training and {len(valid_samples)} validation images; {len(concepts)} concepts "
         f"(seen on at least {cfg.labels.min_count} training image(s)).")  # fmt: skip

    set_seed(cfg.seed)
    skipped: list[dict[str, str]] = []
    train_ds, valid_ds = _datasets(cfg, train_samples, valid_samples, concepts, skipped)
    m = cfg.model
    model = build_classifier(
        m.backbone, len(concepts), input_shape=(m.image_size, m.image_size, 3), multilabel=True, weights=m.weights,
        pooling=m.pooling, hidden_units=m.hidden_units, dropout=m.dropout,
    )  # fmt: skip
    _say(f"{m.backbone} at {m.image_size}x{m.image_size}, weights {m.weights}, head Dense({m.hidden_units}) -> {len(concepts)} sigmoid outputs")
    phases = _fit_phases(cfg, model, train_ds, valid_ds, run, resume=resume)
    train_seconds = time.perf_counter() - started

    best_path = run.dir / "weights" / "best.keras"
    model = load_model(best_path if best_path.is_file() else run.dir / "weights" / "last.keras")
    detector = ConceptModel(
        model, concepts, np.full(len(concepts), 0.5), names, m.image_size,
        _normalization(m.backbone).to_dict(), cfg.thresholds.top1, cfg.thresholds.max_concepts, m.backbone,
    )  # fmt: skip
    probabilities, kept = detector.probabilities(valid_samples, batch_size=cfg.predict.batch_size, skipped=skipped, strict=cfg.strict)
    detector.thresholds, global_threshold, threshold_rows = tune_thresholds(probabilities, [s.labels for s in kept], concepts, cfg.thresholds)
    save_concepts(run.path("weights", CONCEPTS_FILE), detector)
    run.write_csv("thresholds.csv", threshold_rows, ["threshold", "primary_f1", "concepts_per_image"])

    predictions = {s.id: [cui for cui, _ in cuis] for s, cuis in zip(kept, detector.predict_cuis(probabilities))}
    valid_truth = _truth(valid_samples)
    scores = scoring.score(valid_truth, predictions, manual_truth=_manual_truth(valid_samples), names=names)
    baseline, k = scoring.best_frequency_baseline(_truth(train_samples), valid_truth)
    run.write_csv("concepts_valid.csv", scores.table)
    metrics = {
        "data": str(root),
        "backend": _backend(),
        "concepts": len(concepts),
        "model": model_summary_dict(model),
        "phases": phases,
        "thresholds": {"global": global_threshold, "per_concept": cfg.thresholds.per_concept, "table": threshold_rows},
        "valid": scores.summary(),
        "baseline": {"primary_f1": baseline, "k": k, "what": "the k most frequent training concepts for every image, best k on valid"},
        "train_seconds": train_seconds,
        "seconds": time.perf_counter() - started,
    }
    run.write_json("metrics.json", metrics)
    run.write_csv("skipped.csv", skipped, SKIPPED_FIELDS)
    _plot_curves(run)
    summary = (
        f"{_threshold_table(threshold_rows)}\n\nValidation ({scores.images} images): primary F1 {scores.primary_f1:.4f}, "
        f"secondary F1 {scores.secondary_f1:.4f}; baseline (top-{k} most frequent concepts) primary F1 {baseline:.4f}"
    )
    return RunResult(run, metrics, summary)


def _backend() -> str:
    from keras_medimg.backend import current_backend

    return current_backend()


def _plot_curves(run: Run) -> None:
    from keras_medimg.reporting import plot_training_curves

    results = run.dir / "results.csv"
    if results.is_file():
        plot_training_curves(results, run.path("plots", "training_curves.png"))


# === predict ===


def predict(cfg: ConceptsConfig, *, run: Run | None = None) -> RunResult:
    """Predict the concepts of a folder (or CSV) of images and write the official run file.

    Writes `submission.csv` (one row per image, `ID,CUIs`, IDs without extension, CUIs joined by `;`, most
    probable first; an unreadable image gets an empty row and a line in skipped.csv) and `predictions.csv`
    (ID, CUI, canonical name, probability).

    Args:
        cfg: `cfg.predict.weights` (run folder or .keras) and `cfg.predict.images` (folder or CSV); without
            images, the test split of the demo data.
        run: the run folder (default: a new runs/concepts/predict[N]).
    """
    run = run or create_run(APP, "predict")
    run.save_config(cfg)
    started = time.perf_counter()
    detector = load_detector(cfg.predict.weights)
    source = Path(cfg.predict.images) if cfg.predict.images else _default_images(cfg)
    samples = list_images(source)
    loaded = time.perf_counter()
    skipped: list[dict[str, str]] = []
    kept, found = predict_samples(detector, samples, run, batch_size=cfg.predict.batch_size, skipped=skipped, strict=cfg.strict)
    finished = time.perf_counter()
    metrics = {
        "images": len(samples),
        "predicted": len(kept),
        "skipped": len(samples) - len(kept),
        "concepts_per_image": float(np.mean([len(found.get(s.id, [])) for s in samples])),
        "source": str(source),
        "weights": str(cfg.predict.weights),
        "load_seconds": loaded - started,
        "predict_seconds": finished - loaded,
        "images_per_second": len(samples) / max(finished - loaded, 1e-9),
        "submission": str(run.dir / "submission.csv"),
    }
    run.write_json("metrics.json", metrics)
    return RunResult(run, metrics)


def predict_samples(
    detector: ConceptModel, samples: Sequence[Sample], run: Run, *, batch_size: int, skipped: list[dict[str, str]], strict: bool
) -> tuple[list[Sample], dict[str, list[tuple[str, float]]]]:
    """Read, preprocess and predict `samples`, then write submission.csv, predictions.csv and skipped.csv.

    Returns:
        The samples that could be read, and ID -> (CUI, probability) pairs, most probable first.
    """
    probabilities, kept = detector.probabilities(samples, batch_size=batch_size, skipped=skipped, strict=strict)
    found = dict(zip((s.id for s in kept), detector.predict_cuis(probabilities)))
    rows = [(s.id, [cui for cui, _ in found.get(s.id, [])]) for s in samples]
    atomic_write_text(run.path("submission.csv"), concepts_csv_text(rows))
    run.write_csv(
        "predictions.csv",
        ({"ID": s.id, "CUI": cui, "name": detector.names.get(cui, ""), "probability": f"{p:.6f}"} for s in samples for cui, p in found.get(s.id, [])),
        PREDICTION_FIELDS,
    )
    run.write_csv("skipped.csv", skipped, SKIPPED_FIELDS)
    return kept, found


def _default_images(cfg: ConceptsConfig) -> Path:
    root = data_root(cfg)
    source = root / "test"
    if not source.is_dir():
        raise ConfigError(f"No --images given and {root} has no test/ folder. Pass a folder or CSV of images with --images.")
    _say(f"No --images given: predicting the test split of {root}.")
    return source


# === evaluate ===


def _find_truth(path: Path) -> Path:
    """A concepts CSV, or the one in a split folder: `concepts.csv` inside it, `<split>_concepts.csv` beside it."""
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path / "concepts.csv", path.parent / f"{path.name}_concepts.csv"):
            if candidate.is_file():
                return candidate
        found = sorted(path.glob("*_concepts.csv"))
        if len(found) == 1:
            return found[0]
    raise InvalidInputError(
        path, "No ground-truth concepts file found here. Pass a concepts CSV (ID,CUIs), or a split folder holding "
        "concepts.csv, with --truth."
    )


def _truth_files(cfg: ConceptsConfig) -> tuple[Path, Path | None, Path | None]:
    """The concepts file, the manual concepts file and the mapping to score against."""
    e = cfg.evaluate
    if e.truth is None:
        truth = data_root(cfg) / "test_concepts.csv"
        _say(f"No --truth given: scoring against {truth}.")
    else:
        truth = _find_truth(Path(e.truth))
    manual = Path(e.manual) if e.manual else truth.with_name(truth.stem + "_manual.csv")
    if e.manual is None and not manual.is_file():
        manual = None
    if e.mapping:
        mapping: Path | None = Path(e.mapping)
    else:
        mapping = next((p for p in (truth.with_name("cui_mapping.csv"), truth.parent.parent / "cui_mapping.csv") if p.is_file()), None)
    return truth, manual, mapping


def concept_table_text(table: Sequence[Mapping[str, Any]], limit: int = 15) -> str:
    """The per-concept table as text, most frequent concepts first."""
    lines = [f"{'CUI':<9} {'name':<30} {'support':>7} {'precision':>9} {'recall':>7} {'F1':>6}"]
    for row in table[:limit]:
        lines.append(f"{row['cui']:<9} {row['name'][:30]:<30} {row['support']:>7} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>6.3f}")
    if len(table) > limit:
        lines.append(f"... {len(table) - limit} more in concepts.csv")
    return "\n".join(lines)


def evaluate(cfg: ConceptsConfig, *, run: Run | None = None) -> RunResult:
    """Validate a submission as the official evaluator does and compute its scores.

    Args:
        cfg: `cfg.evaluate.submission`, `.truth` (CSV or split folder; default: the demo test split), `.manual`
            and `.mapping` (default: beside the truth file).
        run: the run folder (default: a new runs/concepts/evaluate[N]).
    """
    if cfg.evaluate.submission is None:
        raise ConfigError("No submission given. Pass the run file to score with --submission (e.g. runs/concepts/predict/submission.csv).")
    run = run or create_run(APP, "evaluate")
    run.save_config(cfg)
    truth_file, manual_file, mapping_file = _truth_files(cfg)
    truth = scoring.read_truth(truth_file)
    manual = scoring.read_truth(manual_file) if manual_file is not None else None
    names = read_cui_mapping(mapping_file) if mapping_file is not None else {}
    predictions = scoring.read_submission(cfg.evaluate.submission, truth)
    scores = scoring.score(truth, predictions, manual_truth=manual, names=names)
    baseline, k = scoring.best_frequency_baseline(truth, truth)
    run.write_csv("concepts.csv", scores.table, ["cui", "name", "support", "predicted", "tp", "fp", "fn", "precision", "recall", "f1"])
    metrics = {
        **scores.summary(),
        "submission": str(cfg.evaluate.submission),
        "truth": str(truth_file),
        "manual": str(manual_file) if manual_file else None,
        "baseline": {"primary_f1": baseline, "k": k, "what": "the k most frequent ground-truth concepts for every image, best k (optimistic)"},
    }
    run.write_json("metrics.json", metrics)
    return RunResult(run, metrics, concept_table_text(scores.table))


# === export ===


def export(cfg: ConceptsConfig, *, run: Run | None = None) -> RunResult:
    """Export a trained detector as SavedModel / ONNX with the concepts and thresholds in metadata.json.

    Args:
        cfg: `cfg.predict.weights` (run folder or .keras) and `cfg.export` (formats, atol).
        run: the run folder (default: a new runs/concepts/export[N]); files go to its export/ folder.
    """
    from keras_medimg.export import export_model

    run = run or create_run(APP, "export")
    run.save_config(cfg)
    detector = load_detector(cfg.predict.weights)
    size = detector.image_size
    sample = np.random.default_rng(cfg.seed).uniform(0, 1, (2, size, size, 3)).astype("float32")
    result = export_model(
        detector.model, run.subdir("export"), formats=cfg.export.formats, atol=cfg.export.atol, sample_input=sample,
        metadata={"app": APP, "task": "ImageCLEFmedical concept detection", "output_order": "one sigmoid probability per concept, in the order of 'concepts'",
                  **detector.record()},
    )  # fmt: skip
    metrics = {
        "files": {fmt: str(path) for fmt, path in result.paths.items()},
        "metadata": str(result.metadata_path),
        "max_abs_diff": result.max_abs_diff,
        "concepts": len(detector.concepts),
    }
    run.write_json("metrics.json", metrics)
    return RunResult(run, metrics)
