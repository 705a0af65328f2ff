"""Ultralytics YOLO detectors (YOLOv8, YOLOv5u and the other families it ships) as a library stage, strictly offline:
train a detector into a caller-given folder, detect, evaluate it against a YOLO split, remap its classes, export it.

Ultralytics reaches for the network in several places: it downloads fonts (Arial.ttf) for its plots and dataset
checks, `yolov8n.pt` for the AMP check, datasets named in a data.yaml, pip packages it thinks are missing, and it
sends usage events. `_offline_ultralytics()` runs before the first `import ultralytics` and closes every one of
these doors: YOLO_OFFLINE/YOLO_AUTOINSTALL, a private config folder holding matplotlib's DejaVuSans as the fonts it
wants, and settings with sync/hub/integrations off. Training from scratch builds the network from its `.yaml`
architecture; pretrained weights must be a local `.pt` file.

Ultralytics writes `labels.cache` files beside the label folders it reads. Our users' datasets must stay
untouched, so training reads a staged copy of the dataset made of symlinks inside the run folder.

A killed training continues where it stopped (`train_detector(..., resume=True)`, Ultralytics' own `resume=`):
every trainer runs as `resumable_trainer(...)`, whose checkpoints are written to a temporary file and renamed
(Ultralytics writes `last.pt` in place, so a kill mid-write left a checkpoint that neither loads nor resumes), and
whose results.csv loses, on resume, the rows of epochs the checkpoint does not hold (Ultralytics appends an epoch's
row before it saves that epoch's checkpoint, so a kill between the two repeated the epoch).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from keras_medimg.datasets.yolo import entry_images, read_yolo_folder
from keras_medimg.errors import ConfigError, InvalidInputError, WeightsUnavailableError, require
from keras_medimg.io.annotations import Box, read_yolo_data_yaml, write_yolo, write_yolo_data_yaml, yolo_label_path
from keras_medimg.io.images import read_image, to_rgb_uint8
from keras_medimg.metrics.detection import ClassRemap, detection_report, remap_boxes, remap_label

log = logging.getLogger(__name__)

_FONTS = ("Arial.ttf", "Arial.Unicode.ttf")
_SPLITS = ("train", "val", "test")
# The score down to which `evaluate_detector` keeps boxes, so mAP ranks them all (Ultralytics' own val does so).
_RANK_CONF = 0.001
# Training arguments `train_detector` sets itself; `hyperparameters` may not override them.
_OWN_TRAIN_ARGS = frozenset({"data", "model", "project", "name", "exist_ok", "epochs", "imgsz", "batch", "seed",
                             "deterministic", "device", "workers", "patience", "pretrained", "amp", "plots",
                             "verbose", "resume"})


def config_dir() -> Path:
    """Where Ultralytics keeps its settings and fonts for keras-medimg: $MEDIMG_HOME/ultralytics or the user cache."""
    from keras_medimg.backend import medimg_home

    return medimg_home() / "ultralytics"


def _offline_ultralytics():
    """Import Ultralytics with every network path closed, and return the module."""
    if "ultralytics" not in sys.modules:
        os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir()))
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    ultralytics = require("ultralytics", extra="detect", feature="YOLO detection")
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    # Ultralytics downloads Arial fonts when it cannot find them there; matplotlib ships a free font that serves.
    from matplotlib import get_data_path

    dejavu = Path(get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in _FONTS:
        if not (Path(USER_CONFIG_DIR) / name).exists():
            shutil.copyfile(dejavu, Path(USER_CONFIG_DIR) / name)
    quiet = {"sync": False, "hub": False, "clearml": False, "comet": False, "dvc": False, "mlflow": False,
             "raytune": False, "wandb": False, "tensorboard": False, "vscode_msg": False, "openvino_msg": False}
    changed = {k: v for k, v in quiet.items() if k in SETTINGS and SETTINGS[k] != v}
    if changed:
        SETTINGS.update(changed)
    return ultralytics


# === Arguments ===


def _check_int(function: str, name: str, value: Any, low: int, *, multiple_of: int = 1, hint: str = "") -> None:
    """Refuse an integer argument below `low` or off its grid before Ultralytics quietly bends or rejects it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or value % multiple_of:
        grid = f" and a multiple of {multiple_of}" if multiple_of > 1 else ""
        raise ConfigError(f"{function}: {name} must be an integer >= {low}{grid}, not {value!r}.{hint}")


