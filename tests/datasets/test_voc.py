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
