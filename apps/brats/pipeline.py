"""The brain-tumour study as plain functions: detect (YOLOv8) -> segment (SAM) -> crop -> classify (CNN).

`train(cfg, stage)` writes one run folder:

    runs/brats/train[N]/
        config.yaml                 resolved config (rerun with --config)
        detect/train/               Ultralytics' own run (results.csv/png, PR curve, confusion matrix, val batches)
        weights/detector.pt, sam_decoder.pth, best.keras, last.keras   detector, fine-tuned SAM decoder, classifier
        crops/<split>/<class>/<id>.png   the lesion crops the classifier saw (crops_<source>/: compare_sources)
        sources/<source>/           the same classifier trained on another crop source (truth, whole)
        results.csv, plots/*.png (test_grid.png), metrics.json, predictions.csv, skipped.csv

Which crops train the classifier: the study ran its detector and SAM over the classification images and trained
the CNN on what they produced, so the default (`classify.crop_source: detector`) does the same, and `predict`
runs exactly that chain on new images. `classify.compare_sources` also trains on ground-truth crops (`truth`)
and whole images (`whole`), to show where accuracy is lost. An image where nothing is detected (which is how
`notumor` images are usually seen) is classified whole. Without SAM, GrabCut outlines the lesion in its box.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from keras_medimg.apps.brats.config import BratsConfig
from keras_medimg.apps.brats.study import weights_for
from keras_medimg.config import ModelConfig
from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.detection.lesions import LesionChain, mask_index, write_crops
from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.metrics.detection import format_detection_line
from keras_medimg.runs import (Run, RunPlace, RunResult, TrainedRun, finish_run, open_trained, output_root, start_run,
                              write_json)

log = logging.getLogger("keras_medimg.brats")

APP = "brats"
STAGES = ("detect", "segment", "classify", "all")
DETECTOR_FILE = "detector.pt"
DECODER_FILE = "sam_decoder.pth"


# === Data ===


def demo_data(out_dir: str | Path | None, cfg: BratsConfig) -> Path:
    """Make (or reuse, when `out_dir` is None) the synthetic brain set: Kaggle layout + YOLO box set + masks.

    Sizes come from `cfg.data.demo_*` and the seed from `cfg.seed`; returns the dataset root (holds Training/,
    Testing/, detection/data.yaml, masks/).
    """
    from keras_medimg.datasets.synthetic import demo_data as make_demo
    from keras_medimg.datasets.synthetic.brain import generate_brain

    return make_demo("brain", generate_brain, out_dir, n_per_class=cfg.data.demo_n_per_class, size=cfg.data.demo_size,
                     seed=cfg.seed, test_fraction=cfg.data.demo_test_fraction)


def data_root(cfg: BratsConfig) -> Path:
    """The dataset root: `data.root`, or the demo set (made on first use)."""
    from keras_medimg.datasets.synthetic import dataset_root

    return dataset_root(cfg.data.root, lambda: demo_data(None, cfg), holds="Training/ and Testing/",
                        what="synthetic brain-MRI")


def classification_samples(root: Path, split: str, classes: Sequence[str]) -> list[Sample]:
    """The Kaggle-layout images of `split`; in Training every class of data.classes needs its folder."""
    from keras_medimg.datasets.kaggle_brain import read_kaggle_brain

    return read_kaggle_brain(root, split, classes, require_all=split == "Training")


def detection_yaml(cfg: BratsConfig, root: Path) -> Path:
    """The YOLO box set's data.yaml."""
    path = Path(cfg.data.detection) if cfg.data.detection else root / "detection" / "data.yaml"
    if not path.is_file():
        raise InvalidInputError(path, "the YOLO box set's data.yaml was not found; set data.detection=PATH to it "
                                "(the detector trains on images with tumour boxes).")
    return path


# === Stages ===


