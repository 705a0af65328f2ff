"""ImageCLEFmedical concept detection as plain functions: train, predict, evaluate, export.

    train     train/valid splits (or both together: data.train_with_valid) -> MultiLabelBinarizer over the
              training CUIs -> DenseNet-121 + Dense(512) + sigmoid (Model2) or softmax over spread targets
              (Model1) -> (head phase on a frozen backbone, pretrained weights only) -> fine-tuning -> thresholds
              tuned on valid by primary F1 -> weights/best.keras + weights/concepts.json; the run table (fixed
              thresholds 0.3 / 0.5 as in the paper's runs 422 / 425, ours, the paper's Table 5) in runs.csv
    predict   images -> probabilities -> thresholds (saved, or --threshold) (+ top-1) -> submission.csv (official
              format) + predictions.csv (+ one Grad-CAM overlay per predicted concept with predict.gradcam)
    evaluate  submission + ground truth -> validation as the official evaluator -> primary / secondary F1,
              per-concept table, micro / macro F1
    export    best.keras -> SavedModel + ONNX + metadata.json (concepts, names, thresholds in output order)

Keras is imported inside the functions that need it, so `evaluate` runs without it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from keras_medimg.apps.concepts import study
from keras_medimg.apps.concepts.config import ConceptsConfig
from keras_medimg.apps.concepts.detector import (  # noqa: F401 - re-exported: the detector API of this app
    APP, CONCEPTS_FILE, ConceptModel, load_detector, normalization, save_concepts,
)
from keras_medimg.datasets.imageclef import concepts_csv_text, read_cui_mapping, read_imageclef, truth_by_id
from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.errors import ConfigError
from keras_medimg.metrics import imageclef as scoring
from keras_medimg.metrics.thresholds import format_threshold_table
from keras_medimg.runs import Run, RunPlace, RunResult, atomic_write_text, finish_run, output_root, start_run

log = logging.getLogger("keras_medimg.concepts")

PREDICTION_FIELDS = ["ID", "CUI", "name", "probability", "gradcam"]


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


# === train ===


def _datasets(cfg: ConceptsConfig, train: Sequence[Sample], valid: Sequence[Sample] | None, concepts: list[str], skipped: Skipped):
    """The training dataset and the validation one (None when it is trained on); Model1's targets spread 1/k."""
    from keras_medimg.datasets.pipeline import make_dataset

    common = {
        "image_size": cfg.model.image_size, "batch_size": cfg.train.batch_size, "channels": 3,
        "normalization": normalization(cfg.model.backbone), "label_mode": "multi_hot", "class_names": concepts,
        "cache": cfg.data.cache, "seed": cfg.seed, "skipped": skipped, "strict": cfg.strict,
    }  # fmt: skip
    train_ds = make_dataset(train, training=True, augment=cfg.augment, **common)
    valid_ds = make_dataset(valid, training=False, **common) if valid is not None else None
    if cfg.labels.head == "softmax":
        return study.spread_targets(train_ds), valid_ds and study.spread_targets(valid_ds)
    return train_ds, valid_ds


