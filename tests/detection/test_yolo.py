"""YOLO wrapper: offline training, staging that leaves the dataset untouched, detection, ONNX export."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from keras_medimg.detection import yolo
from keras_medimg.errors import InvalidInputError, WeightsUnavailableError
from keras_medimg.io.annotations import Box


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_training_makes_no_network_request(tmp_path, yolo_set, monkeypatch):
    attempts = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError(f"test forbids network access to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: attempts.append(a) or (_ for _ in ()).throw(OSError("no dns")))
    before = _listing(yolo_set.parent)
    result = yolo.train_detector(yolo_set, tmp_path / "detect", epochs=1, imgsz=64, batch=4, workers=0)
    assert attempts == []
    assert result.best.is_file() and result.last.is_file()
    assert result.save_dir.is_relative_to((tmp_path / "detect").resolve())
    assert (result.save_dir / "results.csv").is_file()
    assert {"precision", "recall", "mAP50"} <= set(result.metrics)
    # Ultralytics' label caches went to the staged copy, not into the user's dataset.
    assert _listing(yolo_set.parent) == before
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    assert (USER_CONFIG_DIR / "Arial.ttf").is_file()
    assert SETTINGS["sync"] is False


def test_detect_returns_boxes_in_original_pixels(trained_detector):
    model = yolo.load_detector(trained_detector.best)
    images = [np.zeros((80, 96), np.uint8), np.full((64, 64, 3), 0.5, np.float32)]
    found = yolo.detect(model, images, conf=0.0, imgsz=64)
    assert len(found) == 2
    for boxes, image in zip(found, images):
        assert all(isinstance(b, Box) for b in boxes)
        scores = [b.score for b in boxes]
        assert scores == sorted(scores, reverse=True)
        for b in boxes:
            assert -1 <= b.x1 <= b.x2 <= image.shape[1] + 1 and -1 <= b.y1 <= b.y2 <= image.shape[0] + 1
            assert b.label == "tumor"


def test_export_onnx_is_verified_and_leaves_weights_folder_alone(tmp_path, trained_detector):
    before = _listing(trained_detector.best.parent)
    out = yolo.export_detector_onnx(trained_detector.best, tmp_path / "export" / "detector.onnx", imgsz=64)
    assert out.is_file() and out.stat().st_size > 0
    assert _listing(trained_detector.best.parent) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["detector.onnx"]


def test_missing_or_remote_weights_are_refused(tmp_path, yolo_set):
    with pytest.raises(WeightsUnavailableError, match="never downloads"):
        yolo.train_detector(yolo_set, tmp_path, weights="yolov8n.pt", epochs=1, imgsz=64)
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        yolo.load_detector(tmp_path / "missing.pt")
    not_a_checkpoint = tmp_path / "broken.pt"
    not_a_checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidInputError, match="broken.pt"):
        yolo.load_detector(not_a_checkpoint)


def test_stage_dataset_rejects_missing_split_folder(tmp_path):
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text("path: .\ntrain: images/train\nval: images/val\nnames: {0: tumor}\n")
    with pytest.raises(InvalidInputError, match="'train' entry"):
        yolo.stage_dataset(data_yaml, tmp_path / "staged")
