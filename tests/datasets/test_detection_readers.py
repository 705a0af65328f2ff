"""YOLO and VOC folder readers: boxes in pixels with class names, every bad file named with its line."""

import pytest

from keras_medimg.datasets.voc import read_voc_folder
from keras_medimg.datasets.yolo import read_yolo_folder
from keras_medimg.errors import InvalidInputError
from keras_medimg.io.annotations import Box, write_voc, write_yolo, write_yolo_data_yaml

NAMES = ["glioma", "meningioma", "pituitary"]


@pytest.fixture
def yolo_root(tmp_path, make_image):
    for split, stems in (("train", ["a", "b", "c"]), ("val", ["d"])):
        for stem in stems:
            make_image(tmp_path / "images" / split / f"{stem}.jpg", (40, 50))
    write_yolo(tmp_path / "labels/train/a.txt", [Box(5, 10, 25, 30, "glioma"), Box(30, 0, 50, 20, "pituitary")], (50, 40), NAMES)
    write_yolo(tmp_path / "labels/train/b.txt", [], (50, 40), NAMES)  # empty label file = background
    write_yolo(tmp_path / "labels/val/d.txt", [Box(0, 0, 10, 10, "meningioma")], (50, 40), NAMES)
    write_yolo_data_yaml(tmp_path / "data.yaml", tmp_path, "images/train", "images/val", NAMES)
    return tmp_path


def test_yolo_reads_boxes_in_pixels_with_names(yolo_root):
    samples = read_yolo_folder(yolo_root / "data.yaml")
    assert [s.id for s in samples] == ["a", "b", "c"]
    a = samples[0]
    assert [tuple(round(v, 4) for v in box[:4]) for box in a.boxes] == [(5, 10, 25, 30), (30, 0, 50, 20)]
    assert [box.label for box in a.boxes] == ["glioma", "pituitary"] and a.labels == ["glioma", "pituitary"]
    assert a.meta["size"] == (50, 40)
    assert samples[2].boxes == [] and samples[2].meta["label_path"] is None  # no label file: background
    (d,) = read_yolo_folder(yolo_root, "val")
    assert d.boxes[0].label == "meningioma"


def test_yolo_without_data_yaml_keeps_indices(yolo_root):
    (yolo_root / "data.yaml").unlink()
    samples = read_yolo_folder(yolo_root, "train")
    assert samples[0].boxes[0].label == 0


def test_yolo_list_file_entries_find_labels_by_the_images_folder_rule(yolo_root):
    (yolo_root / "train.txt").write_text("images/train/a.jpg\n\nimages/val/d.jpg\n")
    write_yolo_data_yaml(yolo_root / "data.yaml", None, "train.txt", "images/val", NAMES)
    samples = read_yolo_folder(yolo_root / "data.yaml")
    assert [s.id for s in samples] == ["a", "d"]
    assert samples[1].meta["label_path"] == yolo_root / "labels" / "val" / "d.txt"
    assert [b.label for b in samples[1].boxes] == ["meningioma"]


def test_yolo_errors_name_file_and_line(yolo_root):
    (yolo_root / "labels/train/b.txt").write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.1 0.1\n")
    (yolo_root / "labels/train/c.txt").write_text("1 0.9 0.5 0.4 0.2\n")
    (yolo_root / "labels/train/ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(InvalidInputError) as info:
        read_yolo_folder(yolo_root / "data.yaml")
    error = info.value
    assert error.path.name == "b.txt" and error.line == 2 and "class index 7" in str(error)
    assert "c.txt, line 1" in str(error) and "outside" in str(error)
    assert "ghost.txt" in str(error) and "no image" in str(error)


def test_yolo_missing_split_and_folder(yolo_root, tmp_path_factory):
    with pytest.raises(InvalidInputError, match="no 'test' entry"):
        read_yolo_folder(yolo_root, "test")
    with pytest.raises(InvalidInputError, match="Neither"):
        read_yolo_folder(tmp_path_factory.mktemp("x") / "nothing")


@pytest.fixture
def voc_root(tmp_path, make_image):
    for stem in ("x1", "x2"):
        make_image(tmp_path / "JPEGImages" / f"{stem}.jpg", (30, 60))
        write_voc(tmp_path / "Annotations" / f"{stem}.xml", [Box(1, 2, 20, 25, "knife")], (60, 30), f"{stem}.jpg")
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text("x2\n")
    return tmp_path


def test_voc_reads_folder_and_split(voc_root):
    samples = read_voc_folder(voc_root)
    assert [s.id for s in samples] == ["x1", "x2"]
    assert samples[0].boxes == [Box(1, 2, 20, 25, "knife")] and samples[0].path.name == "x1.jpg"
    assert [s.id for s in read_voc_folder(voc_root, split="val")] == ["x2"]


def test_voc_errors_name_the_annotation(voc_root):
    (voc_root / "JPEGImages" / "x2.jpg").unlink()
    with pytest.raises(InvalidInputError) as info:
        read_voc_folder(voc_root, class_names=["gun"])
    assert info.value.path.name == "x1.xml" and "Unknown object name(s) knife" in str(info.value)
    assert "x2.xml" in str(info.value) and "No image" in str(info.value)


def test_yolo_ignores_the_classes_txt_labelimg_writes_beside_the_labels(yolo_root):
    (yolo_root / "labels/train/classes.txt").write_text("glioma\r\nmeningioma\r\npituitary\r\n")
    assert [s.id for s in read_yolo_folder(yolo_root / "data.yaml")] == ["a", "b", "c"]
    assert [s.id for s in read_yolo_folder(yolo_root, "train")] == ["a", "b", "c"]  # without a data.yaml too


def test_yolo_reads_a_roboflow_export(tmp_path, make_image):
    # Roboflow: <split>/images and <split>/labels, and a data.yaml whose entries start with '../' (no path: key).
    for split in ("train", "valid"):
        make_image(tmp_path / split / "images" / "a.jpg", (40, 50))
        write_yolo(tmp_path / split / "labels" / "a.txt", [Box(5, 10, 25, 30, "glioma")], (50, 40), NAMES)
    (tmp_path / "data.yaml").write_text(f"train: ../train/images\nval: ../valid/images\n\nnc: 3\nnames: {NAMES}\n")
    (sample,) = read_yolo_folder(tmp_path / "data.yaml", "val")
    assert sample.path == tmp_path / "valid/images/a.jpg" and sample.labels == ["glioma"]