def train(cfg: ConceptsConfig, *, run: Run | RunPlace | None = None, resume: bool = False) -> RunResult:
    """Train a concept detector, choose its thresholds and score it on the validation split.

    The study's two phases (head on a frozen backbone at head_learning_rate, then fine-tuning from the freeze
    policy) run in `training.trainer.fit_plan`; with random weights one phase trains the whole network. With
    `data.train_with_valid` the validation images are trained on too (the paper's final models): nothing picks
    the best epoch, the thresholds come from `thresholds.from_run` or `thresholds.fixed[0]`, and the validation
    scores are marked optimistic. The run table (runs.csv / runs.md) scores every fixed threshold beside the saved
    ones, with the paper's Table 5 rows for reference.

    Args:
        cfg: the resolved config.
        run: where the run folder goes (default: a new runs/concepts/train[N]), or the run to resume.
        resume: continue `run` from its last completed epoch (finished phases are skipped).

    Returns:
        RunResult with metrics.json's content and the run table.
    """
    from keras_medimg.backend import current_backend
    from keras_medimg.models.classifier import model_summary_dict
    from keras_medimg.reporting import plot_training_curves
    from keras_medimg.training.image_classifier import fit_image_classifier
    from keras_medimg.training.trainer import set_seed

    scoring.secondary_cuis(cfg.data.edition)  # an unknown edition fails before any work
    study.check_head(cfg)
    root = data_root(cfg)
    train_samples = read_imageclef(root, cfg.data.train_split)
    valid_samples = read_imageclef(root, cfg.data.valid_split)
    held_out = not cfg.data.train_with_valid
    fit_samples = train_samples if held_out else [*train_samples, *valid_samples]
    names = read_cui_mapping(root / "cui_mapping.csv")
    concepts = concept_vocabulary(fit_samples, cfg.labels.min_count)
    run = start_run(APP, "train", cfg, run)
    started = time.perf_counter()
    log.info(f"{study.model_name(cfg)} ({cfg.labels.head} head): {len(fit_samples)} training images"
             f"{'' if held_out else ' (train + valid)'}, {len(valid_samples)} validation images; {len(concepts)} "
             f"concepts (seen on at least {cfg.labels.min_count} training image(s)).")  # fmt: skip

    set_seed(cfg.seed)
    skipped = Skipped()
    train_ds, valid_ds = _datasets(cfg, fit_samples, valid_samples if held_out else None, concepts, skipped)
    m = cfg.model
    model, plan = fit_image_classifier(m, cfg.train, train_ds, valid_ds, num_classes=len(concepts), run=run,
                                       multilabel=cfg.labels.head == "sigmoid",
                                       freeze=study.fine_tune_freeze(cfg),
                                       resume=resume, train_samples=len(fit_samples))
    train_seconds = time.perf_counter() - started
    detector = ConceptModel(
        model, concepts, np.full(len(concepts), 0.5), names, m.image_size,
        normalization(m.backbone).to_dict(), cfg.thresholds.top1, cfg.thresholds.max_concepts, m.backbone,
    )  # fmt: skip
    probabilities, kept = detector.probabilities(valid_samples, batch_size=cfg.predict.batch_size, skipped=skipped, strict=cfg.strict)
    saved = study.choose_thresholds(cfg, probabilities, [s.labels for s in kept], concepts)
    detector.thresholds = saved.thresholds
    save_concepts(run.path("weights", CONCEPTS_FILE), detector)
    if saved.table:
        run.write_csv("thresholds.csv", saved.table, ["threshold", "primary_f1", "concepts_per_image"])

    predictions = {s.id: [cui for cui, _ in cuis] for s, cuis in zip(kept, detector.predict_cuis(probabilities))}
    valid_truth, valid_manual = truth_by_id(valid_samples), truth_by_id(valid_samples, manual=True)
    scores = scoring.score(valid_truth, predictions, manual_truth=valid_manual, names=names, edition=cfg.data.edition)
    baseline, k = scoring.best_frequency_baseline(truth_by_id(fit_samples), valid_truth)
    run.write_csv("concepts_valid.csv", scores.table)
    rows = study.run_rows(cfg, detector, probabilities, [s.id for s in kept], valid_truth, valid_manual, saved, held_out=held_out)
    study.write_runs(run, rows)
    metrics = {
        "data": str(root),
        "backend": current_backend(),
        "method": study.model_name(cfg),
        "concepts": len(concepts),
        "model": model_summary_dict(model),
        "phases": plan.phases,
        "precision": plan.precision,
        "train_with_valid": not held_out,
        "thresholds": {"global": saved.global_threshold, "source": saved.source, "per_concept": cfg.thresholds.per_concept,
                       "table": saved.table},
        "valid": {**scores.summary(), "held_out": held_out},
        "runs": rows,
        "baseline": {"primary_f1": baseline, "k": k, "what": "the k most frequent training concepts for every image, best k on valid"},
        "train_seconds": train_seconds,
        "seconds": time.perf_counter() - started,
    }
    plot_training_curves(run)
    searched = f"{format_threshold_table(saved.table)}\n\n" if saved.table else f"Thresholds: {saved.source}.\n\n"
    summary = (
        f"{searched}Validation ({scores.images} images{'' if held_out else ', trained on: optimistic'}): primary F1 "
        f"{scores.primary_f1:.4f}, secondary F1 {scores.secondary_f1:.4f}; baseline (top-{k} most frequent concepts) "
        f"primary F1 {baseline:.4f}\n\nRuns (runs.csv):\n{study.format_runs(rows)}"
    )
    return finish_run(run, metrics, skipped, summary)


