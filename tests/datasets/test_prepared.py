"""Prepared samples: boxes follow the crop and scale into the prepared image, and into a YOLO set."""

from pathlib import Path

import numpy as np

from keras_medimg.datasets.prepared import prepared_boxes, write_box_yolo_set
from keras_medimg.datasets.records import Sample
from keras_medimg.io.annotations import Box
from keras_medimg.io.images import write_image


def test_boxes_map_into_prepared_pixels_and_yolo_labels(tmp_path):
    write_image(tmp_path / "a.png", np.zeros((40, 40), np.float32), bits=8)
    sample = Sample(id="a", path=tmp_path / "a.png", label="malignant", boxes=[Box(30, 20, 70, 60), Box(200, 200, 210, 210)],
                    meta={"prepared": {"crop_y0": 10.0, "crop_x0": 20.0, "scale": 0.5}})
    assert prepared_boxes(sample) == [(5.0, 5.0, 25.0, 25.0), (90.0, 95.0, 95.0, 100.0)]
    assert prepared_boxes(Sample(id="b", path=Path("b.png"), boxes=[Box(1, 2, 3, 4)])) == [(1, 2, 3, 4)]
    data = write_box_yolo_set(tmp_path / "yolo", {"train": [sample], "val": []})
    assert data.is_file() and (tmp_path / "yolo/images/train/a.png").is_file()
    lines = (tmp_path / "yolo/labels/train/a.txt").read_text().split("\n")
    lines = [line for line in lines if line.strip()]
    assert len(lines) == 1  # the box outside the image is dropped
    assert [float(v) for v in lines[0].split()] == [0, 0.375, 0.375, 0.5, 0.5]


def test_cache_folder_depends_on_the_key(tmp_path, monkeypatch):
    from keras_medimg.datasets.prepared import cache_folder

    monkeypatch.setenv("MEDIMG_HOME", str(tmp_path))
    a, b = cache_folder("roi", {"root": "x", "size": 64}), cache_folder("roi", {"size": 64, "root": "x"})
    assert a == b and a.parent == tmp_path / "prepared" and a.name.startswith("roi-")
    assert cache_folder("roi", {"root": "x", "size": 128}) != a
