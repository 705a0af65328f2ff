"""Parsers under attack (property-based, hypothesis): any bytes give a result or our InvalidInputError, never
another exception; what the writers write, the readers read back.

The readers here take files from users' datasets: VOC XML, YOLO txt, COCO JSON, YOLO data.yaml, ImageCLEF CSVs,
DICOM and raster images. `benchmarks/faults.py` runs the coverage-guided (atheris) version for longer.
"""

from __future__ import annotations

import os
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_medimg.datasets.imageclef import read_concepts_csv, read_cui_mapping
from keras_medimg.errors import InvalidInputError, MedImgError
from keras_medimg.io.annotations import Box, read_coco, read_voc, read_yolo, read_yolo_data_yaml, write_voc, write_yolo

# Fixed examples in CI (derandomize), so a build never fails by chance; MEDIMG_FUZZ_EXAMPLES=5000 explores more.
SETTINGS = settings(max_examples=int(os.environ.get("MEDIMG_FUZZ_EXAMPLES", "60")), derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text that looks like the files' own syntax, so the examples reach past the first check.
_XML_BITS = st.sampled_from(["<annotation>", "</annotation>", "<object>", "</object>", "<name>", "</name>", "<bndbox>",
                             "</bndbox>", "<xmin>", "</xmin>", "<ymax>", "</ymax>", "<size>", "<width>", "</width>",
                             "<height>", "12", "-3", "1e9", "nan", "cat", "&amp;", "<!DOCTYPE x [<!ENTITY a 'b'>]>", "\x00"])
_CSV_BITS = st.sampled_from(["ID", "CUIs", "Canonical name", "\t", ",", ";", "C0040405", "C12", "img_1", "\n", "\"", "é",
                             "\r\n", " ", "\ufeff"])
_YOLO_BITS = st.sampled_from(["0", "1", "17", "-1", "0.5", "1.5", "nan", "inf", " ", "\n", "\t", "a", "1e-300"])


def _assert_clean(read, path) -> None:
    try:
        read(path)
    except MedImgError:
        pass  # our own, with a message naming the file


@SETTINGS
@given(st.one_of(st.binary(max_size=400), st.lists(_XML_BITS, max_size=40).map(lambda parts: "".join(parts).encode())))
def test_voc_reader_raises_only_our_error(tmp_path, data):
    path = tmp_path / "a.xml"
    path.write_bytes(data)
    _assert_clean(read_voc, path)


@SETTINGS
@given(st.one_of(st.binary(max_size=300), st.lists(_YOLO_BITS, max_size=60).map(lambda parts: "".join(parts).encode())))
def test_yolo_reader_raises_only_our_error(tmp_path, data):
    path = tmp_path / "a.txt"
    path.write_bytes(data)
    _assert_clean(lambda p: read_yolo(p, (64, 48), class_names=["a", "b"]), path)


@SETTINGS
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_coco_and_data_yaml_readers_raise_only_our_error(tmp_path, data):
    (tmp_path / "c.json").write_bytes(data)
    _assert_clean(read_coco, tmp_path / "c.json")
    (tmp_path / "data.yaml").write_bytes(data)
    _assert_clean(read_yolo_data_yaml, tmp_path / "data.yaml")


@SETTINGS
@given(st.one_of(st.binary(max_size=300), st.lists(_CSV_BITS, max_size=60).map(lambda parts: "".join(parts).encode())))
def test_imageclef_csv_readers_raise_only_our_error(tmp_path, data):
    (tmp_path / "c.csv").write_bytes(data)
    _assert_clean(read_concepts_csv, tmp_path / "c.csv")
    _assert_clean(read_cui_mapping, tmp_path / "c.csv")


_NAMES = st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=8)


@st.composite
def boxes_in(draw, width: int = 640, height: int = 480):
    x1 = draw(st.integers(0, width - 2))
    y1 = draw(st.integers(0, height - 2))
    x2 = draw(st.integers(x1 + 1, width))
    y2 = draw(st.integers(y1 + 1, height))
    return Box(float(x1), float(y1), float(x2), float(y2), draw(_NAMES))


@SETTINGS
@given(st.lists(boxes_in(), max_size=12))
def test_voc_round_trip_keeps_every_box(tmp_path, boxes):
    path = write_voc(tmp_path / "r.xml", boxes, (640, 480), "r.png")
    read, size = read_voc(path)
    assert size == (640, 480)
    assert [(b.x1, b.y1, b.x2, b.y2, b.label) for b in read] == [(b.x1, b.y1, b.x2, b.y2, b.label) for b in boxes]


@SETTINGS
@given(st.lists(boxes_in(), max_size=12))
def test_yolo_round_trip_keeps_boxes_within_a_pixel(tmp_path, boxes):
    names = sorted({b.label for b in boxes}) or ["a"]
    path = write_yolo(tmp_path / "r.txt", boxes, (640, 480), names)
    read = read_yolo(path, (640, 480), class_names=names)
    assert [b.label for b in read] == [b.label for b in boxes]
    for got, want in zip(read, boxes):
        assert np.allclose([got.x1, got.y1, got.x2, got.y2], [want.x1, want.y1, want.x2, want.y2], atol=0.01)


@pytest.mark.parametrize("reader_name", ["read_dicom", "read_image"])
@SETTINGS
@given(data=st.binary(max_size=600))
def test_image_readers_raise_only_our_error_on_any_bytes(tmp_path, reader_name, data):
    from keras_medimg.io import dicom, images

    reader = {"read_dicom": dicom.read_dicom, "read_image": images.read_image}[reader_name]
    for name, prefix in (("x.dcm", b"\x00" * 128 + b"DICM"), ("x.png", b"\x89PNG\r\n\x1a\n"), ("x.bin", b"")):
        path = tmp_path / name
        path.write_bytes(prefix + data)
        try:
            reader(path)
        except InvalidInputError:
            pass
