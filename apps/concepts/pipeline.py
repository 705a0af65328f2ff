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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keras_medimg.apps.concepts.config import ConceptsConfig
from keras_medimg.datasets.imageclef import concepts_csv_text, read_cui_mapping, read_imageclef, truth_by_id
from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.metrics import imageclef as scoring
from keras_medimg.metrics.thresholds import format_threshold_table, select, tune_thresholds
from keras_medimg.runs import Run, RunPlace, RunResult, atomic_write_text, finish_run, open_trained, start_run, write_json

log = logging.getLogger("keras_medimg.concepts")

APP = "concepts"
CONCEPTS_FILE = "concepts.json"
PREDICTION_FIELDS = ["ID", "CUI", "name", "probability"]


# === Data ===


def demo_data(out_dir: str | Path | None, cfg: ConceptsConfig) -> Path:
    """Make (or reuse, when `out_dir` is None) the synthetic concept set in the ImageCLEF layout.

    Sizes come from `cfg.data.demo_*` and the seed from `cfg.seed`; returns the dataset folder (cui_mapping.csv,
    {train,valid,test}_concepts[_manual].csv, {split}/ images).
    """
    from keras_medimg.datasets.synthetic import demo_data as make_demo
    from keras_medimg.datasets.synthetic.concepts import generate_concepts

    d = cfg.data
    return make_demo("concepts", generate_concepts, out_dir, n_train=d.demo_n_train, n_valid=d.demo_n_valid,
                     n_test=d.demo_n_test, size=d.demo_size, seed=cfg.seed)


def data_root(cfg: ConceptsConfig) -> Path:
    """The dataset folder: `data.root`, or the demo set (made on first use)."""
    from keras_medimg.datasets.synthetic import dataset_root

    return dataset_root(cfg.data.root, lambda: demo_data(None, cfg), holds="cui_mapping.csv",
                        what="synthetic ImageCLEF concept")


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

    def probabilities(self, samples: Sequence[Sample], *, batch_size: int, skipped: Skipped, strict: bool) -> tuple[np.ndarray, list[Sample]]:
        """(N, C) probabilities of the readable samples, in their order, and those samples (one streamed pass)."""
        from keras_medimg.datasets.pipeline import predict_samples
        from keras_medimg.preprocessing.normalize import Normalization

        return predict_samples(
            self.model, samples, image_size=self.image_size, channels=3, batch_size=batch_size,
            normalization=Normalization.from_dict(self.normalization), skipped=skipped, strict=strict,
        )  # fmt: skip

    def predict_cuis(self, probabilities: np.ndarray) -> list[list[tuple[str, float]]]:
        """(CUI, probability) of each image, most probable first."""
        chosen = select(probabilities, self.thresholds, top1=self.top1, max_concepts=self.max_concepts)
        return [[(self.concepts[c], float(row[c])) for c in indices] for row, indices in zip(probabilities, chosen)]


def save_concepts(path: Path, detector: ConceptModel) -> Path:
    """Write the concept file (concept list, thresholds, names, input settings) beside the weights."""
    return write_json(path, detector.record())


def load_detector(weights: str | Path | None) -> ConceptModel:
    """Load a trained detector from a train run folder, or a .keras file with concepts.json beside it.

    Raises:
        InvalidInputError: no model, or no concepts.json beside it, or one that does not match the model.
    """
    import json

    from keras_medimg.models.classifier import load_model

    model_path = open_trained(weights, APP, ConceptsConfig, lone_model=True).model_path
    concepts_file = model_path.parent / CONCEPTS_FILE
    if not concepts_file.is_file():
        raise InvalidInputError(
            concepts_file, f"The concept list of {model_path.name} is missing. Keep concepts.json (written by `medimg concepts train`) beside the model."
        )
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


def _datasets(cfg: ConceptsConfig, train: Sequence[Sample], valid: Sequence[Sample], concepts: list[str], skipped: Skipped):
    from keras_medimg.datasets.pipeline import make_dataset

    common = {
        "image_size": cfg.model.image_size, "batch_size": cfg.train.batch_size, "channels": 3,
        "normalization": _normalization(cfg.model.backbone), "label_mode": "multi_hot", "class_names": concepts,
        "cache": cfg.data.cache, "seed": cfg.seed, "skipped": skipped, "strict": cfg.strict,
    }  # fmt: skip
    return make_dataset(train, training=True, augment=cfg.augment, **common), make_dataset(valid, training=False, **common)


def _normalization(backbone: str):
    from keras_medimg.training.image_classifier import backbone_normalization

    return backbone_normalization(backbone)