# === predict ===


def predict(cfg: ConceptsConfig, *, run: Run | RunPlace | None = None) -> RunResult:
    """Predict the concepts of a folder (or CSV) of images and write the official run file.

    Writes `submission.csv` (one row per image, `ID,CUIs`, IDs without extension, CUIs joined by `;`, most
    probable first; an unreadable image gets an empty row and a line in skipped.csv) and `predictions.csv`
    (ID, CUI, canonical name, probability, Grad-CAM file). An ID listed twice in a CSV is predicted once (the
    official evaluator rejects a run file with a repeated ID) and its repeat is listed in skipped.csv.

    Args:
        cfg: `cfg.predict.weights` (run folder or .keras) and `cfg.predict.images` (folder or CSV); without
            images, the test split of the demo data. `predict.threshold` replaces the saved thresholds;
            `predict.gradcam` writes gradcam/<ID>_<CUI>.png for every predicted concept.
        run: where the run folder goes (default: a new runs/concepts/predict[N]).
    """
    from keras_medimg.datasets.imageclef import unique_ids
    from keras_medimg.datasets.sources import list_images

    started = time.perf_counter()
    detector = load_detector(cfg.predict.weights)
    if cfg.predict.threshold is not None:
        log.info(f"predict.threshold={cfg.predict.threshold:g} replaces the saved thresholds of every concept.")
        detector.thresholds = np.full(len(detector.concepts), float(cfg.predict.threshold))
    source = Path(cfg.predict.images) if cfg.predict.images else _default_images(cfg)
    skipped = Skipped()
    samples = unique_ids(list_images(source, exclude=[output_root(run)], skipped=skipped), skipped)
    run = start_run(APP, "predict", cfg, run)
    loaded = time.perf_counter()
    probabilities, kept = detector.probabilities(samples, batch_size=cfg.predict.batch_size, skipped=skipped, strict=cfg.strict)
    found = dict(zip((s.id for s in kept), detector.predict_cuis(probabilities)))
    finished = time.perf_counter()
    cams = _gradcam(detector, kept, found, run) if cfg.predict.gradcam else {}
    atomic_write_text(run.path("submission.csv"), concepts_csv_text([(s.id, [cui for cui, _ in found.get(s.id, [])]) for s in samples]))
    run.write_csv(
        "predictions.csv",
        ({"ID": s.id, "CUI": cui, "name": detector.names.get(cui, ""), "probability": f"{p:.6f}",
          "gradcam": cams.get((s.id, cui), "")} for s in samples for cui, p in found.get(s.id, [])),
        PREDICTION_FIELDS,
    )  # fmt: skip
    metrics = {
        "images": len(samples),
        "predicted": len(kept),
        "skipped": len(samples) - len(kept),
        "concepts_per_image": float(np.mean([len(found.get(s.id, [])) for s in samples])) if samples else 0.0,
        "source": str(source),
        "weights": str(cfg.predict.weights),
        "threshold": "saved" if cfg.predict.threshold is None else cfg.predict.threshold,
        "gradcam": len(cams),
        "load_seconds": loaded - started,
        "predict_seconds": finished - loaded,
        "images_per_second": len(samples) / max(finished - loaded, 1e-9),
        "submission": str(run.dir / "submission.csv"),
    }
    return finish_run(run, metrics, skipped)


def _gradcam(detector: ConceptModel, samples: Sequence[Sample], found: dict, run: Run) -> dict[tuple[str, str], str]:
    """One Grad-CAM overlay per (image, predicted concept): gradcam/<ID>_<CUI>.png; (ID, CUI) -> file."""
    from keras_medimg.models.saliency import grad_cam_files

    index = {cui: i for i, cui in enumerate(detector.concepts)}
    norm = detector.normalization_object()
    files = {}
    for sample in samples:
        cuis = [cui for cui, _ in found.get(sample.id, [])]
        stem = sample.id.replace("/", "_")
        outs = {index[cui]: run.path("gradcam", f"{stem}_{cui}.png") for cui in cuis}
        written = grad_cam_files(detector.model, sample.path, outs, image_size=detector.image_size, normalization=norm)
        files.update({(sample.id, detector.concepts[c]): str(path) for c, path in written.items()})
    log.info(f"Grad-CAM: {len(files)} overlays (one per predicted concept) in {run.dir / 'gradcam'}.")
    return files


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
