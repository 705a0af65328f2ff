"""Lesion presence: one flag per image, True when the detector finds a box at the confidence asked."""

from pathlib import Path

import numpy as np

from keras_medimg.datasets.records import Sample
from keras_medimg.detection import presence, yolo
from keras_medimg.io.images import write_image


def test_detect_presence_flags_each_image(tmp_path, monkeypatch):
    for name, value in (("a", 0.0), ("b", 1.0)):
        write_image(tmp_path / f"{name}.png", np.full((8, 8), value, np.float32), bits=8)
    seen = {}
    monkeypatch.setattr(yolo, "load_detector", lambda path: seen.setdefault("path", Path(path)))
    monkeypatch.setattr(yolo, "detect", lambda model, images, conf, imgsz: [[(0, 0, 1, 1)] if images[0].max() > conf * 255 else []])
    samples = [Sample(id=n, path=tmp_path / f"{n}.png") for n in ("a", "b")]
    assert presence.detect_presence(tmp_path / "d.pt", samples, conf=0.5, imgsz=32) == [False, True]
    assert seen["path"] == tmp_path / "d.pt"
