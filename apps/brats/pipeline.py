"""The brain-tumour study as plain functions: detect (YOLOv8) -> segment (SAM) -> crop -> classify (CNN).

`train(cfg, stage)` writes one run folder:

    runs/brats/train[N]/
        config.yaml                 resolved config (rerun with --config)
        detect/                     Ultralytics' own run (results.csv, args.yaml, weights/) and the staged box set
        weights/detector.pt         the detector used by every later stage
        weights/sam_decoder.pth     the fine-tuned SAM mask decoder (segment.finetune)
        weights/best.keras, last.keras   the classifier
        crops/<split>/<class>/<id>.png   the lesion crops the classifier saw
        results.csv, plots/*.png, metrics.json, predictions.csv, skipped.csv

Which crops train the classifier: the study ran its detector and SAM over the classification images and trained
the CNN on what they produced, so the default (`classify.crop_source: detector`) does the same, and `predict`
runs exactly that chain on new images. `crop_source: truth` crops with the ground-truth masks instead (where the
dataset has them) to separate classifier quality from detector quality. An image where nothing is detected (which
is how `notumor` images are usually seen) is classified whole.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from keras_medimg.apps.brats.config import BratsConfig
from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.io.annotations import Box
from keras_medimg.runs import Run, RunPlace, RunResult, TrainedRun, atomic_path, finish_run, open_trained, start_run, write_json

log = logging.getLogger("keras_medimg.brats")

APP = "brats"
STAGES = ("detect", "segment", "classify", "all")
DETECTOR_FILE = "detector.pt"
DECODER_FILE = "sam_decoder.pth"


# === Data ===


def demo_data(out_dir: str | Path | None, cfg: BratsConfig) -> Path:
    """Make (or reuse) the synthetic brain set: Kaggle layout + YOLO box set + ground-truth masks.

    Args:
        out_dir: where to write it; None uses the shared demo-data cache.
        cfg: sizes come from `cfg.data.demo_*` and the seed from `cfg.seed`.

    Returns:
        The dataset root (holds Training/, Testing/, detection/data.yaml, masks/).
    """
    from keras_medimg.datasets.synthetic.brain import generate_brain

    params = {"n_per_class": cfg.data.demo_n_per_class, "size": cfg.data.demo_size, "seed": cfg.seed,
              "test_fraction": cfg.data.demo_test_fraction}
    if out_dir is None:
        from keras_medimg.datasets.synthetic import ensure_demo_data

        return Path(ensure_demo_data("brain", generate_brain, **params))
    generate_brain(Path(out_dir), **params)
    return Path(out_dir)


def data_root(cfg: BratsConfig) -> Path:
    """The dataset root: `data.root`, or the demo set (made on first use)."""
    if cfg.data.root:
        root = Path(cfg.data.root)
        if not root.is_dir():
            raise InvalidInputError(root, "the dataset folder does not exist; pass the folder that holds Training/ "
                                    "and Testing/ with --data, or leave --data out to use the demo data.")
        return root
    log.info("No --data given: using the built-in synthetic brain-MRI demo set.")
    return demo_data(None, cfg)


def classification_samples(root: Path, split: str, classes: Sequence[str]) -> list[Sample]:
    """The Kaggle-layout images of `split`, after checking that every class has its folder."""
    from keras_medimg.datasets.kaggle_brain import read_kaggle_brain

    samples = read_kaggle_brain(root, split, classes)
    missing = [name for name in classes if not (root / split / name).is_dir()]
    if missing and split == "Training":
        raise InvalidInputError(
            root / split / missing[0],
            f"the class folder is missing (missing: {', '.join(missing)}). Every class in data.classes needs a "
            f"{split}/<class>/ folder; add it or remove the class with --set data.classes=[...].",
        )
    return samples


def detection_yaml(cfg: BratsConfig, root: Path) -> Path:
    """The YOLO box set's data.yaml."""
    path = Path(cfg.data.detection) if cfg.data.detection else root / "detection" / "data.yaml"
    if not path.is_file():
        raise InvalidInputError(path, "the YOLO box set's data.yaml was not found; set data.detection=PATH to it "
                                "(the detector trains on images with tumour boxes).")
    return path


def mask_index(cfg: BratsConfig, root: Path) -> dict[str, Path]:
    """Ground-truth masks by image id (file stem); empty when the dataset has none."""
    from keras_medimg.io.images import RASTER_SUFFIXES

    folder = Path(cfg.data.masks) if cfg.data.masks else root / "masks"
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in RASTER_SUFFIXES}