def train_detect_stage(cfg: BratsConfig, run: Run, root: Path, *, resume: bool = False) -> dict[str, Any]:
    """Train YOLO on the box set; copy its best checkpoint to weights/detector.pt. `resume`: continue an unfinished
    training of this run from Ultralytics' last.pt (`detection.yolo.train_detector(resume=True)`)."""
    from keras_medimg.detection.lesions import train_lesion_detector

    d = cfg.detect
    from keras_medimg.apps.brats.stages import box_set

    return train_lesion_detector(box_set(cfg, root, run.dir), run.subdir("detect"), run.path("weights", DETECTOR_FILE),
                                 model=d.model, weights=d.weights, epochs=d.epochs, imgsz=d.imgsz, batch=d.batch,
                                 seed=cfg.seed, device=d.device, workers=d.workers, patience=d.patience,
                                 class_remap="agnostic" if d.single_class else None, plots=d.plots, resume=resume,
                                 # nbs = batch: one optimizer step per batch (Ultralytics accumulates to 64 images
                                 # otherwise: two steps an epoch on a small set, which from scratch barely learns)
                                 hyperparameters={"optimizer": d.optimizer, "lr0": d.learning_rate, "nbs": d.batch,
                                                  "warmup_epochs": d.warmup_epochs, "warmup_bias_lr": d.learning_rate,
                                                  "mosaic": d.mosaic, "close_mosaic": d.close_mosaic})


def _chain_for(cfg: BratsConfig, detector_path: Path | None, decoder: Path | None = None, *,
               announce: bool = True) -> tuple[LesionChain, dict]:
    """The lesion chain of `cfg`: its detector (if any), SAM (+ a fine-tuned decoder) or the box fallback stated in
    the returned segment record, and its crop settings."""
    from keras_medimg.detection.lesions import build_chain

    d, seg, c = cfg.detect, cfg.segment, cfg.classify
    return build_chain(detector_path, sam_model_type=seg.model_type, sam_checkpoint=seg.checkpoint,
                       sam_decoder=decoder or seg.decoder, sam_fallback=seg.fallback, announce=announce, conf=d.conf,
                       iou=d.iou, imgsz=d.imgsz, device=d.device, margin=c.margin, mask_background=c.mask_background,
                       denoise_median=cfg.data.denoise_median)


def _detector_path(cfg: BratsConfig, run: Run) -> Path | None:
    """This run's detector, else `classify.detector` (a run folder or .pt)."""
    own = run.dir / "weights" / DETECTOR_FILE
    if own.is_file():
        return own
    if cfg.classify.detector:
        given = Path(cfg.classify.detector)
        return given / "weights" / DETECTOR_FILE if given.is_dir() else given
    if cfg.classify.crop_source == "detector":
        raise ConfigError("The classify stage crops lesions with a detector, but this run has none. Run "
                          "`medimg brats train` (stage all), pass --set classify.detector=RUN_FOLDER_OR_PT, or "
                          "use --set classify.crop_source=truth to crop with ground-truth masks.")
    return None


def make_crops(cfg: BratsConfig, run: Run, root: Path, skipped: Skipped, *, source: str | None = None,
               announce: bool = True) -> tuple[dict[str, list[Sample]], dict[str, Any]]:
    """Crop the Training images (split into train/val) and the Testing images into run/crops/<split>/.

    `source` (default `classify.crop_source`): "detector" (+ SAM or its fallback), "truth" (ground-truth masks) or
    "whole" (the images uncropped); a source other than crop_source writes to run/crops_<source>/.

    Returns:
        The crop samples per split, and the segment record (SAM or the fallback) for metrics.json.
    """
    from keras_medimg.datasets.splits import train_val_test_split

    source = source or cfg.classify.crop_source
    training = classification_samples(root, "Training", cfg.data.classes)
    testing = classification_samples(root, "Testing", cfg.data.classes)
    train, val, _ = train_val_test_split(training, val=cfg.data.val_fraction, test=0.0, seed=cfg.seed)
    decoder = run.dir / "weights" / DECODER_FILE
    chain, sam_record = _chain_for(cfg, _detector_path(cfg, run) if source == "detector" else None,
                                   decoder if decoder.is_file() else None, announce=announce)
    truth = mask_index(cfg.data.masks or root / "masks") if source == "truth" else None
    names = {"truth": "ground-truth masks", "whole": "whole images (no crop)",
             "detector": "detector" + (" + SAM" if chain.sam_predictor else f" + {chain.segmenter.method}"
                                       if chain.segmenter else " boxes")}
    log.info(f"[classify] cropping {len(train)} train, {len(val)} val, {len(testing)} test images with the {names[source]}")
    crops, folder = {}, run.dir / ("crops" if source == cfg.classify.crop_source else f"crops_{source}")
    for name, samples in (("train", train), ("val", val), ("test", testing)):
        crops[name], lesions = write_crops(samples, chain, folder / name, skipped=skipped, strict=cfg.strict,
                                           truth_masks=truth, whole=source == "whole")
        found = sum(1 for lesion in lesions if lesion is not None and lesion.box is not None)
        log.info(f"[classify]   {name}: lesion found in {found}/{len(lesions)} images")
    return crops, sam_record


