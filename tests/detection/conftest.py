"""Tiny detection data made on the fly: bright discs (the "tumour") on a dark noisy background, YOLO layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml


def make_disc_image(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, tuple[int, int, int, int], np.ndarray]:
    """One grey image with a bright disc; returns (image uint8, box x1 y1 x2 y2, mask uint8 0/255)."""
    image = (rng.random((size, size)) * 40).astype(np.uint8)
    radius = int(rng.integers(size // 8, size // 4))
    cx, cy = (int(v) for v in rng.integers(radius + 1, size - radius - 1, size=2))
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (cx, cy), radius, 255, -1)
    image[mask > 0] = 200
    return image, (cx - radius, cy - radius, cx + radius + 1, cy + radius + 1), mask


def write_disc_pairs(folder: Path, rng: np.random.Generator, count: int,
                     size: int = 64) -> list[tuple[Path, Path]]:
    """`count` disc images and their masks as PNGs in `folder`: (image path, mask path) pairs."""
    pairs = []
    for i in range(count):
        image, _, mask = make_disc_image(rng, size)
        cv2.imwrite(str(folder / f"{i}.png"), image)
        cv2.imwrite(str(folder / f"{i}_mask.png"), mask)
        pairs.append((folder / f"{i}.png", folder / f"{i}_mask.png"))
    return pairs


def write_yolo_set(root: Path, *, n_train: int = 8, n_val: int = 4, size: int = 64, seed: int = 0) -> Path:
    """A YOLO dataset with one class 'tumor'; returns its data.yaml."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, (x1, y1, x2, y2), _ = make_disc_image(rng, size)
            cv2.imwrite(str(root / "images" / split / f"{split}{i}.png"), image)
            cx, cy, w, h = (x1 + x2) / 2 / size, (y1 + y2) / 2 / size, (x2 - x1) / size, (y2 - y1) / size
            (root / "labels" / split / f"{split}{i}.txt").write_text(f"0 {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
    data_yaml = root / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                         "names": {0: "tumor"}}))
    return data_yaml


@pytest.fixture(scope="session")
def yolo_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_yolo_set(tmp_path_factory.mktemp("yolo_set"))


@pytest.fixture(scope="session")
def trained_detector(tmp_path_factory: pytest.TempPathFactory, yolo_set: Path):
    """One tiny YOLOv8n trained for one epoch at 64 px, shared by the detection tests."""
    from keras_medimg.detection.yolo import train_detector

    return train_detector(yolo_set, tmp_path_factory.mktemp("detect"), epochs=1, imgsz=64, batch=4, workers=0)
