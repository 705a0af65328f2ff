"""VOC, YOLO and COCO readers and writers: exact conversions between them and errors that name file and line."""

from __future__ import annotations

import json

import pytest

from keras_medimg.errors import InvalidInputError
from keras_medimg.io.annotations import (
    Box,
    read_coco,
    read_coco_images,
    read_voc,
    read_yolo,
    read_yolo_data_yaml,
    write_coco,
    write_voc,
    write_yolo,
    write_yolo_data_yaml,
    yolo_label_path,
)

CLASSES = ["knife", "gun", "battery"]
SIZE = (640, 480)
BOXES = [
    Box(10, 20, 110, 220, "knife"),
    Box(0, 0, 640, 480, "battery"),
    Box(300.5, 100.25, 333.75, 150.5, "gun"),
]


def assert_same_boxes(actual, expected, tol=1e-4):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.label == e.label
        for got, want in zip(a[:4], e[:4]):
            assert got == pytest.approx(want, abs=tol)


def test_voc_round_trip(tmp_path):
    path = write_voc(tmp_path / "a.xml", BOXES, SIZE, "a.png")
    boxes, size = read_voc(path)
    assert size == SIZE
    assert_same_boxes(boxes, BOXES, tol=0)


def test_yolo_round_trip_and_score_column(tmp_path):
    path = write_yolo(tmp_path / "a.txt", BOXES, SIZE, CLASSES)
    assert path.read_text().splitlines()[0].startswith("0 ")
    assert_same_boxes(read_yolo(path, SIZE, CLASSES), BOXES)
    assert [b.label for b in read_yolo(path, SIZE)] == [0, 2, 1]
    (tmp_path / "pred.txt").write_text("1 0.5 0.5 0.25 0.5 0.75\n\n")
    (box,) = read_yolo(tmp_path / "pred.txt", SIZE, CLASSES)
    assert box == Box(240.0, 120.0, 400.0, 360.0, "gun", 0.75)


def test_coco_round_trip_keeps_sizes_and_empty_images(tmp_path):
    images = {"a.png": (SIZE, BOXES), "empty.png": ((32, 32), [])}
    path = write_coco(tmp_path / "a.json", images, CLASSES)
    content = json.loads(path.read_text())
    assert [c["id"] for c in content["categories"]] == [1, 2, 3]
    back = read_coco_images(path)
    assert back["a.png"][0] == SIZE and back["empty.png"] == ((32, 32), [])
    assert_same_boxes(read_coco(path)["a.png"], BOXES, tol=0)


def test_voc_to_yolo_to_coco_to_voc_returns_the_same_boxes(tmp_path):
    boxes, size = read_voc(write_voc(tmp_path / "a.xml", BOXES, SIZE, "a.png"))
    yolo_boxes = read_yolo(write_yolo(tmp_path / "a.txt", boxes, size, CLASSES), size, CLASSES)
    coco_boxes = read_coco(write_coco(tmp_path / "a.json", {"a.png": (size, yolo_boxes)}, CLASSES))["a.png"]
    final, final_size = read_voc(write_voc(tmp_path / "b.xml", coco_boxes, size, "a.png"))
    assert final_size == SIZE
    assert_same_boxes(final, BOXES)


def test_coco_detector_scores_survive(tmp_path):
    scored = [Box(1, 2, 3, 4, "gun", 0.25)]
    back = read_coco(write_coco(tmp_path / "p.json", {"x.png": ((10, 10), scored)}, CLASSES))["x.png"]
    assert back == scored