def _normalization(cfg: BratsConfig):
    from keras_medimg.training.image_classifier import backbone_normalization

    return backbone_normalization(cfg.model.backbone)


def uses_network(cfg: BratsConfig) -> bool:
    """Whether `network` sizes `model.backbone`: a ConvNeXtV2 or Swin entry (other CNNs keep their size)."""
    from keras_medimg.models.small import sizes_backbone

    return sizes_backbone(cfg.model.backbone, cfg.network)


def model_section(cfg: BratsConfig) -> ModelConfig:
    """`model` with `model.weights` resolved for `model.backbone` (a folder holds one file per backbone)."""
    return replace(cfg.model, weights=weights_for(cfg.model.backbone, cfg.model.weights))


def build_model(cfg: BratsConfig, num_classes: int) -> Any:
    """The classifier of `cfg`, uncompiled: `model.backbone` (at `network` when that sizes it) with the pooling /
    hidden / dropout head of `model` (`training.image_classifier.build_image_classifier`)."""
    from keras_medimg.training.image_classifier import build_image_classifier

    return build_image_classifier(model_section(cfg), num_classes, network=cfg.network)


def train_classifier(cfg: BratsConfig, run: Run, crops: dict[str, list[Sample]], skipped: Skipped, *,
                     resume: bool = False) -> Any:
    """Fit the classifier of `build_model` on the crops (head phase, then fine-tuning, as `train` says); returns
    the best model (weights/best.keras by `train.monitor`, else the last)."""
    from keras_medimg.datasets.pipeline import make_dataset
    from keras_medimg.training.image_classifier import fit_image_classifier
    from keras_medimg.training.trainer import set_seed

    set_seed(cfg.seed)
    common = {"image_size": cfg.model.image_size, "batch_size": cfg.train.batch_size, "channels": 3,
              "normalization": _normalization(cfg), "class_names": cfg.data.classes, "seed": cfg.seed,
              "denoise_median": cfg.classify.denoise_median, "skipped": skipped, "strict": cfg.strict}
    train_ds = make_dataset(crops["train"], training=True, augment=cfg.classify.augment, **common)
    val_ds = make_dataset(crops["val"], training=False, **common) if crops["val"] else None
    kept = [s for s in crops["train"] if str(s.path) not in skipped.paths()]
    log.info(f"[classify] {len(crops['train'])} training crops")
    model, _ = fit_image_classifier(model_section(cfg), cfg.train, train_ds, val_ds, num_classes=len(cfg.data.classes),
                                    run=run, labels=[cfg.data.classes.index(s.label) for s in kept], resume=resume,
                                    train_samples=len(kept), network=cfg.network)
    return model


def classify_crops(model: Any, cfg: BratsConfig, crops: Sequence[Sample], skipped: Skipped) -> tuple[np.ndarray, list[Sample]]:
    """Class probabilities (N, C) of crop files, decoded exactly as in training, in their order."""
    from keras_medimg.datasets.pipeline import predict_samples

    return predict_samples(model, crops, image_size=cfg.model.image_size, channels=3, normalization=_normalization(cfg),
                           denoise_median=cfg.classify.denoise_median, batch_size=cfg.train.batch_size,
                           skipped=skipped, strict=cfg.strict)


def evaluate_classifier(model: Any, cfg: BratsConfig, run: Run, test: Sequence[Sample],
                        skipped: Skipped) -> tuple[dict[str, Any], str]:
    """Table 4: accuracy, macro P/R/F1, per-class table, confusion matrix; writes predictions.csv and the plot."""
    from keras_medimg.reporting import write_classification_outputs

    probs, kept = classify_crops(model, cfg, test, skipped)
    classes = cfg.data.classes
    return write_classification_outputs(run, kept, [classes.index(s.label) for s in kept], probs, classes,
                                        title=f"{cfg.model.backbone} on the test crops")


