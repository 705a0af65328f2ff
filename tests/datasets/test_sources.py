"""list_images: the one rule for reading a folder of images (ids by relative path, DICOM, skipped files, exclude)."""

import shutil
import struct
import zlib
from pathlib import Path

import keras
import numpy as np
import pydicom.data
import pytest

from keras_medimg.datasets.pipeline import predict_samples
from keras_medimg.datasets.records import Skipped
from keras_medimg.datasets.sources import list_images
from keras_medimg.errors import InvalidInputError
from keras_medimg.io.dicom import read_dicom
from keras_medimg.io.images import read_pixels, write_image

MR = Path(pydicom.data.get_testdata_file("MR_small.dcm"))


def _image(path: Path, level: float = 0.5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_image(path, np.full((6, 6), level, np.float32))


def _bomb(path: Path) -> Path:
    """A 74-byte PNG whose header claims 100000 x 100000 pixels."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))  # fmt: skip
    return path


def test_ids_are_relative_paths_so_same_names_in_subfolders_and_same_stems_stay_apart(tmp_path):
    for name in ("a.png", "sub/a.png", "b.png", "b.jpg", "sub/deeper/c.tif", "d.bmp"):
        _image(tmp_path / name)
    samples = list_images(tmp_path)
    assert [(s.id, s.path.relative_to(tmp_path).as_posix()) for s in samples] == [
        ("a", "a.png"),
        ("b.jpg", "b.jpg"),  # a shared stem keeps its suffix, for both files
        ("b.png", "b.png"),
        ("d", "d.bmp"),
        ("sub/a", "sub/a.png"),
        ("sub/deeper/c", "sub/deeper/c.tif"),
    ]
    assert [s.id for s in list_images(tmp_path, recursive=False)] == ["a", "b.jpg", "b.png", "d"]
    assert [s.id for s in list_images(tmp_path / "sub" / "a.png")] == ["a"]


def test_dicom_files_are_listed_with_or_without_suffix_and_read_through_the_dicom_reader(tmp_path):
    shutil.copy(MR, tmp_path / "scan.dcm")
    shutil.copy(MR, tmp_path / "IM000001")  # how scanners name files
    shutil.copy(MR, tmp_path / "1.2.840.113619.2.55.3")  # named by UID: a 'suffix' that is not one
    samples = list_images(tmp_path)
    assert [s.id for s in samples] == ["1.2.840.113619.2.55.3", "IM000001", "scan"]
    expected = read_dicom(MR).pixels
    for sample in samples:
        np.testing.assert_array_equal(read_pixels(sample.path), expected)  # windowed by the DICOM reader
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.GlobalAveragePooling2D()])
    skipped = Skipped()
    outputs, kept = predict_samples(model, samples, image_size=8, channels=1, batch_size=2, skipped=skipped)
    assert len(kept) == 3 and not skipped and np.allclose(outputs, outputs[0]) and outputs[0, 0] > 0


def test_other_files_are_listed_in_skipped_and_hidden_ones_left_out_silently(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "README").write_text("no suffix, not DICOM")
    (tmp_path / ".DS_Store").write_bytes(b"\0" * 10)
    _image(tmp_path / ".thumbnails" / "a.png")
    skipped = Skipped()
    assert [s.id for s in list_images(tmp_path, skipped=skipped)] == ["a"]
    rows = {Path(row["path"]).name: row["reason"] for row in skipped.rows()}
    assert set(rows) == {"notes.txt", "README"}
    assert "not an image this tool reads: .txt" in rows["notes.txt"] and "not DICOM" in rows["README"]


def test_exclude_leaves_out_a_run_folder_inside_the_source(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "runs" / "predict" / "overlay.png")
    _image(tmp_path / "b.png")
    assert [s.id for s in list_images(tmp_path, exclude=[tmp_path / "runs" / "predict"])] == ["a", "b"]
    assert [s.id for s in list_images(tmp_path, exclude=[tmp_path / "b.png"])] == ["a", "runs/predict/overlay"]


def test_an_empty_source_names_the_folder_and_the_suffixes_accepted(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(InvalidInputError, match=r"empty: The folder holds no images this tool reads \(\.png, .*\.dcm"):
        list_images(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InvalidInputError, match="not an image this tool reads"):
        list_images(tmp_path / "notes.txt")
    with pytest.raises(InvalidInputError, match="does not exist"):
        list_images(tmp_path / "nowhere")


def test_a_csv_lists_ids_in_its_order_and_reports_missing_and_ambiguous_ones(tmp_path):
    for name in ("train/x.jpg", "train/y.png", "train/sub/z.png", "train/w.png", "train/w.jpg"):
        _image(tmp_path / name)
    (tmp_path / "train_ids.csv").write_text("ID,CUIs\ny,C1\nsub/z,C2\nx,\nw.png,\n", encoding="utf-8")
    samples = list_images(tmp_path / "train_ids.csv")
    assert [(s.id, s.path.name, s.meta["line"]) for s in samples] == [("y", "y.png", 2), ("sub/z", "z.png", 3), ("x", "x.jpg", 4), ("w.png", "w.png", 5)]
    (tmp_path / "train_bad.csv").write_text("ID\nw\nq\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"2 problems: line 2: image 'w' matches 2 files \(w.jpg, w.png\).*line 3: image 'q' has no file"):
        list_images(tmp_path / "train_bad.csv")


def test_a_header_claiming_100000_squared_pixels_is_skipped_not_a_crash(tmp_path):
    _image(tmp_path / "a.png", 0.25)
    _bomb(tmp_path / "bomb.png")
    samples = list_images(tmp_path)
    with pytest.raises(InvalidInputError, match="100000 x 100000"):
        read_pixels(samples[1].path)
    skipped = Skipped()
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.GlobalAveragePooling2D()])
    outputs, kept = predict_samples(model, samples, image_size=8, channels=1, skipped=skipped)
    assert [s.id for s in kept] == ["a"] and np.allclose(outputs[:, 0], 0.25, atol=1e-2)
    assert [Path(f.path).name for f in skipped] == ["bomb.png"] and "100000 x 100000" in skipped.rows()[0]["reason"]
