"""prepare_images: DICOM and PNG folders or manifests -> 16-bit PNGs + manifest, resumable, never into the input."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from keras_medimg.datasets.prepare import CONVERSION, prepare_images
from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.io.images import read_image, write_image

PATIENT_NAME = "Roe^Richard^Quentin"


def body_image(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A bright 'body' on a dark background, well inside the frame, with some texture."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 200, (height, width)).astype(np.uint16)
    image[10:38, 20:50] += 3000
    return image


def write_dicom(path: Path, pixels: np.ndarray, *, uid: str | None = None, photometric: str = "MONOCHROME2") -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # digital mammography
    ds.SOPInstanceUID = uid or generate_uid()
    ds.Modality, ds.ViewPosition, ds.ImageLaterality = "MG", "CC", "R"
    ds.PatientName, ds.PatientID = PATIENT_NAME, "PID-31337-ZZ"
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 16, 15, 0
    if pixels.ndim == 3:  # a multi-frame image
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.PixelData = pixels.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)
    return path


@pytest.fixture
def dataset_folder(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    write_dicom(root / "p1" / "a.dcm", body_image(seed=1))
    write_dicom(root / "p1" / "IM000002", body_image(seed=2))  # suffix-less DICOM
    write_dicom(root / "p2" / "a.dcm", body_image(seed=3))
    write_image(root / "p2" / "b.png", body_image(seed=4), bits=16)
    (root / "notes.txt").write_text("not an image")
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_folder_to_16_bit_pngs_and_manifest(tmp_path, dataset_folder):
    result = prepare_images(dataset_folder, tmp_path / "out")
    assert result.converted == 4 and result.reused == 0 and len(result.skipped) == 0
    rows = read_csv(result.manifest)
    assert [r["id"] for r in rows] == ["p1/IM000002", "p1/a", "p2/a", "p2/b"]
    first = rows[1]
    assert (first["modality"], first["view"], first["laterality"]) == ("MG", "CC", "R")
    output = read_image(result.out_dir / first["output"])
    assert output.dtype == np.uint16 and output.shape == (48, 64)
    assert int(first["rows"]) == 48 and int(first["cols"]) == 64
    assert output.max() == 65535 and output.min() == 0  # min-max window of a file without one
    text = result.manifest.read_text() + result.skipped_csv.read_text() + (result.out_dir / "prepare.json").read_text()
    assert PATIENT_NAME not in text and "Roe" not in text and "PID-31337" not in text


def test_crop_size_and_clahe(tmp_path, dataset_folder):
    result = prepare_images(dataset_folder, tmp_path / "out", crop=True, margin=0.0, size=20, clahe=True)
    row = next(r for r in read_csv(result.manifest) if r["id"] == "p1/a")
    assert (int(row["crop_y0"]), int(row["crop_y1"]), int(row["crop_x0"]), int(row["crop_x1"])) == (10, 38, 20, 50)
    output = read_image(result.out_dir / row["output"])
    assert max(output.shape) == 20 and output.shape == (int(row["rows"]), int(row["cols"]))
    assert float(row["scale"]) == pytest.approx(20 / 30)


def test_resume_keeps_current_outputs_and_redoes_changed_sources(tmp_path, dataset_folder):
    out = tmp_path / "out"
    prepare_images(dataset_folder, out)
    before = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    again = prepare_images(dataset_folder, out)
    assert again.reused == 4 and again.converted == 0 and len(again.rows) == 4
    assert {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")} == before

    source = dataset_folder / "p2" / "b.png"
    future = time.time() + 100
    os.utime(source, (future, future))
    third = prepare_images(dataset_folder, out)
    assert third.converted == 1 and third.reused == 3
    # other settings make every earlier output stale
    assert prepare_images(dataset_folder, out, clahe=True).converted == 4
    # and so do outputs of an older conversion (before CLAHE was contrast-limited at 16 bits, say)
    record = json.loads((out / "prepare.json").read_text())
    assert record["conversion"] == CONVERSION
    (out / "prepare.json").write_text(json.dumps({**record, "conversion": CONVERSION - 1}))
    assert prepare_images(dataset_folder, out, clahe=True).converted == 4


def test_bad_files_are_skipped_and_listed_or_raise_with_strict(tmp_path, dataset_folder):
    (dataset_folder / "p3").mkdir()
    (dataset_folder / "p3" / "broken.dcm").write_bytes(b"garbage" * 40)
    (dataset_folder / "p3" / "broken.png").write_bytes(b"\x89PNG not really")
    result = prepare_images(dataset_folder, tmp_path / "out")
    assert result.converted == 4
    skipped = read_csv(result.skipped_csv)
    assert sorted(Path(r["path"]).name for r in skipped) == ["broken.dcm", "broken.png"]
    assert all(r["reason"] for r in skipped)
    with pytest.raises(InvalidInputError, match="broken"):
        prepare_images(dataset_folder, tmp_path / "strict", strict=True)


def test_refuses_to_write_into_or_around_the_input(tmp_path, dataset_folder):
    for out in (dataset_folder, dataset_folder / "prepared", tmp_path):
        with pytest.raises(ConfigError, match="overlaps the input folder"):
            prepare_images(dataset_folder, out)
    assert not (dataset_folder / "prepared").exists() and not (dataset_folder / "manifest.csv").exists()


def test_manifest_input_carries_columns_and_reports_missing_files(tmp_path, dataset_folder):
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,label,id\nraw/p1/a.dcm,malignant,case1\nraw/p2/b.png,benign,case2\nraw/p9/gone.dcm,benign,case3\n")
    result = prepare_images(manifest, tmp_path / "out")
    rows = read_csv(result.manifest)
    assert [(r["id"], r["label"]) for r in rows] == [("case1", "malignant"), ("case2", "benign")]
    (skip,) = read_csv(result.skipped_csv)
    assert skip["path"].endswith("gone.dcm") and skip["line"] == "4" and "does not exist" in skip["reason"]
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nx.dcm,a\n")
    with pytest.raises(InvalidInputError, match="'path' column"):
        prepare_images(bad, tmp_path / "out2")


def test_clashing_stems_use_the_sop_instance_uid(tmp_path):
    root = tmp_path / "raw"
    write_dicom(root / "a.dcm", body_image(), uid="1.2.3.4.5")
    write_image(root / "a.png", body_image(seed=5), bits=16)
    ids = [r["id"] for r in prepare_images(root, tmp_path / "out").rows]
    assert sorted(ids) == ["1.2.3.4.5", "a_png"]


def test_monochrome1_comes_out_with_dense_tissue_bright(tmp_path):
    root = tmp_path / "raw"
    write_dicom(root / "m1.dcm", body_image(), photometric="MONOCHROME1")
    result = prepare_images(root, tmp_path / "out")
    output = read_image(result.out_dir / result.rows[0]["output"])
    assert output[20, 30] < output[0, 0]  # the high stored values of the 'body' are dark in MONOCHROME1


def test_two_workers_give_the_same_outputs(tmp_path, dataset_folder):
    serial = prepare_images(dataset_folder, tmp_path / "one", workers=1)
    parallel = prepare_images(dataset_folder, tmp_path / "two", workers=2)
    assert [r["id"] for r in serial.rows] == [r["id"] for r in parallel.rows]
    for a, b in zip(serial.rows, parallel.rows):
        np.testing.assert_array_equal(read_image(serial.out_dir / a["output"]), read_image(parallel.out_dir / b["output"]))


def test_multi_frame_dicom_gives_one_png_per_frame_and_resumes(tmp_path):
    folder = tmp_path / "dbt"
    frames = np.stack([body_image(seed=i) * (i + 1) // 3 for i in range(3)])
    frames[1, :5] = 0  # frames differ, so each PNG must be its own frame
    write_dicom(folder / "stack.dcm", frames)
    write_dicom(folder / "single.dcm", body_image(seed=9))
    result = prepare_images(folder, tmp_path / "out")
    rows = read_csv(result.manifest)
    assert [(r["id"], r["frame"]) for r in rows] == [("single", ""), ("stack_f0001", "1"), ("stack_f0002", "2"), ("stack_f0003", "3")]
    assert result.converted == 2
    assert {r["source"] for r in rows[1:]} == {str((folder / "stack.dcm").resolve())}
    images = [read_image(result.out_dir / r["output"]) for r in rows[1:]]
    assert all(image.shape == (48, 64) and image.dtype == np.uint16 for image in images)
    assert images[1][:5].max() == 0 and images[0][:5].max() > 0
    assert not np.array_equal(images[0], images[2])

    again = prepare_images(folder, tmp_path / "out")
    assert (again.converted, again.reused) == (0, 2)
    assert [r["id"] for r in read_csv(again.manifest)] == [r["id"] for r in rows]
    (result.out_dir / rows[2]["output"]).unlink()  # a lost frame makes its file convert again
    third = prepare_images(folder, tmp_path / "out")
    assert (third.converted, third.reused) == (1, 1)
    assert (result.out_dir / rows[2]["output"]).is_file()


def test_single_files_are_inputs_too(tmp_path, dataset_folder):
    result = prepare_images([dataset_folder / "p1" / "IM000002", dataset_folder / "p2" / "b.png"], tmp_path / "out")
    assert [r["id"] for r in result.rows] == ["IM000002", "b"] and result.rows[0]["modality"] == "MG"
    with pytest.raises(ConfigError, match="not a folder, a CSV manifest or an image"):
        prepare_images(dataset_folder / "notes.txt", tmp_path / "out2")


@pytest.mark.parametrize(
    "settings",
    [{"margin": 0.5}, {"clip_limit": 0}, {"size": 0}, {"window": "brightest"}, {"window": [40]}, {"window": ["a", "b"]}],
)
def test_settings_out_of_range_are_config_errors(tmp_path, dataset_folder, settings):
    with pytest.raises(ConfigError, match="prepare: "):
        prepare_images(dataset_folder, tmp_path / "out", **settings)


def test_a_window_given_as_a_list_is_applied_and_resumes(tmp_path, dataset_folder):
    first = prepare_images(dataset_folder / "p1" / "a.dcm", tmp_path / "out", window=[1500, 3000])
    assert first.rows[0]["window"].startswith("LINEAR center=1500")
    again = prepare_images(dataset_folder / "p1" / "a.dcm", tmp_path / "out", window=(1500, 3000))  # tuple == list
    assert (again.converted, again.reused) == (0, 1)