def evaluate_detector(cfg: BratsConfig, detector_path: Path, root: Path, folder: Path) -> dict[str, Any]:
    """Table 3: precision, recall, F1, image accuracy and mAP50 on the box set's test split (else val).

    The study's detector finds "tumour"; the box set may name its class(es) differently, so all classes count as one.
    The chain keeps each image's top box, so that box is judged; `every_box` judges every box above detect.conf.
    """
    from keras_medimg.detection.lesions import evaluation_split
    from keras_medimg.detection.yolo import evaluate_detector as evaluate_yolo
    from keras_medimg.detection.yolo import load_detector

    from keras_medimg.apps.brats.stages import box_set

    data_yaml = box_set(cfg, root, folder)
    model = load_detector(detector_path)
    judged = [evaluate_yolo(model, data_yaml, split=evaluation_split(data_yaml), conf=cfg.detect.conf, iou=0.5,
                            nms_iou=cfg.detect.iou, imgsz=cfg.detect.imgsz, device=cfg.detect.device,
                            class_remap="agnostic", max_boxes=keep) for keep in (1, None)]
    return {**judged[0], "every_box": judged[1]}


def train(cfg: BratsConfig, stage: str = "all", *, run: Run | RunPlace | None = None, resume: bool = False) -> RunResult:
    """Train the chosen stage(s) into a new run folder, then evaluate on the test split.

    Args:
        cfg: the resolved config.
        stage: "detect", "segment", "classify" or "all" (in that order).
        run: where the run folder goes (default: a new runs/brats/train[N]), or the run to resume.
        resume: continue `run`: a finished detector (weights/detector.pt) is kept, and the classifier continues
            from its last completed epoch.

    Returns:
        RunResult with metrics.json's content and the per-class table when the classifier was trained.
    """
    if stage not in STAGES:
        raise ConfigError(f"Unknown stage '{stage}'. Choose one of {', '.join(STAGES)}.")
    from keras_medimg.apps.brats import stages
    from keras_medimg.backend import current_backend
    from keras_medimg.datasets.yolo import check_yolo_dataset
    from keras_medimg.reporting import plot_training_curves

    root = data_root(cfg)
    if stage in ("classify", "all"):  # the class folders are checked before hours of detector training
        classification_samples(root, "Training", cfg.data.classes)
    if stage in ("detect", "all"):
        check_yolo_dataset(detection_yaml(cfg, root))
    run = start_run(APP, "train", cfg, run)
    skipped = Skipped()
    metrics: dict[str, Any] = {"stage": stage, "data": str(root), "backend": current_backend()}
    started = time.perf_counter()
    table = ""
    if stage in ("detect", "all"):
        if resume and (run.dir / "weights" / DETECTOR_FILE).is_file():
            log.info(f"[detect] resuming: keeping the detector this run already trained ({DETECTOR_FILE})")
            metrics["detect"] = {"model": cfg.detect.model, "resumed": True}
        else:
            metrics["detect"] = train_detect_stage(cfg, run, root, resume=resume)
        metrics["detect"]["test"] = evaluate_detector(cfg, run.dir / "weights" / DETECTOR_FILE, root, run.dir)
        log.info("[detect] test: " + format_detection_line(metrics["detect"]["test"]))
    if stage in ("segment", "all"):
        metrics["segment"] = stages.train_segment_stage(cfg, run, root)
    if stage in ("classify", "all"):
        metrics["classify"], table = stages.classify_stage(cfg, run, root, skipped, metrics, resume)
        plot_training_curves(run)
    metrics["seconds"] = time.perf_counter() - started
    return finish_run(run, metrics, skipped, table)


# === Using a trained run ===


def _load_trained(trained: TrainedRun) -> tuple[LesionChain, Any, dict]:
    from keras_medimg.models.classifier import load_model

    chain, sam_record = _chain_for(trained.config, trained.file("weights", DETECTOR_FILE),
                                   trained.file("weights", DECODER_FILE))
    return chain, load_model(trained.model_path), sam_record


