"""Dataset helpers the apps share: the YOLO box-set check, Kaggle class folders, ImageCLEF IDs and truth."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from keras_medimg.datasets.imageclef import truth_by_id, unique_ids
from keras_medimg.datasets.kaggle_brain import read_kaggle_brain
from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.datasets.yolo import check_yolo_dataset
from keras_medimg.errors import InvalidInputError


def _yolo(root, boxes):
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        cv2.imwrite(str(root / "images" / split / "a.png"), np.zeros((16, 16), np.uint8))
        (root / "labels" / split / "a.txt").write_text(boxes)
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: [tumor]\n")
    return root / "data.yaml"


def test_check_yolo_dataset_reads_every_named_split_and_names_a_bad_label(tmp_path):
    found = check_yolo_dataset(_yolo(tmp_path / "ok", "0 0.5 0.5 0.2 0.2\n"))
    assert sorted(found) == ["train", "val"] and [len(v) for v in found.values()] == [1, 1]
    with pytest.raises(InvalidInputError, match="a.txt"):
        check_yolo_dataset(_yolo(tmp_path / "bad", "0 0.95 0.5 0.4 0.1\n"))  # reaches past the right edge
    orphan = _yolo(tmp_path / "orphan", "")
    (tmp_path / "orphan" / "labels" / "val" / "lost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    assert check_yolo_dataset(orphan, splits=("train",))["train"][0].id == "a"  # val not checked
    with pytest.raises(InvalidInputError, match="lost.txt"):
        check_yolo_dataset(orphan)


def test_kaggle_require_all_names_the_missing_class_folder(tmp_path):
    for name in ("glioma", "notumor"):
        (tmp_path / "Training" / name).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "Training" / name / f"{name}1.jpg"), np.zeros((8, 8), np.uint8))
    classes = ["glioma", "meningioma", "notumor"]
    assert len(read_kaggle_brain(tmp_path, "Training", classes)) == 2
    with pytest.raises(InvalidInputError, match=r"missing: meningioma\)") as info:
        read_kaggle_brain(tmp_path, "Training", classes, require_all=True)
    assert info.value.path == tmp_path / "Training" / "meningioma"


def test_unique_ids_keeps_the_first_and_lists_the_repeat_with_its_line(tmp_path):
    samples = [Sample(id="a", path=tmp_path / "a.jpg", meta={"line": 2}), Sample(id="b", path=tmp_path / "b.jpg"),
               Sample(id="a", path=tmp_path / "a.jpg", meta={"line": 4})]
    skipped = Skipped()
    kept = unique_ids(samples, skipped)
    assert [s.id for s in kept] == ["a", "b"] and kept[0].meta["line"] == 2
    rows = skipped.rows()
    assert len(rows) == 1 and rows[0]["line"] in (4, "4") and "listed again" in rows[0]["reason"]


def test_truth_by_id_all_and_manual_concepts(tmp_path):
    samples = [Sample(id="a", path=tmp_path / "a", labels=("C1", "C2"), meta={"manual": ("C1",)}),
               Sample(id="b", path=tmp_path / "b", labels=("C3",))]
    assert truth_by_id(samples) == {"a": ["C1", "C2"], "b": ["C3"]}
    assert truth_by_id(samples, manual=True) == {"a": ["C1"], "b": []}
    assert truth_by_id(samples[1:], manual=True) is None