def _check_fraction(function: str, name: str, value: Any, *, open_low: bool = False) -> None:
    """Refuse a threshold outside [0, 1] (or (0, 1] with `open_low`)."""
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and 0 <= value <= 1
    if not ok or (open_low and value == 0):
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ConfigError(f"{function}: {name} must be a number in {interval}, not {value!r}.")


_IMGSZ_HINT = " YOLO's strides need square inputs of 32, 64, ... 640 pixels; set the size the detector was trained at."


# === Datasets ===


def stage_dataset(data_yaml: str | Path, out_dir: str | Path, *, class_remap: ClassRemap = None) -> Path:
    """Mirror a YOLO dataset under `out_dir` (images as symlinks) and write a data.yaml with absolute paths there.

    Ultralytics then writes its label caches into `out_dir`, never beside the user's files. Without a remap the
    label files are linked too; with one, every split is read and checked (`read_yolo_folder`) and its labels
    are written anew with the remapped class indices.

    Args:
        data_yaml: the dataset's data.yaml (keys path, train, val, optional test, names), or its folder.
        out_dir: an empty or reusable folder (its images/, labels/ and data.yaml are replaced).
        class_remap: None, `"agnostic"` (one class), or a mapping from class name to new name (see
            `metrics.detection`); the new names keep the order in which the old ones first reach them.

    Returns:
        The staged data.yaml.
    """
    data_yaml = Path(data_yaml)
    data_yaml = (data_yaml / "data.yaml" if data_yaml.is_dir() else data_yaml).resolve()
    data = read_yolo_data_yaml(data_yaml)
    names = remapped_class_names(data.class_names, class_remap)
    out_dir = Path(out_dir).resolve()
    splits: dict[str, str] = {}
    for split in _SPLITS:
        entries = getattr(data, split)
        if not entries:
            continue
        images_dir, labels_dir = out_dir / "images" / split, out_dir / "labels" / split
        for folder in (images_dir, labels_dir):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        if class_remap is None:
            for image in (image for entry in entries for image in entry_images(entry)):
                _link(image, images_dir / image.name, split)
                if yolo_label_path(image).is_file():
                    _link(yolo_label_path(image), labels_dir / f"{image.stem}.txt", split)
        else:
            for sample in read_yolo_folder(data_yaml, split):
                _link(sample.path, images_dir / sample.path.name, split)
                write_yolo(labels_dir / f"{sample.path.stem}.txt", remap_boxes(sample.boxes, class_remap),
                           sample.meta["size"], names)
        splits[split] = f"images/{split}"
    target = out_dir / "data.yaml"
    # Ultralytics needs a val split; a data.yaml without one validates on the training images.
    return write_yolo_data_yaml(target, out_dir, splits["train"], splits.get("val", splits["train"]), names,
                                test=splits.get("test"))


def remap_label_set(data_yaml: str | Path, out_dir: str | Path, class_remap: ClassRemap) -> Path:
    """Write a YOLO label set with remapped classes (images linked, labels rewritten) for training or evaluation.

    Args:
        data_yaml: the original dataset's data.yaml, or its folder.
        out_dir: where the remapped set goes (images/<split>, labels/<split>, data.yaml).
        class_remap: `"agnostic"` or a mapping from original class name to new name; names left out keep theirs.

    Returns:
        The new data.yaml, whose names are the remapped classes.
    """
    if class_remap is None:
        raise ConfigError("remap_label_set: class_remap is None; give 'agnostic' or a mapping of class names.")
    return stage_dataset(data_yaml, out_dir, class_remap=class_remap)


def remapped_class_names(class_names: Sequence[str], class_remap: ClassRemap) -> list[str]:
    """The class names after a remap, in the order the original names first reach them.

    Args:
        class_names: the original names in index order.
        class_remap: None, `"agnostic"` or a mapping from name to new name.

    Returns:
        The new names in index order (the original ones when `class_remap` is None).

    Raises:
        ConfigError: the mapping names a class the dataset does not have (a typo would silently change nothing).
    """
    if isinstance(class_remap, Mapping):
        unknown = sorted(set(class_remap) - set(class_names))
        if unknown:
            raise ConfigError(
                f"The class remap names {', '.join(unknown)}, which the dataset does not have; its classes are "
                f"{', '.join(class_names)}. Fix the remap."
            )
    return list(dict.fromkeys(str(remap_label(name, class_remap)) for name in class_names))


