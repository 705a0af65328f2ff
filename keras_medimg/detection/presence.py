"""Lesion presence from a detector: train the library's YOLO stage on samples' boxes, then flag new images.

For pipelines that route an image by whether it has a region of interest (e.g. ROI-aware mammography) when no
radiologist's annotation exists: `train_presence_detector` fits a one-class detector on the boxes of prepared
samples (mapped into the prepared pixels by `datasets.prepared.prepared_boxes`), `detect_presence` says, per
image, whether it finds a box at `conf` or above.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Sequence

from keras_medimg.datasets.records import Sample

log = logging.getLogger(__name__)


def train_presence_detector(work: str | Path, train: Sequence[Sample], val: Sequence[Sample], target: str | Path, *,
                            model: str, epochs: int, imgsz: int, seed: int = 0, class_name: str = "lesion") -> Path:
    """Train a one-class detector on the boxes of `train` (validated on `val`) in `work`; copy its best weights
    (else its last) to `target` and return it."""
    from keras_medimg.datasets.prepared import write_box_yolo_set
    from keras_medimg.detection.yolo import train_detector

    work = Path(work)
    data_yaml = write_box_yolo_set(work / "data", {"train": train, "val": val}, class_name)
    result = train_detector(data_yaml, work / "detector", model=model, epochs=epochs, imgsz=imgsz, seed=seed)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.best if Path(result.best).is_file() else result.last, target)
    log.info("[detector] trained on %d images with boxes: %s", sum(bool(s.boxes) for s in train), result.metrics)
    return target


def detect_presence(detector: str | Path, samples: Sequence[Sample], *, conf: float, imgsz: int) -> list[bool]:
    """Per sample: does the detector at `detector` find a box at confidence `conf` or above in its image?"""
    from keras_medimg.detection.yolo import detect, load_detector
    from keras_medimg.io.images import read_image

    model = load_detector(detector)
    flags = []
    for sample in samples:
        [found] = detect(model, [read_image(sample.path)], conf=conf, imgsz=imgsz)
        flags.append(bool(found))
    return flags
