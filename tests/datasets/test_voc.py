"""VOC sets in both layouts: 16-bit PNG and DICOM scans, class order, every bad file named or skipped, the split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from keras_medimg.datasets.records import Skipped
from keras_medimg.datasets.voc import read_voc_dataset, split_dataset
from keras_medimg.errors import InvalidInputError
from keras_medimg.io.annotations import Box, write_voc
from keras_medimg.io.images import write_image


def _scan(path: Path, size=(40, 30)) -> None:
    write_image(path, (np.arange(size[0] * size[1]).reshape(size[1], size[0]) * 50).astype(np.uint16), bits=16)


def _dicom(path: Path, pixels: np.ndarray) -> None:
    """A DX scan with a 1500..2500 window."""
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.PhotometricInterpretation, ds.SamplesPerPixel = "DX", "MONOCHROME2", 1
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.WindowCenter, ds.WindowWidth = 2000, 1000
    ds.PixelData = pixels.astype("<u2").tobytes()
    dcmwrite(path, ds, enforce_file_format=True)


def _standard(root: Path, n: int = 4, folder: str = "JPEGImages") -> Path:
    for i in range(n):
        _scan(root / folder / f"s{i}.png")
        label = "key" if i % 2 else "zipper"
        write_voc(root / "Annotations" / f"s{i}.xml", [Box(1, 2, 10, 12, label)], (40, 30), f"s{i}.png")
    return root


def test_standard_layout_with_any_image_folder_and_split_files(tmp_path):
    root = _standard(tmp_path, folder="scans/part1")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for name, ids in (("train", "s0\ns1\n"), ("val", "s2\n"), ("test", "s3\n")):
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text(ids)
    dataset = read_voc_dataset(root, class_names=["zipper", "key"])
    assert dataset.layout == "standard" and [s.id for s in dataset.samples] == ["s0", "s1", "s2", "s3"]
    assert dataset.class_names == ["zipper", "key"]  # the given order, not sorted
    assert dataset.samples[1].boxes == [Box(1, 2, 10, 12, "key")]
    parts = split_dataset(dataset)
    assert [[s.id for s in parts[k]] for k in ("train", "val", "test")] == [["s0", "s1"], ["s2"], ["s3"]]
    assert read_voc_dataset(root).class_names == ["key", "zipper"]  # from the XML, sorted


def test_flat_labelimg_layout_and_dicom(tmp_path):
    from keras_medimg.preprocessing.bit_depth import Conversion, read_scan

    (tmp_path / "c").mkdir()
    _dicom(tmp_path / "c" / "three.dcm", np.tile(np.arange(0, 4000, 100, dtype=np.uint16), (30, 1)))
    write_voc(tmp_path / "c" / "three.xml", [Box(2, 2, 8, 8, "watch")], (40, 30), "three.dcm")
    _scan(tmp_path / "a" / "one.png")
    write_voc(tmp_path / "a" / "one.xml", [Box(0, 0, 5, 5, "watch")], (40, 30), "one.png")
    _scan(tmp_path / "b" / "two.tif")
    write_voc(tmp_path / "b" / "two.xml", [], (40, 30), "two.tif")
    dataset = read_voc_dataset(tmp_path)
    assert dataset.layout == "flat" and [s.id for s in dataset.samples] == ["one", "three", "two"]
    assert dataset.samples[2].boxes == [] and dataset.class_names == ["watch"]
    # DICOM through its window: 1500..2500 -> 0..255, so the left third is black and the right third white.
    row = read_scan(dataset.samples[1].path, Conversion("dicom"))[0]
    assert row[:15].max() == 0 and row[26:].min() == 255 and 0 < row[20] < 255


def test_bad_files_are_errors_naming_them_or_skipped(tmp_path):
    root = _standard(tmp_path)
    (root / "Annotations" / "s0.xml").write_text("<annotation><size>")  # bad XML
    write_voc(root / "Annotations" / "s1.xml", [Box(1, 2, 10, 12, "gun")], (40, 30), "s1.png")  # unknown class
    (root / "Annotations" / "s2.xml").write_text(
        "<annotation><size><width>40</width><height>30</height></size><object><name>key</name><bndbox><xmin>30</xmin>"
        "<ymin>2</ymin><xmax>60</xmax><ymax>9</ymax></bndbox></object></annotation>")  # box outside the image
    _scan(root / "JPEGImages" / "lonely.png")  # image without XML
    write_voc(root / "Annotations" / "ghost.xml", [], (40, 30), "ghost.png")  # XML without image
    with pytest.raises(InvalidInputError) as info:
        read_voc_dataset(root, class_names=["zipper", "key"], strict=True)
    message = str(info.value)
    for part in ("ghost.xml", "s0.xml", "not valid XML", "s1.xml", "gun", "s2.xml", "outside", "lonely.png"):
        assert part in message, part
    skipped = Skipped()
    dataset = read_voc_dataset(root, class_names=["zipper", "key"], strict=False, skipped=skipped)
    assert [s.id for s in dataset.samples] == ["s3"]
    assert {Path(p).name for p in skipped.paths()} == {"ghost.xml", "s0.xml", "s1.xml", "s2.xml", "lonely.png"}


def test_size_mismatch_between_xml_and_image_is_refused(tmp_path):
    root = _standard(tmp_path, n=1)
    write_voc(root / "Annotations" / "s0.xml", [Box(1, 2, 10, 12, "zipper")], (80, 60), "s0.png")
    with pytest.raises(InvalidInputError, match="80x60 but s0.png is 40x30"):
        read_voc_dataset(root)


def test_seeded_split_is_60_20_20_stratified_by_rarest_class(tmp_path):
    for i in range(40):
        _scan(tmp_path / "JPEGImages" / f"s{i:02d}.png")
        boxes = [Box(1, 1, 5, 5, "button")] + ([Box(6, 6, 12, 12, "key")] if i % 4 == 0 else [])
        write_voc(tmp_path / "Annotations" / f"s{i:02d}.xml", boxes, (40, 30), f"s{i:02d}.png")
    dataset = read_voc_dataset(tmp_path)
    parts = split_dataset(dataset, seed=3)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [24, 8, 8]
    assert split_dataset(dataset, seed=3) == parts and split_dataset(dataset, seed=4) != parts
    keys = {k: sum("key" in s.labels for s in parts[k]) for k in parts}
    assert keys == {"train": 6, "val": 2, "test": 2}  # the 10 scans with a key spread 60/20/20


def test_two_images_with_one_id_are_named_in_both_layouts(tmp_path):
    root = _standard(tmp_path / "standard", n=2, folder="scans/a")
    _scan(root / "scans" / "b" / "s1.png")  # a second s1 in another image folder
    skipped = Skipped()
    dataset = read_voc_dataset(root, strict=False, skipped=skipped)
    assert [s.id for s in dataset.samples] == ["s0", "s1"]
    assert any("also named s1" in str(row) and "only one" in str(row) for row in skipped.rows())
    with pytest.raises(InvalidInputError, match="also named s1"):
        read_voc_dataset(root)
    flat = tmp_path / "flat"
    for folder in ("a", "b"):
        _scan(flat / folder / "s1.png")
        write_voc(flat / folder / "s1.xml", [Box(1, 2, 10, 12, "key")], (40, 30), "s1.png")
    skipped = Skipped()
    dataset = read_voc_dataset(flat, strict=False, skipped=skipped)
    assert dataset.layout == "flat" and [s.id for s in dataset.samples] == ["s1"]
    assert any("unique across the set" in str(row) for row in skipped.rows())


def test_split_files_with_a_byte_order_mark_and_unknown_ids(tmp_path):
    root = _standard(tmp_path)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    # Windows tools write a BOM and CRLF: the first id must still be s0, not '\ufeffs0'.
    for name, ids in (("train", b"s0\r\ns1\r\n"), ("val", b"s2\r\n"), ("test", b"s3\r\n")):
        (root / "ImageSets" / "Main" / f"{name}.txt").write_bytes(b"\xef\xbb\xbf" + ids)
    dataset = read_voc_dataset(root)
    assert dataset.splits["train"] == ["s0", "s1"]
    parts = split_dataset(dataset)
    assert [[s.id for s in parts[k]] for k in ("train", "val", "test")] == [["s0", "s1"], ["s2"], ["s3"]]
    # An id that names no annotation or image is reported with its file and line, not silently dropped.
    (root / "ImageSets" / "Main" / "val.txt").write_bytes(b"\xef\xbb\xbfs2\n\ns9\n")
    with pytest.raises(InvalidInputError, match="names no annotation") as info:
        read_voc_dataset(root)
    assert info.value.path.name == "val.txt" and info.value.line == 3 and "s9" in str(info.value)
    skipped = Skipped()
    dataset = read_voc_dataset(root, strict=False, skipped=skipped)
    assert [(Path(r["path"]).name, r["line"]) for r in skipped.rows()] == [("val.txt", 3)]
    assert [s.id for s in split_dataset(dataset)["val"]] == ["s2"]


def test_annotations_in_subfolders_pair_with_the_image_at_the_same_path(tmp_path):
    """CVAT / Datumaro: Annotations/<sub>/<id>.xml, JPEGImages/<sub>/<id>.png, split ids <sub>/<id>."""
    for sub in ("task1", "task2"):  # the same file name in two subfolders is two images
        _scan(tmp_path / "JPEGImages" / sub / "frame_000001.png")
        write_voc(tmp_path / "Annotations" / sub / "frame_000001.xml", [Box(1, 2, 10, 12, sub)], (40, 30), "frame_000001.png")
    _scan(tmp_path / "JPEGImages" / "top.png")
    write_voc(tmp_path / "Annotations" / "top.xml", [], (40, 30), "top.png")
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    for name, ids in (("train", "task1/frame_000001\n"), ("val", "task2/frame_000001\n"), ("test", "top\n")):
        (tmp_path / "ImageSets" / "Main" / f"{name}.txt").write_text(ids)
    dataset = read_voc_dataset(tmp_path)
    assert [(s.id, s.labels) for s in dataset.samples] == [
        ("task1/frame_000001", ["task1"]), ("task2/frame_000001", ["task2"]), ("top", [])]
    assert dataset.samples[1].path == tmp_path / "JPEGImages" / "task2" / "frame_000001.png"
    parts = split_dataset(dataset)
    assert [[s.id for s in parts[k]] for k in ("train", "val", "test")] == [
        ["task1/frame_000001"], ["task2/frame_000001"], ["top"]]
    # An annotation in a subfolder wants its image at the same path.
    (tmp_path / "JPEGImages" / "task2" / "frame_000001.png").rename(tmp_path / "JPEGImages" / "frame_000001.png")
    with pytest.raises(InvalidInputError, match="No image named task2/frame_000001"):
        read_voc_dataset(tmp_path)


def test_16_bit_tiff_with_its_size_after_the_pixels_is_size_checked(tmp_path):
    # OpenCV/libtiff write the TIFF directory (its size) after the pixels, beyond the first 64 KiB here.
    noise = np.random.default_rng(0).integers(0, 65536, size=(200, 300), dtype=np.uint16)
    path = write_image(tmp_path / "JPEGImages" / "s0.tif", noise, bits=16)
    assert int.from_bytes(path.read_bytes()[4:8], "little") > 65536
    write_voc(tmp_path / "Annotations" / "s0.xml", [Box(1, 2, 10, 12, "key")], (600, 400), "s0.tif")
    with pytest.raises(InvalidInputError, match="600x400 but s0.tif is 300x200"):
        read_voc_dataset(tmp_path)
    write_voc(tmp_path / "Annotations" / "s0.xml", [Box(1, 2, 10, 12, "key")], (300, 200), "s0.tif")
    assert read_voc_dataset(tmp_path).samples[0].meta["size"] == (300, 200)


def test_dicom_named_by_its_uid_without_a_suffix_is_an_image(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.12345"  # its 'suffix' is .12345
    pixels = np.zeros((30, 40), np.uint16)
    for folder in ("standard/JPEGImages", "flat/scans"):
        (tmp_path / folder).mkdir(parents=True)
    _dicom(tmp_path / "standard" / "JPEGImages" / uid, pixels)
    write_voc(tmp_path / "standard" / "Annotations" / f"{uid}.xml", [Box(1, 2, 10, 12, "key")], (40, 30), uid)
    _dicom(tmp_path / "flat" / "scans" / uid, pixels)
    write_voc(tmp_path / "flat" / "scans" / f"{uid}.xml", [Box(1, 2, 10, 12, "key")], (40, 30), uid)
    for layout in ("standard", "flat"):
        dataset = read_voc_dataset(tmp_path / layout)
        assert dataset.layout == layout and [s.id for s in dataset.samples] == [uid]
        assert dataset.samples[0].path.name == uid