def _link(source: Path, target: Path, split: str) -> None:
    if target.exists() or target.is_symlink():
        raise InvalidInputError(
            source, f"Another file of the '{split}' split is also named {target.name}; the staged copy Ultralytics "
            "reads needs unique file names per split. Rename one of them."
        )
    try:
        target.symlink_to(source.resolve())
    except OSError:  # file systems without symlinks (some Windows setups): copy instead
        shutil.copyfile(source, target)


# === Training ===


@dataclass
class DetectorResult:
    """What `train_detector` produced.

    Args:
        best: the best checkpoint (Ultralytics `weights/best.pt`).
        last: the last checkpoint.
        save_dir: Ultralytics' own run folder (results.csv, args.yaml) inside the caller's folder.
        metrics: validation metrics Ultralytics reported (precision, recall, mAP50, mAP50-95).
        seconds: wall-clock training time.
        class_names: the classes the detector predicts (after a remap), in index order.
        data_yaml: the staged data.yaml it was trained on.
    """

    best: Path
    last: Path
    save_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    class_names: list[str] = field(default_factory=list)
    data_yaml: Path | None = None


def _model_source(model: str, weights: str | None) -> str:
    """The architecture .yaml (from scratch) or a local .pt file; never a name Ultralytics would download."""
    if weights in (None, "", "none"):
        if model.endswith(".yaml"):
            return model
        # YOLOv5u (anchor-free head) is Ultralytics' yolov5<size>.yaml; its checkpoints are named yolov5<size>u.pt.
        return f"{model[:-1]}.yaml" if re.fullmatch(r"yolov5[nsmlx]u", model) else f"{model}.yaml"
    path = Path(weights)
    if weights == "imagenet" or not path.is_file():
        raise WeightsUnavailableError(
            f"Detector weights '{weights}' are not a local file, and keras-medimg never downloads them. Download "
            f"{Path(model).stem}.pt from https://github.com/ultralytics/assets/releases yourself and pass its "
            "path as the weights, or give no weights to train from scratch."
        )
    if path.suffix != ".pt":
        raise InvalidInputError(path, "detector weights must be an Ultralytics .pt checkpoint.")
    return str(path)


def _check_train_args(epochs: int, imgsz: int, batch: int, workers: int, patience: int,
                      hyperparameters: Mapping[str, Any] | None) -> None:
    _check_int("train_detector", "epochs", epochs, 1, hint=" Train for at least one epoch.")
    _check_int("train_detector", "imgsz", imgsz, 32, multiple_of=32, hint=_IMGSZ_HINT)
    _check_int("train_detector", "batch", batch, 1)
    _check_int("train_detector", "workers", workers, 0)
    _check_int("train_detector", "patience", patience, 0, hint=" 0 turns early stopping off.")
    clashes = sorted(set(hyperparameters or {}) & _OWN_TRAIN_ARGS)
    if clashes:
        raise ConfigError(
            f"train_detector: hyperparameters may not set {', '.join(clashes)}; pass them as train_detector's "
            "own arguments."
        )


