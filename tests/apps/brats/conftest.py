"""A tiny brain set in the study's layouts (Kaggle classes + YOLO box set + masks) and tiny brats settings."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from keras_medimg.apps.brats.config import BratsConfig
from keras_medimg.config import load_config

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


def _brain(rng: np.random.Generator, label: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A grey head-like ellipse with a class-specific bright lesion; returns (image, mask)."""
    image = np.zeros((size, size), np.uint8)
    cv2.ellipse(image, (size // 2, size // 2), (size * 2 // 5, size * 9 // 20), 0, 0, 360, 70, -1)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    mask = np.zeros_like(image)
    centre = {"glioma": (0.4, 0.35), "meningioma": (0.22, 0.5), "pituitary": (0.5, 0.7)}.get(label)
    if centre is not None:
        radius = {"glioma": 0.14, "meningioma": 0.1, "pituitary": 0.06}[label] * size
        cx = int(centre[0] * size + rng.integers(-2, 3))
        cy = int(centre[1] * size + rng.integers(-2, 3))
        cv2.circle(mask, (cx, cy), int(radius), 255, -1)
        image[mask > 0] = {"glioma": 220, "meningioma": 170, "pituitary": 250}[label]
    return image, mask


def write_brain_set(root: Path, *, n_per_class: int = 4, size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split in ("Training", "Testing"):
        count = n_per_class if split == "Training" else max(1, n_per_class // 2)
        yolo_split = {"Training": "train", "Testing": "test"}[split]
        for folder in ("images", "labels"):
            (root / "detection" / folder / yolo_split).mkdir(parents=True, exist_ok=True)
        for label in CLASSES:
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image, mask = _brain(rng, label, size)
                stem = f"{split[:2].lower()}_{label}_{i}"
                cv2.imwrite(str(root / split / label / f"{stem}.jpg"), image)
                (root / "masks").mkdir(exist_ok=True)
                cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask)
                cv2.imwrite(str(root / "detection" / "images" / yolo_split / f"{stem}.png"), image)
                ys, xs = np.nonzero(mask)
                lines = ""
                if len(xs):
                    x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
                    lines = f"0 {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} {(x2 - x1) / size:.6f} {(y2 - y1) / size:.6f}\n"
                (root / "detection" / "labels" / yolo_split / f"{stem}.txt").write_text(lines)
    (root / "detection" / "data.yaml").write_text(yaml.safe_dump(
        {"path": str(root / "detection"), "train": "images/train", "val": "images/test", "test": "images/test",
         "names": {0: "tumor"}}))
    return root


@pytest.fixture(scope="session")
def brain_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_brain_set(tmp_path_factory.mktemp("brain"))


def tiny_config(root: Path, **sets: object) -> BratsConfig:
    """Seconds-long settings: 64 px, one epoch, VGG16, the study backbone that builds and traces fastest."""
    overrides = [
        f"data.root={root}", "detect.epochs=1", "detect.imgsz=64", "detect.batch=8", "detect.conf=0.01",
        "model.backbone=vgg16", "model.image_size=32", "train.epochs=1", "train.batch_size=8", "train.verbose=0",
        "classify.compare_sources=[whole]",
    ] + [f"{k}={v}" for k, v in sets.items()]
    return load_config(BratsConfig, app="brats", overrides=overrides)