def train(cfg: ConceptsConfig, *, run: Run | RunPlace | None = None, resume: bool = False) -> RunResult:
    """Train a concept detector, tune its thresholds on the validation split and score it there.

    The study's two phases (head on a frozen backbone at head_learning_rate, then fine-tuning from the freeze
    policy) run in `training.trainer.fit_plan`; with random weights one phase trains the whole network.

    Args:
        cfg: the resolved config.
        run: where the run folder goes (default: a new runs/concepts/train[N]), or the run to resume.
        resume: continue `run` from its last completed epoch (finished phases are skipped).

    Returns:
        RunResult with metrics.json's content and the threshold table.
    """
    from keras_medimg.backend import current_backend
    from keras_medimg.models.classifier import model_summary_dict
    from keras_medimg.reporting import plot_training_curves
    from keras_medimg.training.image_classifier import fit_image_classifier
    from keras_medimg.training.trainer import set_seed

    scoring.secondary_cuis(cfg.data.edition)  # an unknown edition fails before any work
    root = data_root(cfg)
    train_samples = read_imageclef(root, cfg.data.train_split)
    valid_samples = read_imageclef(root, cfg.data.valid_split)
    names = read_cui_mapping(root / "cui_mapping.csv")
    concepts = concept_vocabulary(train_samples, cfg.labels.min_count)
    run = start_run(APP, "train", cfg, run)
    started = time.perf_counter()
    log.info(f"{len(train_samples)} training and {len(valid_samples)} validation images; {len(concepts)} concepts "
             f"(seen on at least {cfg.labels.min_count} training image(s)).")  # fmt: skip

    set_seed(cfg.seed)
    skipped = Skipped()
    train_ds, valid_ds = _datasets(cfg, train_samples, valid_samples, concepts, skipped)
    m = cfg.model
    model, plan = fit_image_classifier(m, cfg.train, train_ds, valid_ds, num_classes=len(concepts), run=run,
                                       multilabel=True, freeze=m.freeze if m.weights is not None else "none",
                                       resume=resume, train_samples=len(train_samples))
    train_seconds = time.perf_counter() - started
    detector = ConceptModel(
        model, concepts, np.full(len(concepts), 0.5), names, m.image_size,
        _normalization(m.backbone).to_dict(), cfg.thresholds.top1, cfg.thresholds.max_concepts, m.backbone,
    )  # fmt: skip
    probabilities, kept = detector.probabilities(valid_samples, batch_size=cfg.predict.batch_size, skipped=skipped, strict=cfg.strict)
    t = cfg.thresholds
    detector.thresholds, global_threshold, threshold_rows = tune_thresholds(
        probabilities, [s.labels for s in kept], concepts, candidates=t.candidates, per_concept=t.per_concept,
        per_concept_min_support=t.per_concept_min_support, top1=t.top1,
    )  # fmt: skip
    save_concepts(run.path("weights", CONCEPTS_FILE), detector)
    run.write_csv("thresholds.csv", threshold_rows, ["threshold", "primary_f1", "concepts_per_image"])

    predictions = {s.id: [cui for cui, _ in cuis] for s, cuis in zip(kept, detector.predict_cuis(probabilities))}
    valid_truth = truth_by_id(valid_samples)
    scores = scoring.score(valid_truth, predictions, manual_truth=truth_by_id(valid_samples, manual=True), names=names, edition=cfg.data.edition)
    baseline, k = scoring.best_frequency_baseline(truth_by_id(train_samples), valid_truth)
    run.write_csv("concepts_valid.csv", scores.table)
    metrics = {
        "data": str(root),
        "backend": current_backend(),
        "concepts": len(concepts),
        "model": model_summary_dict(model),
        "phases": plan.phases,
        "precision": plan.precision,
        "thresholds": {"global": global_threshold, "per_concept": t.per_concept, "table": threshold_rows},
        "valid": scores.summary(),
        "baseline": {"primary_f1": baseline, "k": k, "what": "the k most frequent training concepts for every image, best k on valid"},
        "train_seconds": train_seconds,
        "seconds": time.perf_counter() - started,
    }
    plot_training_curves(run)
    summary = (
        f"{format_threshold_table(threshold_rows)}\n\nValidation ({scores.images} images): primary F1 {scores.primary_f1:.4f}, "
        f"secondary F1 {scores.secondary_f1:.4f}; baseline (top-{k} most frequent concepts) primary F1 {baseline:.4f}"
    )
    return finish_run(run, metrics, skipped, summary)


# === predict ===