def train_detector(
    data_yaml: str | Path,
    out_dir: str | Path,
    *,
    model: str = "yolov8n",
    weights: str | None = None,
    epochs: int = 10,
    imgsz: int = 640,
    batch: int = 16,
    seed: int = 0,
    device: str = "cpu",
    workers: int = 0,
    patience: int = 100,
    name: str = "train",
    class_remap: ClassRemap = None,
    hyperparameters: Mapping[str, Any] | None = None,
    verbose: bool = False,
    trainer: type | None = None,
    plots: bool = False,
    resume: bool = False,
) -> DetectorResult:
    """Train an Ultralytics detector offline, keeping all its files under `out_dir`.

    Args:
        data_yaml: the YOLO dataset's data.yaml or its folder (staged under `out_dir/dataset` first).
        out_dir: the caller's folder for the detector; Ultralytics' run goes to `out_dir/<name>`.
        model: architecture name (`yolov8n`, `yolov5nu`, ... or any Ultralytics model .yaml).
        weights: None to train from scratch, or a local `.pt` checkpoint to fine-tune.
        epochs: training epochs (>= 1).
        imgsz: square training size in pixels (a multiple of 32).
        batch: batch size (>= 1).
        seed: Ultralytics' random seed (with deterministic=True).
        device: "cpu", "0", "cuda:0", ...
        workers: data-loader worker processes (0 loads in the main process).
        patience: early-stopping patience in epochs (0 turns it off).
        name: Ultralytics run name inside `out_dir`.
        class_remap: train on remapped classes (`"agnostic"` or a name mapping; see `remap_label_set`).
        hyperparameters: further Ultralytics training arguments (`lr0`, `optimizer`, `mosaic`, `fliplr`, ...).
        verbose: let Ultralytics print its per-epoch progress.
        trainer: an Ultralytics `DetectionTrainer` subclass to train with (e.g. one whose datasets cut tiles,
            `detection.tiled.tile_trainer`); None uses Ultralytics' own.
        plots: let Ultralytics write its own plots into its run folder (results.png, PR/F1 curves, confusion
            matrix, label statistics, train and validation batches with labels and predictions); costs a few
            seconds per validation.
        resume: continue the unfinished training in `out_dir/<name>` from its `weights/last.pt` (optimizer,
            EMA, early-stopping state and epoch count included), when that checkpoint can be resumed and was
            trained with the same epochs, imgsz and batch; otherwise (none yet, unreadable, finished, other
            settings) that folder is emptied and training starts afresh, with the reason logged.

    Returns:
        A `DetectorResult` with the best and last checkpoints and the final validation metrics.

    Raises:
        ConfigError: an argument out of range, or hyperparameters that repeat one of the arguments above.
    """
    _check_train_args(epochs, imgsz, batch, workers, patience, hyperparameters)
    out_dir = Path(out_dir).resolve()
    source = _model_source(model, weights)
    staged = stage_dataset(data_yaml, out_dir / "dataset", class_remap=class_remap)
    _offline_ultralytics()
    from ultralytics import YOLO

    save_dir = out_dir / name
    trainer_class = resumable_trainer(trainer)
    last = save_dir / "weights" / "last.pt"
    done, why = resume_point(last, epochs=epochs, imgsz=imgsz, batch=batch) if resume else (None, "")
    started = time.perf_counter()
    if done is not None:
        log.info("Resuming the detector's training in %s after epoch %d of %d.", save_dir, done, epochs)
        detector = YOLO(str(last))
        detector.train(resume=str(last), data=str(staged), save_dir=str(save_dir), device=device, workers=workers,
                       patience=patience, plots=plots, trainer=trainer_class)
    else:
        if resume and save_dir.exists():
            log.info("The detector's training in %s starts afresh: %s.", save_dir, why)
            shutil.rmtree(save_dir)
        detector = YOLO(source)
        detector.train(
            data=str(staged),
            project=str(out_dir),
            name=name,
            exist_ok=True,
            epochs=epochs,
            imgsz=imgsz,
            batch=batch,
            seed=seed,
            deterministic=True,
            device=device,
            workers=workers,
            patience=patience,
            pretrained=source.endswith(".pt"),
            amp=device != "cpu" and source.endswith(".pt"),  # the AMP check downloads yolov8n.pt when no .pt is given
            plots=plots,
            verbose=verbose,
            trainer=trainer_class,
            **dict(hyperparameters or {}),
        )
    seconds = time.perf_counter() - started
    save_dir = Path(detector.trainer.save_dir)
    metrics = {k.split("/")[-1].removesuffix("(B)"): float(v) for k, v in (detector.trainer.metrics or {}).items()
               if k.startswith("metrics/")}
    return DetectorResult(
        best=save_dir / "weights" / "best.pt",
        last=save_dir / "weights" / "last.pt",
        save_dir=save_dir,
        metrics=metrics,
        seconds=seconds,
        class_names=read_yolo_data_yaml(staged).class_names,
        data_yaml=staged,
    )


# === Resuming ===


