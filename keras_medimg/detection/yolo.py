"""Ultralytics YOLO detectors (YOLOv8 and the other sizes/families it ships), strictly offline.

Ultralytics reaches for the network in several places: it downloads fonts (Arial.ttf) for its plots and dataset
checks, `yolov8n.pt` for the AMP check, datasets named in a data.yaml, pip packages it thinks are missing, and it
sends usage events. `_offline_ultralytics()` runs before the first `import ultralytics` and closes every one of
these doors: YOLO_OFFLINE/YOLO_AUTOINSTALL, a private config folder holding matplotlib's DejaVuSans as the fonts it
wants, and settings with sync/hub/integrations off. Training from scratch builds the network from its `.yaml`
architecture; pretrained weights must be a local `.pt` file.

Ultralytics writes `labels.cache` files beside the label folders it reads. Our users' datasets must stay
untouched, so training reads a staged copy of the dataset made of symlinks inside the run folder.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from keras_medimg.errors import InvalidInputError, WeightsUnavailableError, require
from keras_medimg.io.annotations import Box
from keras_medimg.io.images import to_rgb_uint8

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_FONTS = ("Arial.ttf", "Arial.Unicode.ttf")
_SPLITS = ("train", "val", "test")


def config_dir() -> Path:
    """Where Ultralytics keeps its settings and fonts for keras-medimg: $MEDIMG_HOME/ultralytics or the user cache."""
    home = os.environ.get("MEDIMG_HOME")
    root = Path(home) if home else Path.home() / ".cache" / "keras-medimg"
    return root / "ultralytics"


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


# === Datasets ===


def _image_files(entry: Any, root: Path, data_yaml: Path, split: str) -> list[Path]:
    """The image files one data.yaml split entry names: a folder, a .txt list of files, or a list of either."""
    entries = entry if isinstance(entry, (list, tuple)) else [entry]
    files: list[Path] = []
    for item in entries:
        path = Path(item)
        path = path if path.is_absolute() else root / path
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file() and path.suffix == ".txt":
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    listed = Path(line.strip())
                    files.append(listed if listed.is_absolute() else path.parent / listed)
        else:
            raise InvalidInputError(
                data_yaml, f"the '{split}' entry '{item}' is neither a folder nor a .txt list of images; "
                "fix the path (relative paths are read from the 'path' key or the file's folder)."
            )
    return files


def _label_file(image: Path) -> Path:
    """YOLO's rule: the label of .../images/x.jpg is .../labels/x.txt."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def stage_dataset(data_yaml: str | Path, out_dir: str | Path) -> Path:
    """Mirror a YOLO dataset as symlinks under `out_dir` and write a data.yaml with absolute paths there.

    Ultralytics then writes its caches into `out_dir`, never beside the user's files.

    Args:
        data_yaml: the dataset's data.yaml (keys path, train, val, optional test, names).
        out_dir: an empty or reusable folder inside the run folder.

    Returns:
        The staged data.yaml.
    """
    data_yaml = Path(data_yaml)
    if not data_yaml.is_file():
        raise InvalidInputError(data_yaml, "the YOLO data.yaml does not exist; pass the dataset's data.yaml or its folder.")
    data = yaml.safe_load(data_yaml.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or "train" not in data or "names" not in data:
        raise InvalidInputError(data_yaml, "a YOLO data.yaml needs at least the keys 'train', 'val' and 'names'.")
    root = Path(data.get("path") or data_yaml.parent)
    root = root if root.is_absolute() else (data_yaml.parent / root)
    out_dir = Path(out_dir)
    staged: dict[str, Any] = {"path": str(out_dir.resolve()), "names": data["names"]}
    for split in _SPLITS:
        if not data.get(split):
            continue
        images_dir = out_dir / "images" / split
        labels_dir = out_dir / "labels" / split
        for folder in (images_dir, labels_dir):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        for image in _image_files(data[split], root, data_yaml, split):
            _link(image, images_dir / image.name)
            label = _label_file(image)
            if label.is_file():
                _link(label, labels_dir / label.name)
        staged[split] = f"images/{split}"
    if "val" not in staged:
        staged["val"] = staged["train"]
    target = out_dir / "data.yaml"
    target.write_text(yaml.safe_dump(staged, sort_keys=False), encoding="utf-8")
    return target


def _link(source: Path, target: Path) -> None:
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
        save_dir: Ultralytics' own run folder (results.csv, args.yaml) inside our run folder.
        metrics: validation metrics Ultralytics reported (precision, recall, mAP50, mAP50-95).
        seconds: wall-clock training time.
    """

    best: Path
    last: Path
    save_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _model_source(model: str, weights: str | None) -> str:
    """The architecture .yaml (from scratch) or a local .pt file; never a name Ultralytics would download."""
    if weights in (None, "", "none"):
        return model if model.endswith(".yaml") else f"{model}.yaml"
    path = Path(weights)
    if weights == "imagenet" or not path.is_file():
        raise WeightsUnavailableError(
            f"Detector weights '{weights}' are not a local file, and keras-medimg never downloads them. Download "
            f"{Path(model).stem}.pt from https://github.com/ultralytics/assets/releases yourself and pass its path "
            "with --set detect.weights=PATH, or set detect.weights to null to train from scratch."
        )
    if path.suffix != ".pt":
        raise InvalidInputError(path, "detector weights must be an Ultralytics .pt checkpoint.")
    return str(path)


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
    verbose: bool = False,
) -> DetectorResult:
    """Train an Ultralytics detector offline, keeping all its files under `out_dir`.

    Args:
        data_yaml: the YOLO dataset's data.yaml (it is staged as symlinks under `out_dir/dataset` first).
        out_dir: our folder for the detector (e.g. `<run>/detect`); Ultralytics' run goes to `out_dir/<name>`.
        model: architecture name (`yolov8n`, `yolov8s`, ... or any Ultralytics model .yaml).
        weights: None to train from scratch, or a local `.pt` checkpoint to fine-tune.
        epochs: training epochs.
        imgsz: square training size in pixels.
        batch: batch size.
        seed: Ultralytics' random seed (with deterministic=True).
        device: "cpu", "0", "cuda:0", ...
        workers: data-loader worker processes (0 loads in the main process).
        patience: early-stopping patience in epochs.
        name: Ultralytics run name inside `out_dir`.
        verbose: let Ultralytics print its per-epoch progress.

    Returns:
        A `DetectorResult` with the best and last checkpoints and the final validation metrics.
    """
    _offline_ultralytics()
    from ultralytics import YOLO

    out_dir = Path(out_dir).resolve()
    source = _model_source(model, weights)
    staged = stage_dataset(data_yaml, out_dir / "dataset")
    detector = YOLO(source)
    started = time.perf_counter()
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
        plots=False,
        verbose=verbose,
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
    )


# === Inference ===


def load_detector(path: str | Path):
    """Load a trained Ultralytics checkpoint (`.pt`) or an exported `.onnx` detector for `detect`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"Detector checkpoint '{path}' does not exist. Pass the weights/best.pt of a `medimg brats train` run."
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
    images: list[np.ndarray],
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
        conf: minimum confidence of a kept box.
        iou: IoU threshold of non-maximum suppression.
        imgsz: inference size (use the training size).
        max_det: most boxes per image.
        device: "cpu", "0", ...

    Returns:
        One list of `Box(x1, y1, x2, y2, label=class name, score)` per image, highest score first.
    """
    if not images:
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


# === Export ===


def export_detector_onnx(weights: str | Path, out: str | Path, *, imgsz: int = 640, atol: float = 1e-3) -> Path:
    """Export a detector checkpoint to ONNX and check it against the PyTorch model with onnxruntime.

    Args:
        weights: the trained `.pt` checkpoint.
        out: the `.onnx` file to write.
        imgsz: the square input size baked into the graph.
        atol: largest allowed absolute difference between ONNX and PyTorch raw outputs on a sample.

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
    produced = Path(detector.export(format="onnx", imgsz=imgsz, simplify=False, dynamic=False, device="cpu",
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