def predict(cfg: ConceptsConfig, *, run: Run | RunPlace | None = None) -> RunResult:
    """Predict the concepts of a folder (or CSV) of images and write the official run file.

    Writes `submission.csv` (one row per image, `ID,CUIs`, IDs without extension, CUIs joined by `;`, most
    probable first; an unreadable image gets an empty row and a line in skipped.csv) and `predictions.csv`
    (ID, CUI, canonical name, probability). An ID listed twice in a CSV is predicted once (the official
    evaluator rejects a run file with a repeated ID) and its repeat is listed in skipped.csv.

    Args:
        cfg: `cfg.predict.weights` (run folder or .keras) and `cfg.predict.images` (folder or CSV); without
            images, the test split of the demo data.
        run: where the run folder goes (default: a new runs/concepts/predict[N]).
    """
    from keras_medimg.datasets.imageclef import unique_ids
    from keras_medimg.datasets.sources import list_images

    started = time.perf_counter()
    detector = load_detector(cfg.predict.weights)
    source = Path(cfg.predict.images) if cfg.predict.images else _default_images(cfg)
    skipped = Skipped()
    samples = unique_ids(list_images(source, exclude=[_output_root(run)], skipped=skipped), skipped)
    run = start_run(APP, "predict", cfg, run)
    loaded = time.perf_counter()
    probabilities, kept = detector.probabilities(samples, batch_size=cfg.predict.batch_size, skipped=skipped, strict=cfg.strict)
    found = dict(zip((s.id for s in kept), detector.predict_cuis(probabilities)))
    atomic_write_text(run.path("submission.csv"), concepts_csv_text([(s.id, [cui for cui, _ in found.get(s.id, [])]) for s in samples]))
    run.write_csv(
        "predictions.csv",
        ({"ID": s.id, "CUI": cui, "name": detector.names.get(cui, ""), "probability": f"{p:.6f}"} for s in samples for cui, p in found.get(s.id, [])),
        PREDICTION_FIELDS,
    )  # fmt: skip
    finished = time.perf_counter()
    metrics = {
        "images": len(samples),
        "predicted": len(kept),
        "skipped": len(samples) - len(kept),
        "concepts_per_image": float(np.mean([len(found.get(s.id, [])) for s in samples])) if samples else 0.0,
        "source": str(source),
        "weights": str(cfg.predict.weights),
        "load_seconds": loaded - started,
        "predict_seconds": finished - loaded,
        "images_per_second": len(samples) / max(finished - loaded, 1e-9),
        "submission": str(run.dir / "submission.csv"),
    }
    return finish_run(run, metrics, skipped)


def _output_root(run: Run | RunPlace | None) -> Path:
    """Where this command writes: never read as input, even when it lies inside the source folder."""
    if isinstance(run, Run):
        return run.dir
    return Path(run.project) if run is not None and run.project is not None else Path("runs")


def _default_images(cfg: ConceptsConfig) -> Path:
    root = data_root(cfg)
    source = root / "test"
    if not source.is_dir():
        raise ConfigError(f"No --images given and {root} has no test/ folder. Pass a folder or CSV of images with --images.")
    log.info(f"No --images given: predicting the test split of {root}.")
    return source


# === evaluate ===


def _truth_files(cfg: ConceptsConfig) -> tuple[Path, Path | None, Path | None]:
    """The concepts file, the manual concepts file and the mapping to score against."""
    from keras_medimg.datasets.imageclef import find_truth_files

    e = cfg.evaluate
    if e.truth is None:
        log.info(f"No --truth given: scoring against {data_root(cfg) / 'test_concepts.csv'}.")
    return find_truth_files(e.truth or data_root(cfg) / "test_concepts.csv", manual=e.manual, mapping=e.mapping)


def evaluate(cfg: ConceptsConfig, *, run: Run | RunPlace | None = None) -> RunResult:
    """Validate a submission as the official evaluator does and compute its scores.

    Args:
        cfg: `cfg.evaluate.submission`, `.truth` (CSV or split folder; default: the demo test split), `.manual`
            and `.mapping` (default: beside the truth file).
        run: the run folder (default: a new runs/concepts/evaluate[N]).
    """
    if cfg.evaluate.submission is None:
        raise ConfigError("No submission given. Pass the run file to score with --submission (e.g. runs/concepts/predict/submission.csv).")
    truth_file, manual_file, mapping_file = _truth_files(cfg)
    truth = scoring.read_truth(truth_file)
    manual = scoring.read_truth(manual_file) if manual_file is not None else None
    names = read_cui_mapping(mapping_file) if mapping_file is not None else {}
    predictions = scoring.read_submission(cfg.evaluate.submission, truth)
    scores = scoring.score(truth, predictions, manual_truth=manual, names=names, edition=cfg.data.edition)
    run = start_run(APP, "evaluate", cfg, run)
    baseline, k = scoring.best_frequency_baseline(truth, truth)
    run.write_csv("concepts.csv", scores.table, ["cui", "name", "support", "predicted", "tp", "fp", "fn", "precision", "recall", "f1"])
    metrics = {
        **scores.summary(),
        "submission": str(cfg.evaluate.submission),
        "truth": str(truth_file),
        "manual": str(manual_file) if manual_file else None,
        "baseline": {"primary_f1": baseline, "k": k, "what": "the k most frequent ground-truth concepts for every image, best k (optimistic)"},
    }
    return finish_run(run, metrics, None, scoring.format_concept_table(scores.table))


# === export ===


def export(cfg: ConceptsConfig, *, run: Run | RunPlace | None = None) -> RunResult:
    """Export a trained detector as SavedModel / ONNX with the concepts and thresholds in metadata.json.

    Args:
        cfg: `cfg.predict.weights` (run folder or .keras) and `cfg.export` (formats, atol).
        run: the run folder (default: a new runs/concepts/export[N]); files go to its export/ folder.
    """
    from keras_medimg.export import export_model

    detector = load_detector(cfg.predict.weights)
    run = start_run(APP, "export", cfg, run)
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
    return finish_run(run, metrics)