def resume_point(last: str | Path, *, epochs: int, imgsz: int, batch: int) -> tuple[int | None, str]:
    """How many epochs the checkpoint `last` (Ultralytics' `last.pt`) holds, if training can continue from it.

    Returns:
        (epochs done, "") when it can be resumed, else (None, the reason): no checkpoint, an unreadable one, one
        whose training finished (Ultralytics strips the optimizer then), or one trained with other epochs, imgsz or
        batch (Ultralytics would silently keep the checkpoint's).
    """
    last = Path(last)
    if not last.is_file():
        return None, "no checkpoint was saved yet"
    _offline_ultralytics()
    from ultralytics.nn.tasks import torch_safe_load

    try:
        ckpt = torch_safe_load(last)[0]
    except Exception as exc:  # Ultralytics raises several types for a damaged file
        return None, f"{last.name} cannot be read ({type(exc).__name__})"
    epoch, args = int(ckpt.get("epoch", -1)), ckpt.get("train_args") or {}
    if epoch < 0 or ckpt.get("optimizer") is None:
        return None, f"{last.name} is of a finished training"
    asked = {"epochs": epochs, "imgsz": imgsz, "batch": batch}
    changed = [f"{k} {args.get(k)} -> {v}" for k, v in asked.items() if args.get(k) != v]
    if changed:
        return None, f"the settings changed ({', '.join(changed)})"
    if epoch + 1 >= epochs:
        return None, f"{last.name} holds every epoch already"
    return epoch + 1, ""


def trim_results(results_csv: str | Path, epochs_done: int) -> None:
    """Keep the header and the whole rows of epochs 1..`epochs_done` of Ultralytics' results.csv (atomically).

    Ultralytics appends an epoch's row before it saves that epoch's checkpoint; a kill in between leaves a row the
    resumed training writes again (and a kill during the append, half a row).
    """
    from keras_medimg.runs import atomic_write_text

    path = Path(results_csv)
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if not text.endswith("\n"):
        lines = lines[:-1]  # the append a kill cut short
    if not lines:
        return
    width = lines[0].count(",")
    kept = [lines[0]]
    for line in lines[1:]:
        first = line.split(",", 1)[0].strip()
        if line.count(",") == width and first.isdigit() and int(first) <= epochs_done:
            kept.append(line)
    if kept != text.splitlines():
        atomic_write_text(path, "\n".join(kept) + "\n")


def resumable_trainer(base: type | None = None) -> type:
    """`base` (Ultralytics' `DetectionTrainer` by default) with checkpoints a kill cannot break and a results.csv
    a resume does not repeat (see the module's docstring)."""
    import contextlib

    from ultralytics.models.yolo.detect import DetectionTrainer

    from keras_medimg.runs import atomic_path

    class ResumableTrainer(base or DetectionTrainer):
        def save_model(self):
            last, best = self.last, self.best
            with contextlib.ExitStack() as renames:  # renamed in reverse order of entry: best.pt, then last.pt
                self.last = renames.enter_context(atomic_path(last))
                # Ultralytics' own condition for writing best.pt. Best first: a kill between the renames leaves
                # last.pt an epoch behind (the resume redoes that epoch), never a best.pt older than the best
                # that the checkpoint's best_fitness records.
                if self.best_fitness == self.fitness:
                    self.best = renames.enter_context(atomic_path(best))
                try:
                    return super().save_model()
                finally:
                    self.last, self.best = last, best

        def resume_training(self, ckpt):
            super().resume_training(ckpt)
            if self.resume and ckpt is not None:
                trim_results(self.csv, self.start_epoch)

    return ResumableTrainer


# === Inference ===