def test_yolo_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("0 0.5 0.5 0.1 0.1\n0 0.99 0.5 0.2 0.1\n")
    with pytest.raises(InvalidInputError, match="outside") as info:
        read_yolo(path, SIZE, CLASSES)
    assert info.value.line == 2 and "bad.txt, line 2" in str(info.value)
    path.write_text("7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(InvalidInputError, match="class index 7") as info:
        read_yolo(path, SIZE, CLASSES)
    assert info.value.line == 1
    path.write_text("0 0.5 0.5\n")
    with pytest.raises(InvalidInputError, match="5 fields"):
        read_yolo(path, SIZE, CLASSES)
    path.write_text("0 0.5 0.5 0 0.1\n")
    with pytest.raises(InvalidInputError, match="empty"):
        read_yolo(path, SIZE, CLASSES)


def test_voc_errors_name_the_line_of_the_object(tmp_path):
    path = tmp_path / "bad.xml"
    path.write_text(
        "<annotation>\n  <size><width>100</width><height>50</height></size>\n"
        "  <object><name>gun</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>\n"
        "  <object>\n    <name>gun</name>\n"
        "    <bndbox><xmin>20</xmin><ymin>1</ymin><xmax>10</xmax><ymax>9</ymax></bndbox>\n  </object>\n</annotation>\n"
    )
    with pytest.raises(InvalidInputError, match="empty") as info:
        read_voc(path)
    assert info.value.line == 4 and info.value.path == path
    path.write_text("<annotation><object>")
    with pytest.raises(InvalidInputError, match="not valid XML"):
        read_voc(path)
    path.write_text("<annotation></annotation>")
    with pytest.raises(InvalidInputError, match="no <size>"):
        read_voc(path)


def test_coco_errors_name_the_annotation(tmp_path):
    path = tmp_path / "bad.json"
    content = {
        "images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
        "categories": [{"id": 1, "name": "gun"}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [8, 8, 5, 1]}],
    }
    path.write_text(json.dumps(content))
    with pytest.raises(InvalidInputError, match="annotation id 5 .*outside"):
        read_coco(path)
    content["annotations"][0]["category_id"] = 9
    path.write_text(json.dumps(content))
    with pytest.raises(InvalidInputError, match="(?i)annotation id 5"):
        read_coco(path)
    path.write_text('{\n"images": [\n')
    with pytest.raises(InvalidInputError, match="not valid JSON") as info:
        read_coco(path)
    assert info.value.line is not None


def test_writers_refuse_bad_boxes_and_unknown_labels(tmp_path):
    with pytest.raises(InvalidInputError, match="outside"):
        write_voc(tmp_path / "a.xml", [Box(0, 0, 700, 10, "gun")], SIZE, "a.png")
    with pytest.raises(InvalidInputError, match="'sword'"):
        write_yolo(tmp_path / "a.txt", [Box(0, 0, 10, 10, "sword")], SIZE, CLASSES)
    assert not (tmp_path / "a.xml").exists() and not (tmp_path / "a.txt").exists()


def test_data_yaml_round_trip(tmp_path):
    path = write_yolo_data_yaml(tmp_path / "data.yaml", "ds", "images/train", "images/val", CLASSES)
    data = read_yolo_data_yaml(path)
    assert data.class_names == CLASSES
    assert data.root == tmp_path / "ds"
    assert data.train == [tmp_path / "ds" / "images/train"] and data.val == [tmp_path / "ds" / "images/val"]
    assert data.test == []


def test_data_yaml_accepts_name_lists_and_reports_missing_keys(tmp_path):
    path = tmp_path / "data.yaml"
    path.write_text("train: a\nval: [b, c]\nnames: [x, y]\n")
    data = read_yolo_data_yaml(path)
    assert data.root == tmp_path and data.val == [tmp_path / "b", tmp_path / "c"] and data.class_names == ["x", "y"]
    path.write_text("train: a\nnames: {0: x, 2: y}\n")
    with pytest.raises(InvalidInputError, match="no val"):
        read_yolo_data_yaml(path)
    path.write_text("train: a\nval: b\nnames: {0: x, 2: y}\n")
    with pytest.raises(InvalidInputError, match="keys 0..1"):
        read_yolo_data_yaml(path)


def test_yolo_label_path_follows_ultralytics(tmp_path):
    assert yolo_label_path(tmp_path / "images" / "train" / "a.jpg") == tmp_path / "labels" / "train" / "a.txt"
    # Only the last `images` folder is renamed, and a file that happens to be called "images" is not a folder.
    nested = tmp_path / "images" / "set" / "images" / "b.png"
    assert yolo_label_path(nested) == tmp_path / "images" / "set" / "labels" / "b.txt"
    assert yolo_label_path(tmp_path / "scans" / "images") == tmp_path / "scans" / "images.txt"
    assert yolo_label_path(tmp_path / "scans" / "c.tif") == tmp_path / "scans" / "c.txt"  # no images folder: beside it


def test_yolo_edge_boxes_rounded_by_label_tools_are_clipped(tmp_path):
    # labelImg writes 6 decimals: this box ends on the border of a 2048 px wide image, but cx + w/2 = 1.0000005.
    path = tmp_path / "edge.txt"
    path.write_text("0 0.853516 0.500000 0.292969 0.100000\n0 0.0014995 0.5 0.003 0.1\n")
    right, left = read_yolo(path, (2048, 1536), CLASSES)
    assert right.x2 == 2048 and right.x1 == pytest.approx(1448, abs=0.01)
    assert left.x1 == 0 and left.x2 == pytest.approx(6.143, abs=1e-3)
    path.write_text("0 0.5 0.5 1.004 0.1\n")  # 4 px outside a 2048 px image: a wrong box, not rounding
    with pytest.raises(InvalidInputError, match="outside") as info:
        read_yolo(path, (2048, 1536), CLASSES)
    assert info.value.line == 1
    path.write_text("0 1.0002 0.5 0.0002 0.1\n")  # within the tolerance, but wholly beyond the border
    with pytest.raises(InvalidInputError, match="covers none"):
        read_yolo(path, (2048, 1536), CLASSES)