def predict(cfg: BratsConfig, *, run: Run | RunPlace | None = None) -> RunResult:
    """The whole chain on new images: class, probability, box, mask PNG, overlay PNG, predictions.csv.

    `cfg.predict.weights` is the train run; the chain is rebuilt from that run's saved config. Per-image files
    are named by the image's path relative to the source, so `a.png` and `sub/a.png` never share one.
    """
    from keras_medimg.datasets.sources import list_images
    from keras_medimg.detection.lesions import iter_crops, write_lesion_files
    from keras_medimg.models.saliency import grad_cam_file

    trained = open_trained(cfg.predict.weights, APP, BratsConfig)
    if cfg.predict.source is None:
        raise ConfigError("Nothing to predict. Pass an image or a folder of images (predict.source).")
    skipped = Skipped()
    samples = list_images(Path(cfg.predict.source), exclude=[output_root(run)], skipped=skipped)
    chain, model, sam_record = _load_trained(trained)
    run = start_run(APP, "predict", cfg, run)
    rows, started, seconds_classify = [], time.perf_counter(), 0.0
    config, classes = trained.config, trained.config.data.classes
    # Chunks keep memory flat on big folders while the classifier still sees whole batches.
    for found in iter_crops(samples, chain, run.dir / "crops", skipped=skipped, strict=cfg.strict,
                            chunk=max(1, config.train.batch_size), by_label=False):
        tick = time.perf_counter()
        probs, kept = classify_crops(model, config, [item.crop for item in found], skipped)
        seconds_classify += time.perf_counter() - tick
        by_id = {crop.id: p for crop, p in zip(kept, probs)}
        for item in (item for item in found if item.crop.id in by_id):
            p, best = by_id[item.crop.id], int(by_id[item.crop.id].argmax())
            gradcam = str(grad_cam_file(model, item.crop.path, run.path("gradcam", f"{item.crop.id}.png"),
                                        image_size=config.model.image_size, normalization=_normalization(config),
                                        denoise_median=config.classify.denoise_median)) if cfg.predict.gradcam else ""
            files = write_lesion_files(run.dir, item.sample.id, item.image, item.lesion, f"{classes[best]} {p[best]:.2f}")
            rows.append({"id": item.sample.id, "path": str(item.sample.path), "predicted": classes[best],
                         "probability": float(p[best]), **{f"p_{c}": float(v) for c, v in zip(classes, p)},
                         **files, "gradcam": gradcam})
    seconds = time.perf_counter() - started
    fields = ["id", "path", "predicted", "probability", *[f"p_{c}" for c in classes], "x1", "y1", "x2", "y2",
              "box_score", "mask", "overlay", "gradcam"]
    run.write_csv("predictions.csv", rows, fields)
    images = len(rows)
    timing = {**chain.ms_per_image(images), "classify": 1000 * seconds_classify / max(images, 1)}
    metrics = {"weights": str(trained.dir), "images": images, "skipped": len(skipped), "segment": sam_record,
               "ms_per_image": timing, "images_per_second": images / seconds if seconds else 0.0}
    return finish_run(run, metrics, skipped)


def evaluate(cfg: BratsConfig, *, run: Run | RunPlace | None = None) -> RunResult:
    """Table 3 (detector) and Table 4 (classifier through the whole chain) on the test split.

    `cfg.predict.weights` is the train run; the test data is `data.root` (or the run's own data when not given).
    """
    trained = open_trained(cfg.predict.weights, APP, BratsConfig)
    config = trained.config
    if cfg.data.root:
        config = replace(config, data=replace(config.data, root=cfg.data.root, detection=cfg.data.detection,
                                              masks=cfg.data.masks))
    root = data_root(config)
    testing = classification_samples(root, "Testing", config.data.classes)
    run = start_run(APP, "evaluate", cfg, run)
    skipped = Skipped()
    metrics: dict[str, Any] = {"weights": str(trained.dir), "data": str(root)}
    if (detector := trained.file("weights", DETECTOR_FILE)) is not None:
        metrics["detect"] = evaluate_detector(config, detector, root, run.dir)
        log.info("[detect] test: " + format_detection_line(metrics["detect"]))
    chain, model, metrics["segment"] = _load_trained(trained)
    crops, _ = write_crops(testing, chain, run.dir / "crops" / "test", skipped=skipped, strict=cfg.strict)
    report, table = evaluate_classifier(model, config, run, crops, skipped)
    metrics["classify"] = {"backbone": config.model.backbone, "test": report}
    return finish_run(run, metrics, skipped, table)