def _read_grey(path: Path) -> np.ndarray:
    """A grey image at its own bit depth (DICOM through the DICOM reader, windowed, as 16-bit)."""
    from keras_medimg.io.dicom import is_dicom
    from keras_medimg.io.images import read_image, read_pixels

    if is_dicom(path):
        return np.round(read_pixels(path) * 65535).astype(np.uint16)
    image = read_image(path)
    if image.ndim == 3:
        import cv2

        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return image


def _mask_box(mask: np.ndarray) -> Box | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1), "tumor", 1.0)


# === The chain: detect -> segment -> crop ===


@dataclass
class Lesion:
    """What the chain found in one image.

    Args:
        box: the kept detector box (highest score), None when nothing was found.
        mask: SAM's boolean mask of that box, None without SAM or without a box.
        crop: the image the classifier sees (lesion crop, or the whole image).
    """

    box: Box | None
    mask: np.ndarray | None
    crop: np.ndarray


class LesionChain:
    """Detector + (SAM or box fallback) + square crop, applied the same way in train, evaluate and predict.

    Args:
        detector: a model from `detection.yolo.load_detector`, or None to classify whole images.
        sam_predictor: a `SamPredictor`, or None for the box fallback.
        cfg: the brats config (detect.conf/iou/imgsz, classify.margin/mask_background).
    """

    def __init__(self, detector: Any, sam_predictor: Any, cfg: BratsConfig):
        self.detector = detector
        self.sam_predictor = sam_predictor
        self.cfg = cfg
        self.seconds = {"detect": 0.0, "segment": 0.0, "crop": 0.0}

    def find(self, image: np.ndarray) -> Box | None:
        if self.detector is None:
            return None
        from keras_medimg.detection.yolo import detect

        started = time.perf_counter()
        boxes = detect(self.detector, [image], conf=self.cfg.detect.conf, iou=self.cfg.detect.iou,
                       imgsz=self.cfg.detect.imgsz, device=self.cfg.detect.device)[0]
        self.seconds["detect"] += time.perf_counter() - started
        return boxes[0] if boxes else None

    def outline(self, image: np.ndarray, box: Box) -> np.ndarray | None:
        if self.sam_predictor is None:
            return None
        from keras_medimg.detection.sam import segment_boxes

        started = time.perf_counter()
        mask = segment_boxes(self.sam_predictor, image, [box])[0]
        self.seconds["segment"] += time.perf_counter() - started
        return mask

    def crop(self, image: np.ndarray, box: Box | None, mask: np.ndarray | None) -> np.ndarray:
        from keras_medimg.preprocessing.geometry import crop_to_square

        if box is None:
            return image
        started = time.perf_counter()
        grow = self.cfg.classify.margin
        dx, dy = box.width * grow / 2, box.height * grow / 2
        grown = box._replace(x1=box.x1 - dx, y1=box.y1 - dy, x2=box.x2 + dx, y2=box.y2 + dy)
        use_mask = mask if (mask is not None and self.cfg.classify.mask_background and mask.any()) else None
        crop = crop_to_square(image, grown, mask=use_mask)
        self.seconds["crop"] += time.perf_counter() - started
        return crop

    def __call__(self, image: np.ndarray) -> Lesion:
        box = self.find(image)
        mask = self.outline(image, box) if box is not None else None
        return Lesion(box, mask, self.crop(image, box, mask))


def load_sam_predictor(cfg: BratsConfig, decoder: Path | None = None, *,
                       announce: bool = True) -> tuple[Any, dict[str, Any]]:
    """SAM's predictor from `segment.checkpoint`, or None with the fallback stated in the returned record.

    Args:
        cfg: the config (segment section).
        decoder: a fine-tuned mask decoder to load over the checkpoint's.
        announce: print the fallback warning (once per command is enough).

    Returns:
        (predictor or None, record for metrics.json: {"mode": "sam" | "box_fallback", ...}).
    """
    seg = cfg.segment
    if seg.checkpoint is None:
        if seg.fallback == "error":
            raise ConfigError("segment.checkpoint is not set and segment.fallback is 'error'. Pass a SAM checkpoint "
                              "with --set segment.checkpoint=PATH (e.g. sam_vit_b_01ec64.pth) or set "
                              "segment.fallback=box.")
        message = ("SAM is not used: segment.checkpoint is not set, so the segment stage falls back to "
                   "segment.fallback=box (the detector's box is cropped without masking the background). Pass "
                   "--set segment.checkpoint=PATH to a local sam_vit_b_01ec64.pth to segment with SAM.")
        if announce:
            log.info(f"WARNING: {message}")
        return None, {"mode": "box_fallback", "reason": message}
    from keras_medimg.detection.sam import load_sam, make_predictor

    decoder = decoder or (Path(seg.decoder) if seg.decoder else None)
    sam = load_sam(seg.model_type, seg.checkpoint, decoder=decoder)
    record = {"mode": "sam", "model_type": seg.model_type, "checkpoint": str(seg.checkpoint),
              "decoder": str(decoder) if decoder else None}
    return make_predictor(sam), record