def test_yolo_reads_whole_float_classes_and_refuses_fractions(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("1.0 0.5 0.5 0.25 0.5\n0.000000e+00 5.0e-01 5.0e-01 2.5e-01 5.0e-01\n")
    assert [b.label for b in read_yolo(path, SIZE, CLASSES)] == ["gun", "knife"]
    assert [b.label for b in read_yolo(path, SIZE)] == [1, 0]
    path.write_text("0 0.5 0.5 0.1 0.1\n1.5 0.5 0.5 0.1 0.1\n")
    with pytest.raises(InvalidInputError, match="'1.5' is not a whole number") as info:
        read_yolo(path, SIZE, CLASSES)
    assert info.value.line == 2 and "f.txt, line 2" in str(info.value)


def test_yolo_segmentation_polygons_become_their_enclosing_boxes(tmp_path):
    path = tmp_path / "seg.txt"
    path.write_text("0 0.1 0.1 0.3 0.1 0.3 0.3 0.1 0.3\n1 0.5 0.5 0.25 0.5\n2 0.5 0.2 0.75 0.6 0.25 0.6\n")
    boxes = read_yolo(path, SIZE, CLASSES)
    assert boxes == [
        Box(64.0, 48.0, 192.0, 144.0, "knife"),
        Box(240.0, 120.0, 400.0, 360.0, "gun"),
        Box(160.0, 96.0, 480.0, 288.0, "battery"),
    ]
    path.write_text("0 0.1 0.1 0.3 0.1 0.3 0.3 0.1\n")  # 7 coordinates: not x y pairs
    with pytest.raises(InvalidInputError, match="found 8"):
        read_yolo(path, SIZE, CLASSES)
    path.write_text("0 0.1 0.1 0.3 0.1 0.3 nan 0.1 0.3\n")
    with pytest.raises(InvalidInputError, match="not a number"):
        read_yolo(path, SIZE, CLASSES)


def test_voc_leaves_out_difficult_objects(tmp_path):
    def obj(name, difficult):
        flag = f"<difficult>{difficult}</difficult>" if difficult is not None else ""
        return f"<object><name>{name}</name>{flag}<bndbox><xmin>1</xmin><ymin>2</ymin><xmax>9</xmax><ymax>8</ymax></bndbox></object>"

    path = tmp_path / "d.xml"
    body = obj("knife", 0) + obj("gun", 1) + obj("battery", None) + obj("gun", " 1 ")
    path.write_text(f"<annotation><size><width>10</width><height>10</height></size>{body}</annotation>")
    boxes, _ = read_voc(path)
    assert [b.label for b in boxes] == ["knife", "battery"]
    path.write_text(f"<annotation><size><width>10</width><height>10</height></size>{obj('gun', 'maybe')}</annotation>")
    with pytest.raises(InvalidInputError, match="<difficult> holds 'maybe'"):
        read_voc(path)


def test_data_yaml_retries_roboflow_parent_entries_without_the_leading_dots(tmp_path):
    # Roboflow writes data.yaml beside train/ and valid/, with `../` entries and no `path:`.
    for folder in ("train/images", "valid/images"):
        (tmp_path / folder).mkdir(parents=True)
    path = tmp_path / "data.yaml"
    path.write_text("train: ../train/images\nval: ../valid/images\nnc: 1\nnames: ['gun']\n")
    data = read_yolo_data_yaml(path)
    assert data.train == [tmp_path / "train/images"] and data.val == [tmp_path / "valid/images"]
    # Where the `../` path exists, it is taken as written.
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnames: ['gun']\n")
    assert read_yolo_data_yaml(tmp_path / "sub" / "data.yaml").train == [tmp_path / "sub" / "../train/images"]
    # Where neither exists, the entry is kept as written for the split's reader to report; the names still read.
    path.write_text("train: ../train/images\nval: ../test/images\nnames: {'0': gun, '1': knife}\n")
    data = read_yolo_data_yaml(path)
    assert data.val == [tmp_path / "../test/images"] and data.class_names == ["gun", "knife"]


def test_yolo_label_file_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("\ufeff0 0.5 0.5 0.2 0.2\n", encoding="utf-8")
    (box,) = read_yolo(path, (100, 100))
    assert (box.x1, box.y1, box.x2, box.y2, box.label) == (40.0, 40.0, 60.0, 60.0, 0)