def load_detector(path: str | Path) -> Any:
    """Load a trained Ultralytics checkpoint (`.pt`) or an exported `.onnx` detector for `detect`.

    Args:
        path: the checkpoint (`DetectorResult.best`) or `.onnx` file.

    Returns:
        An Ultralytics `YOLO` model.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"Detector checkpoint '{path}' does not exist. Pass the weights/best.pt that training wrote, or an "
            "exported .onnx detector."
        )
    _offline_ultralytics()
    from ultralytics import YOLO

    try:
        return YOLO(str(path), task="detect")
    except Exception as exc:  # Ultralytics raises many types for a file that is not a checkpoint
        raise InvalidInputError(path, f"this is not a readable Ultralytics detector checkpoint ({exc}).") from None


def _as_bgr_uint8(image: np.ndarray) -> np.ndarray:
    """Ultralytics expects OpenCV-style BGR uint8 images."""
    return np.ascontiguousarray(to_rgb_uint8(image)[..., ::-1])


def detect(
    model: Any,
    images: Sequence[np.ndarray],
    *,
    conf: float = 0.25,
    iou: float = 0.7,
    imgsz: int = 640,
    max_det: int = 300,
    device: str = "cpu",
) -> list[list[Box]]:
    """Run a detector on images and return its boxes in pixels of each original image.

    Args:
        model: a detector from `load_detector`.
        images: arrays (H, W) or (H, W, 3) RGB, uint8/uint16 or float in [0, 1].
        conf: minimum confidence of a kept box, in [0, 1].
        iou: IoU threshold of non-maximum suppression, in (0, 1].
        imgsz: inference size (use the training size; a multiple of 32).
        max_det: most boxes per image.
        device: "cpu", "0", ...

    Returns:
        One list of `Box(x1, y1, x2, y2, label=class name, score)` per image, highest score first.

    Raises:
        ConfigError: an argument out of range.
    """
    _check_fraction("detect", "conf", conf)
    _check_fraction("detect", "iou", iou, open_low=True)
    _check_int("detect", "imgsz", imgsz, 32, multiple_of=32, hint=_IMGSZ_HINT)
    _check_int("detect", "max_det", max_det, 1)
    if not len(images):
        return []
    batch = [_as_bgr_uint8(image) for image in images]
    results = model.predict(batch, conf=conf, iou=iou, imgsz=imgsz, max_det=max_det, device=device, verbose=False)
    out: list[list[Box]] = []
    for result in results:
        names = result.names
        boxes = result.boxes
        xyxy = boxes.xyxy.cpu().numpy() if boxes is not None else np.zeros((0, 4))
        scores = boxes.conf.cpu().numpy() if boxes is not None else np.zeros((0,))
        classes = boxes.cls.cpu().numpy().astype(int) if boxes is not None else np.zeros((0,), int)
        found = [Box(float(b[0]), float(b[1]), float(b[2]), float(b[3]), names.get(int(c), int(c)), float(s))
                 for b, s, c in zip(xyxy, scores, classes)]
        out.append(sorted(found, key=lambda box: -box.score))
    return out


# === Evaluation ===


def evaluate_detector(
    detector: Any,
    data_yaml: str | Path,
    *,
    split: str = "test",
    conf: float = 0.25,
    iou: float = 0.5,
    nms_iou: float = 0.7,
    imgsz: int = 640,
    device: str = "cpu",
    class_remap: ClassRemap = None,
    batch: int = 16,
    max_boxes: int | None = None,
) -> dict[str, Any]:
    """Precision, recall, F1 (at `conf`, IoU `iou`), image accuracy and mAP50 of a detector on one YOLO split.

    Every box down to a score of 0.001 is kept so mAP ranks them all; `conf` then filters for P/R/F1/accuracy.

    Args:
        detector: a model from `load_detector`, or the path of a checkpoint to load.
        data_yaml: the YOLO dataset's data.yaml (or its folder); its boxes are the truth.
        split: `"train"`, `"val"` or `"test"`.
        conf: score threshold for precision, recall, F1 and accuracy.
        iou: the least IoU of a match (0.5 gives mAP50).
        nms_iou: IoU threshold of the detector's non-maximum suppression.
        imgsz: inference size (the training size).
        device: "cpu", "0", ...
        class_remap: renames classes of truth and predictions before matching: `"agnostic"`, a mapping from
            class name to new name, or None. A detector trained on the remapped set (it predicts the new names)
            has only the truth remapped.
        batch: images per detector call.
        max_boxes: judge only each image's highest-scoring `max_boxes` boxes (a chain that keeps the top box
            is judged on what it uses with 1); None keeps every box.

    Returns:
        `DetectionReport.to_dict()` (precision, recall, f1, accuracy, map50, ap50, tp, fp, fn, images,
        per_class) plus `split`, `conf`, `iou` and `class_names` (the classes compared, after the remap).

    Raises:
        ConfigError: an argument out of range, or a remap naming a class the dataset does not have.
        InvalidInputError: a missing split or a bad image or label file.
    """
    _check_fraction("evaluate_detector", "conf", conf)
    _check_fraction("evaluate_detector", "iou", iou, open_low=True)
    _check_int("evaluate_detector", "batch", batch, 1)
    if max_boxes is not None:
        _check_int("evaluate_detector", "max_boxes", max_boxes, 1)
    data_yaml = Path(data_yaml)
    data_yaml = data_yaml / "data.yaml" if data_yaml.is_dir() else data_yaml
    names = remapped_class_names(read_yolo_data_yaml(data_yaml).class_names, class_remap)
    samples = read_yolo_folder(data_yaml, split)
    model = load_detector(detector) if isinstance(detector, (str, Path)) else detector
    predicted: list[list[Box]] = []
    for start in range(0, len(samples), batch):
        images = [read_image(sample.path) for sample in samples[start:start + batch]]
        predicted += detect(model, images, conf=_RANK_CONF, iou=nms_iou, imgsz=imgsz, device=device)
    if max_boxes is not None:
        predicted = [sorted(boxes, key=lambda b: -b.score)[:max_boxes] for boxes in predicted]
    truth = [remap_boxes(sample.boxes, class_remap) for sample in samples]
    # A detector trained on the remapped set already speaks the new names; remapping them again could rename
    # a new name that is also an old one (a swap), so only a detector whose classes are not the new ones, in order, is remapped.
    detector_names = getattr(model, "names", None) or {}
    if [str(detector_names[i]) for i in sorted(detector_names)] != names:
        predicted = [remap_boxes(boxes, class_remap) for boxes in predicted]
    report = detection_report(predicted, truth, conf=conf, iou_threshold=iou).to_dict()
    report.update(split=split, conf=conf, iou=iou, class_names=names, max_boxes=max_boxes)
    return report


# === Export ===


def export_detector_onnx(weights: str | Path, out: str | Path, *, imgsz: int = 640, atol: float = 1e-3,
                         dynamic: bool = False) -> Path:
    """Export a detector checkpoint to ONNX and check it against the PyTorch model with onnxruntime.

    Args:
        weights: the trained `.pt` checkpoint.
        out: the `.onnx` file to write.
        imgsz: the square input size baked into the graph.
        atol: largest allowed absolute difference between ONNX and PyTorch raw outputs on a sample.
        dynamic: a dynamic batch axis (and input size), e.g. to run all tiles of a scan in one call.

    Returns:
        The written `.onnx` path.
    """
    from keras_medimg.runs import atomic_path

    weights = Path(weights)
    if not weights.is_file():
        load_detector(weights)  # raises the error that says which checkpoint to pass
    staging = Path(out).parent / f".{Path(out).stem}.export"
    staging.mkdir(parents=True, exist_ok=True)
    # Ultralytics writes the .onnx beside the checkpoint; export a staged copy so the user's folder stays as it was.
    staged_weights = staging / weights.name
    shutil.copyfile(weights, staged_weights)
    detector = load_detector(staged_weights)
    produced = Path(detector.export(format="onnx", imgsz=imgsz, simplify=False, dynamic=dynamic, device="cpu",
                                    verbose=False))
    _verify_onnx(detector, produced, imgsz, atol)
    with atomic_path(out) as tmp:
        shutil.copyfile(produced, tmp)
    shutil.rmtree(staging, ignore_errors=True)
    return Path(out)


def _verify_onnx(detector: Any, onnx_file: Path, imgsz: int, atol: float) -> None:
    import onnxruntime
    import torch

    rng = np.random.default_rng(0)
    sample = rng.random((1, 3, imgsz, imgsz), dtype=np.float32)
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: sample})[0]
    network = detector.model.float().eval()
    with torch.no_grad():
        expected = network(torch.from_numpy(sample))
    expected = (expected[0] if isinstance(expected, (list, tuple)) else expected).cpu().numpy()
    error = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")
    if error > atol:
        raise RuntimeError(
            f"The ONNX export {onnx_file} differs from the PyTorch detector by {error:.3g} (> atol {atol}); "
            "the export is not trustworthy. Report this with your Ultralytics and onnx versions."
        )