def write_crops(
    samples: Sequence[Sample],
    chain: LesionChain,
    out_dir: Path,
    *,
    skipped: Skipped,
    strict: bool,
    truth_masks: dict[str, Path] | None = None,
) -> tuple[list[Sample], list[Lesion | None]]:
    """Run the chain (or crop with ground-truth masks) over `samples`, writing one PNG crop each.

    Returns:
        The crop samples (same id and label, path = the crop) and the lesions found, for the readable images.
    """
    from keras_medimg.io.images import write_image

    crops, lesions = [], []
    for sample in samples:
        try:
            image = _read_grey(sample.path)
        except InvalidInputError as exc:
            if strict:
                raise
            skipped.add_error(exc)
            continue
        if truth_masks is not None:
            mask = _read_grey(truth_masks[sample.path.stem]) > 0 if sample.path.stem in truth_masks else None
            box = _mask_box(mask) if mask is not None else None
            lesion = Lesion(box, mask, chain.crop(image, box, mask))
        else:
            lesion = chain(image)
        target = out_dir / (sample.label or "unlabelled") / f"{sample.id}.png"
        write_image(target, lesion.crop, bits=16 if lesion.crop.dtype == np.uint16 else 8)
        crops.append(replace(sample, path=target))
        lesions.append(lesion)
    return crops, lesions


# === Stages ===


def train_detect_stage(cfg: BratsConfig, run: Run, root: Path) -> dict[str, Any]:
    """Train YOLO on the box set; copy its best checkpoint to weights/detector.pt."""
    from keras_medimg.detection.yolo import train_detector

    data_yaml = detection_yaml(cfg, root)
    _check_box_set(data_yaml)
    d = cfg.detect
    log.info(f"[detect] training {d.model} ({'from scratch' if not d.weights else d.weights}) for {d.epochs} epochs "
         f"at {d.imgsz} px on {data_yaml}")
    result = train_detector(data_yaml, run.subdir("detect"), model=d.model, weights=d.weights, epochs=d.epochs,
                            imgsz=d.imgsz, batch=d.batch, seed=cfg.seed, device=d.device, workers=d.workers,
                            patience=d.patience)
    with atomic_path(run.path("weights", DETECTOR_FILE)) as target:  # present only once the stage has finished
        shutil.copyfile(result.best, target)
    log.info(f"[detect] done in {result.seconds:.0f} s; validation " +
         ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.items()))
    return {"model": d.model, "weights": d.weights, "epochs": d.epochs, "imgsz": d.imgsz, "seconds": result.seconds,
            "ultralytics_dir": str(result.save_dir), "validation": result.metrics}


def _check_box_set(data_yaml: Path) -> None:
    """Read every split with our reader first: a box outside its image or a label without an image is an error."""
    from keras_medimg.datasets.yolo import read_yolo_folder
    from keras_medimg.io.annotations import read_yolo_data_yaml

    data = read_yolo_data_yaml(data_yaml)
    for split in ("train", "val", "test"):
        if getattr(data, split):
            read_yolo_folder(data_yaml, split)