def compare(cfg: BratsConfig, *, run: Run | RunPlace | None = None) -> RunResult:
    """Train every backbone of `compare.backbones` on the same crops and split; CSV + Markdown + bar chart.

    The detector is trained once (or taken from `classify.detector`), the crops are made once, and each backbone
    gets its own sub-run folder `<run>/<backbone>/`.
    """
    from keras_medimg.models.backbones import get_spec
    from keras_medimg.reporting import markdown_table, write_comparison

    for name in cfg.compare.backbones:
        get_spec(name)  # an unknown name fails now, not after an hour of training
    root = data_root(cfg)
    run = start_run(APP, "compare", cfg, run)
    skipped = Skipped()
    metrics: dict[str, Any] = {"data": str(root), "backbones": {}}
    if cfg.classify.crop_source == "detector" and not cfg.classify.detector:
        metrics["detect"] = train_detect_stage(cfg, run, root)
    crops, metrics["segment"] = make_crops(cfg, run, root, skipped)
    rows = []
    for name in cfg.compare.backbones:
        sub_cfg = replace(cfg, model=replace(cfg.model, backbone=name))
        sub = start_run(APP, "train", sub_cfg, Run(dir=run.subdir(name), app=APP, mode="train"))
        started = time.perf_counter()
        model = train_classifier(sub_cfg, sub, crops, skipped)
        report, _ = evaluate_classifier(model, sub_cfg, sub, crops["test"], skipped)
        metrics["backbones"][name] = report
        rows.append({"backbone": name, "accuracy": report["accuracy"], "precision": report["macro"]["precision"],
                     "recall": report["macro"]["recall"], "f1": report["macro"]["f1"],
                     "seconds": round(time.perf_counter() - started, 1)})
        log.info(f"[compare] {name}: accuracy {report['accuracy']:.4f}, macro F1 {report['macro']['f1']:.4f}")
    columns = ["backbone", "accuracy", "precision", "recall", "f1", "seconds"]
    write_comparison(run, "comparison", rows, columns=columns, metric="f1", title="Macro F1 on the test crops",
                     ylabel="macro F1")
    # The paper's Table 4: model, accuracy, precision, recall, F1-score (macro), in percent.
    table4 = [{"Model": r["backbone"], **{name: f"{100 * r[key]:.2f}%" for name, key in (("Accuracy", "accuracy"),
              ("Precision", "precision"), ("Recall", "recall"), ("F1-Score", "f1"))}} for r in rows]
    return finish_run(run, metrics, skipped, markdown_table(table4, ["Model", "Accuracy", "Precision", "Recall", "F1-Score"]))


def export(cfg: BratsConfig, *, run: Run | RunPlace | None = None) -> RunResult:
    """Classifier as SavedModel + ONNX, detector as ONNX, and metadata.json describing the whole pipeline."""
    from keras_medimg.apps.brats.stages import pipeline_metadata
    from keras_medimg.detection.lesions import export_lesion_stages
    from keras_medimg.export import export_model

    trained = open_trained(cfg.predict.weights, APP, BratsConfig)
    model_path = trained.model_path
    run = start_run(APP, "export", cfg, run)
    out = run.subdir("export")
    metadata = pipeline_metadata(trained.config, trained.dir)
    classifier = export_model(model_path, out / "classifier", formats=cfg.export.formats,
                              metadata=metadata["stages"][2], atol=cfg.export.atol)
    files: dict[str, Any] = {"classifier": {"paths": {fmt: str(path) for fmt, path in classifier.paths.items()},
                                            "max_abs_diff": classifier.max_abs_diff}}
    files.update(export_lesion_stages(out, detector=trained.file("weights", DETECTOR_FILE),
                                      decoder=trained.file("weights", DECODER_FILE), imgsz=trained.config.detect.imgsz))
    metadata["files"] = files
    write_json(out / "metadata.json", metadata)
    return finish_run(run, {"weights": str(trained.dir), "files": files})