def train_segment_stage(cfg: BratsConfig, run: Run, root: Path) -> dict[str, Any]:
    """SAM: fine-tune the mask decoder on ground-truth masks (segment.finetune) or state the fallback."""
    predictor, record = load_sam_predictor(cfg)
    if predictor is None or not cfg.segment.finetune:
        if cfg.segment.finetune:
            record["finetune"] = "skipped: fine-tuning needs segment.checkpoint"
            log.info("[segment] segment.finetune is set but there is no SAM checkpoint, so nothing is fine-tuned.")
        return record
    from keras_medimg.detection.sam import finetune_decoder

    masks = mask_index(cfg, root)
    samples = [s for s in classification_samples(root, "Training", cfg.data.classes) if s.path.stem in masks]
    if not samples:
        raise InvalidInputError(root / "masks", "no ground-truth masks match the Training images (masks/<id>.png); "
                                "SAM fine-tuning needs them.")
    samples = samples[: cfg.segment.max_images]
    triples = []
    for sample in samples:
        mask = _read_grey(masks[sample.path.stem]) > 0
        box = _mask_box(mask)
        if box is not None:
            triples.append((_read_grey(sample.path), [box], mask))
    split = max(1, len(triples) // 5)
    log.info(f"[segment] fine-tuning SAM {cfg.segment.model_type} mask decoder on {len(triples) - split} images "
         f"(Dice measured on {split} held-out images)")
    result = finetune_decoder(predictor.model, triples[split:], run.path("weights", DECODER_FILE),
                              epochs=cfg.segment.finetune_epochs, learning_rate=cfg.segment.finetune_learning_rate,
                              seed=cfg.seed, eval_samples=triples[:split], log=_say)
    log.info(f"[segment] Dice before {result.dice_before:.4f} -> after {result.dice_after:.4f}")
    record.update({"finetune": True, "dice_before": result.dice_before, "dice_after": result.dice_after,
                   "decoder": str(result.decoder_path), "losses": result.losses, "seconds": result.seconds})
    return record


def _chain_for(cfg: BratsConfig, detector_path: Path | None, decoder: Path | None = None, *,
               announce: bool = True) -> tuple[LesionChain, dict]:
    from keras_medimg.detection.yolo import load_detector

    detector = load_detector(detector_path) if detector_path is not None else None
    predictor, record = load_sam_predictor(cfg, decoder, announce=announce)
    return LesionChain(detector, predictor, cfg), record


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


def make_crops(cfg: BratsConfig, run: Run, root: Path, skipped: Skipped, *,
               announce: bool = True) -> tuple[dict[str, list[Sample]], dict[str, Any]]:
    """Crop the Training images (split into train/val) and the Testing images into run/crops/<split>/.

    Returns:
        The crop samples per split, and the segment record (SAM or the fallback) for metrics.json.
    """
    from keras_medimg.datasets.splits import train_val_test_split

    training = classification_samples(root, "Training", cfg.data.classes)
    testing = classification_samples(root, "Testing", cfg.data.classes)
    train, val, _ = train_val_test_split(training, val=cfg.data.val_fraction, test=0.0, seed=cfg.seed)
    decoder = run.dir / "weights" / DECODER_FILE
    chain, sam_record = _chain_for(cfg, _detector_path(cfg, run), decoder if decoder.is_file() else None,
                                   announce=announce)
    truth = mask_index(cfg, root) if cfg.classify.crop_source == "truth" else None
    source = "ground-truth masks" if truth is not None else "detector" + (" + SAM" if chain.sam_predictor else " boxes")
    log.info(f"[classify] cropping {len(train)} train, {len(val)} val, {len(testing)} test images with the {source}")
    crops = {}
    for name, samples in (("train", train), ("val", val), ("test", testing)):
        crops[name], lesions = write_crops(samples, chain, run.dir / "crops" / name, skipped=skipped,
                                           strict=cfg.strict, truth_masks=truth)
        found = sum(1 for lesion in lesions if lesion is not None and lesion.box is not None)
        log.info(f"[classify]   {name}: lesion found in {found}/{len(lesions)} images")
    return crops, sam_record


def _normalization(cfg: BratsConfig):
    from keras_medimg.models.backbones import get_spec

    return get_spec(cfg.model.backbone).input_normalization(3)


def _datasets(cfg: BratsConfig, crops: dict[str, list[Sample]], skipped: Skipped):
    from keras_medimg.datasets.pipeline import make_dataset

    common = {"image_size": cfg.model.image_size, "batch_size": cfg.train.batch_size, "channels": 3,
              "normalization": _normalization(cfg), "class_names": cfg.data.classes, "seed": cfg.seed,
              "denoise_median": cfg.classify.denoise_median, "skipped": skipped, "strict": cfg.strict}
    train_ds = make_dataset(crops["train"], training=True, augment=cfg.classify.augment, **common)
    val_ds = make_dataset(crops["val"], training=False, **common) if crops["val"] else None
    return train_ds, val_ds


def train_classifier(cfg: BratsConfig, run: Run, crops: dict[str, list[Sample]], skipped: Skipped, *,
                     resume: bool = False) -> Any:
    """Fit the registry backbone + head on the crops (head phase, then fine-tuning, as `train` says); returns the
    best model."""
    from keras_medimg.models.classifier import build_classifier, load_model
    from keras_medimg.training.trainer import fit_plan, set_seed

    set_seed(cfg.seed)
    m = cfg.model
    train_ds, val_ds = _datasets(cfg, crops, skipped)
    kept = [s for s in crops["train"] if str(s.path) not in skipped.paths()]
    train_cfg = cfg.train if val_ds is not None else replace(cfg.train, monitor="loss")
    log.info(f"[classify] training {m.backbone} ({m.image_size}x{m.image_size}, weights={m.weights}) for "
             f"{train_cfg.epochs} epochs on {len(crops['train'])} crops")
    result = fit_plan(lambda: build_classifier(m.backbone, len(cfg.data.classes), input_shape=(m.image_size, m.image_size, 3),
                                               weights=m.weights, pooling=m.pooling, hidden_units=m.hidden_units,
                                               dropout=m.dropout),
                      train_ds, val_ds, config=train_cfg, run=run, weights=m.weights, freeze=m.freeze,
                      labels=[cfg.data.classes.index(s.label) for s in kept], resume=resume)
    return load_model(result.best_path or result.last_path)


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


def evaluate_detector(cfg: BratsConfig, detector_path: Path, root: Path) -> dict[str, Any]:
    """Table 3: precision, recall, F1, image accuracy and mAP50 on the box set's test split (else val).

    The study's detector finds "tumour"; the box set may name its class(es) differently, so all classes count as one.
    """
    from keras_medimg.detection.yolo import evaluate_detector as evaluate_yolo
    from keras_medimg.io.annotations import read_yolo_data_yaml

    data_yaml = detection_yaml(cfg, root)
    split = "test" if read_yolo_data_yaml(data_yaml).test else "val"
    return evaluate_yolo(detector_path, data_yaml, split=split, conf=cfg.detect.conf, iou=0.5, nms_iou=cfg.detect.iou,
                         imgsz=cfg.detect.imgsz, device=cfg.detect.device, class_remap="agnostic")


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
    from keras_medimg.backend import current_backend
    from keras_medimg.reporting import plot_training_curves

    root = data_root(cfg)
    if stage in ("classify", "all"):  # the class folders are checked before hours of detector training
        classification_samples(root, "Training", cfg.data.classes)
    if stage in ("detect", "all"):
        _check_box_set(detection_yaml(cfg, root))
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
            metrics["detect"] = train_detect_stage(cfg, run, root)
        metrics["detect"]["test"] = evaluate_detector(cfg, run.dir / "weights" / DETECTOR_FILE, root)
        log.info("[detect] test: " + _detector_line(metrics["detect"]["test"]))
    if stage in ("segment", "all"):
        metrics["segment"] = train_segment_stage(cfg, run, root)
    if stage in ("classify", "all"):
        crops, sam_record = make_crops(cfg, run, root, skipped, announce="segment" not in metrics)
        metrics.setdefault("segment", sam_record)
        model = train_classifier(cfg, run, crops, skipped, resume=resume)
        report, table = evaluate_classifier(model, cfg, run, crops["test"], skipped)
        metrics["classify"] = {"backbone": cfg.model.backbone, "image_size": cfg.model.image_size,
                               "crop_source": cfg.classify.crop_source, "test": report}
        plot_training_curves(run)
    metrics["seconds"] = time.perf_counter() - started
    return finish_run(run, metrics, skipped, table)


def _detector_line(report: dict[str, Any]) -> str:
    return (f"precision {report['precision']:.3f}, recall {report['recall']:.3f}, F1 {report['f1']:.3f}, "
            f"accuracy {report['accuracy']:.3f}, mAP50 {report['map50']:.3f} ({report['images']} images)")


# === Using a trained run ===


def _load_trained(trained: TrainedRun) -> tuple[LesionChain, Any, dict]:
    from keras_medimg.models.classifier import load_model

    chain, sam_record = _chain_for(trained.config, trained.file("weights", DETECTOR_FILE),
                                   trained.file("weights", DECODER_FILE))
    return chain, load_model(trained.model_path), sam_record


def _output_root(run: Run | RunPlace | None) -> Path:
    """Where this command writes: never read as input, even when it lies inside the source folder."""
    if isinstance(run, Run):
        return run.dir
    return Path(run.project) if run is not None and run.project is not None else Path("runs")


def predict(cfg: BratsConfig, *, run: Run | RunPlace | None = None) -> RunResult:
    """The whole chain on new images: class, probability, box, mask PNG, overlay PNG, predictions.csv.

    `cfg.predict.weights` is the train run; the chain is rebuilt from that run's saved config. Per-image files
    are named by the image's path relative to the source, so `a.png` and `sub/a.png` never share one.
    """
    from keras_medimg.datasets.sources import list_images
    from keras_medimg.io.images import write_image

    trained = open_trained(cfg.predict.weights, APP, BratsConfig)
    if cfg.predict.source is None:
        raise ConfigError("Nothing to predict. Pass an image or a folder of images (predict.source).")
    skipped = Skipped()
    samples = list_images(Path(cfg.predict.source), exclude=[_output_root(run)], skipped=skipped)
    chain, model, sam_record = _load_trained(trained)
    run = start_run(APP, "predict", cfg, run)
    rows, started = [], time.perf_counter()
    classes = trained.config.data.classes
    seconds_classify = 0.0
    # Chunks keep memory flat on big folders while the classifier still sees whole batches.
    chunk = max(1, trained.config.train.batch_size)
    for first in range(0, len(samples), chunk):
        found = []
        for sample in samples[first:first + chunk]:
            try:
                image = _read_grey(sample.path)
            except InvalidInputError as exc:
                if cfg.strict:
                    raise
                skipped.add_error(exc)
                continue
            lesion = chain(image)
            crop_path = write_image(run.path("crops", f"{sample.id}.png"), lesion.crop,
                                    bits=16 if lesion.crop.dtype == np.uint16 else 8)
            found.append((sample, image, lesion, Sample(id=sample.id, path=crop_path)))
        tick = time.perf_counter()
        probs, kept = classify_crops(model, trained.config, [item[3] for item in found], skipped)
        seconds_classify += time.perf_counter() - tick
        by_id = {crop.id: p for crop, p in zip(kept, probs)}
        for sample, image, lesion, crop in found:
            if crop.id in by_id:
                gradcam = _gradcam(model, trained.config, crop.path, run, crop.id) if cfg.predict.gradcam else ""
                rows.append(_prediction_row(run, sample, image, lesion, by_id[crop.id], classes, gradcam))
    seconds = time.perf_counter() - started
    fields = ["id", "path", "predicted", "probability", *[f"p_{c}" for c in classes], "x1", "y1", "x2", "y2",
              "box_score", "mask", "overlay", "gradcam"]
    run.write_csv("predictions.csv", rows, fields)
    images = len(rows)
    timing = {stage: 1000 * s / max(images, 1) for stage, s in chain.seconds.items()}
    timing["classify"] = 1000 * seconds_classify / max(images, 1)
    metrics = {"weights": str(trained.dir), "images": images, "skipped": len(skipped), "segment": sam_record,
               "ms_per_image": timing, "images_per_second": images / seconds if seconds else 0.0}
    return finish_run(run, metrics, skipped)


def _prediction_row(run: Run, sample: Sample, image: np.ndarray, lesion: Lesion, probs: np.ndarray,
                    classes: Sequence[str], gradcam_file: str) -> dict[str, Any]:
    """Write the mask and overlay PNGs of one image and return its predictions.csv row."""
    from keras_medimg.io.images import write_image
    from keras_medimg.reporting import draw_overlay

    index = int(probs.argmax())
    mask_file = ""
    if lesion.mask is not None:
        mask_file = str(write_image(run.path("masks", f"{sample.id}.png"), lesion.mask.astype(np.uint8) * 255))
    overlay_file = write_image(run.path("overlays", f"{sample.id}.png"), draw_overlay(
        image, [lesion.box] if lesion.box else [], lesion.mask, f"{classes[index]} {probs[index]:.2f}"))
    box = lesion.box
    return {
        "id": sample.id, "path": str(sample.path), "predicted": classes[index], "probability": float(probs[index]),
        **{f"p_{name}": float(p) for name, p in zip(classes, probs)},
        "x1": box.x1 if box else "", "y1": box.y1 if box else "", "x2": box.x2 if box else "",
        "y2": box.y2 if box else "", "box_score": box.score if box else "",
        "mask": mask_file, "overlay": str(overlay_file), "gradcam": gradcam_file,
    }


def _gradcam(model: Any, cfg: BratsConfig, crop_path: Path, run: Run, stem: str) -> str:
    from keras_medimg.datasets.pipeline import load_images_numpy
    from keras_medimg.io.images import to_float, write_image
    from keras_medimg.models.saliency import grad_cam, overlay

    images, _ = load_images_numpy([Sample(id=stem, path=crop_path)], image_size=cfg.model.image_size, channels=3,
                                  normalization=_normalization(cfg), denoise_median=cfg.classify.denoise_median)
    heatmap = grad_cam(model, images)[0]
    crop, _ = load_images_numpy([Sample(id=stem, path=crop_path)], image_size=cfg.model.image_size, channels=3)
    picture = overlay(to_float(crop[0]), heatmap)
    return str(write_image(run.path("gradcam", f"{stem}.png"), picture))


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
        metrics["detect"] = evaluate_detector(config, detector, root)
        log.info("[detect] test: " + _detector_line(metrics["detect"]))
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
    return finish_run(run, metrics, skipped, markdown_table(rows, columns))


def export(cfg: BratsConfig, *, run: Run | RunPlace | None = None) -> RunResult:
    """Classifier as SavedModel + ONNX, detector as ONNX, and metadata.json describing the whole pipeline."""
    from keras_medimg.detection.yolo import export_detector_onnx
    from keras_medimg.export import export_model

    trained = open_trained(cfg.predict.weights, APP, BratsConfig)
    model_path = trained.model_path
    run = start_run(APP, "export", cfg, run)
    out = run.subdir("export")
    metadata = pipeline_metadata(trained.config, trained.dir)
    classifier = export_model(model_path, out / "classifier", formats=cfg.export.formats,
                              metadata=metadata["stages"][2], atol=cfg.export.atol)
    files: dict[str, Any] = {"classifier": _export_files(classifier)}
    if (detector := trained.file("weights", DETECTOR_FILE)) is not None:
        files["detector"] = str(export_detector_onnx(detector, out / "detector.onnx", imgsz=trained.config.detect.imgsz))
    if (decoder := trained.file("weights", DECODER_FILE)) is not None:
        shutil.copyfile(decoder, out / DECODER_FILE)
        files["sam_decoder"] = str(out / DECODER_FILE)
    metadata["files"] = files
    write_json(out / "metadata.json", metadata)
    return finish_run(run, {"weights": str(trained.dir), "files": files})


def _export_files(result: Any) -> dict[str, Any]:
    return {"paths": {fmt: str(path) for fmt, path in result.paths.items()}, "max_abs_diff": result.max_abs_diff}


def pipeline_metadata(cfg: BratsConfig, folder: Path) -> dict[str, Any]:
    """How to run the exported pipeline: stage order, classes, input sizes and preprocessing."""
    norm = _normalization(cfg)
    return {
        "app": APP,
        "trained_run": str(folder),
        "classes": cfg.data.classes,
        "stages": [
            {"stage": "detect", "model": cfg.detect.model, "file": "detector.onnx", "input_size": cfg.detect.imgsz,
             "input": "RGB (grey copied to 3 channels), letterboxed to input_size, /255, NCHW",
             "conf": cfg.detect.conf, "iou": cfg.detect.iou, "keep": "highest-scoring box"},
            {"stage": "segment", "model": f"SAM {cfg.segment.model_type}" if cfg.segment.checkpoint else None,
             "fallback": cfg.segment.fallback if not cfg.segment.checkpoint else None,
             "checkpoint": cfg.segment.checkpoint, "prompt": "detector box"},
            {"stage": "classify", "backbone": cfg.model.backbone, "input_size": cfg.model.image_size,
             "classes": cfg.data.classes,
             "crop": {"margin": cfg.classify.margin, "square": True, "mask_background": cfg.classify.mask_background,
                      "no_detection": "whole image"},
             "preprocessing": {"grayscale": True, "channels": 3, "resize": "plain",
                               "denoise_median": cfg.classify.denoise_median, "scale": "[0, 1]",
                               "normalization": norm.to_dict()}},
        ],
    }
