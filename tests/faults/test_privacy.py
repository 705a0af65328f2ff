"""No DICOM PHI in any output: predict and export of every app on DICOMs whose PHI tags hold marker strings.

The roi app has its own such test (tests/apps/roi); the others are here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from pydicom import dcmwrite
from pydicom.uid import MRImageStorage

from keras_medimg.apps.cli import cli
from keras_medimg.io.images import read_image

from ..io.conftest import make_dataset

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
                       reason="what is written is backend-independent; CI runs these app runs once, under TensorFlow"),
]

PHI_MARKERS = {
    "PatientName": "Zqxmarker^Patientname",
    "PatientID": "ZQXMARKER-PID-4471",
    "PatientBirthDate": "19310217",
    "AccessionNumber": "ZQXACC90213",
    "InstitutionName": "Zqxmarker Institution",
    "ReferringPhysicianName": "Zqxmarker^Referrer",
    "StudyID": "ZQXSTUDY77",
    "OtherPatientIDs": "ZQXOTHER31",
}


def write_phi_dicom(path: Path, pixels: np.ndarray) -> Path:
    """A 12-bit MR slice as DICOM whose PHI tags hold the markers (the io tests' dataset, other values)."""
    pixels = np.asarray(np.clip(pixels, 0, 1) * 4095, np.uint16) if pixels.dtype != np.uint16 else pixels
    if pixels.ndim == 3:
        pixels = pixels[..., 0]
    ds = make_dataset(pixels, Modality="MR", SOPClassUID=MRImageStorage, BitsStored=12, HighBit=11,
                      WindowCenter=2048, WindowWidth=4096, **PHI_MARKERS)
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def markers_found(folder: Path, *texts: str) -> list[str]:
    """Every (file, marker) where a marker (any case, also as DICOM's '^'-free spelling) appears."""
    needles = set()
    for value in PHI_MARKERS.values():
        needles |= {value.lower(), value.replace("^", " ").lower()}
        needles |= {part.lower() for part in value.split("^") if len(part) > 6}
    hits = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes().lower()
            hits += [f"{path}: {n}" for n in needles if n.encode() in data or n.encode("utf-16-le") in data]
    for i, text in enumerate(texts):
        hits += [f"output {i}: {n}" for n in needles if n in text.lower()]
    return hits


def dicoms_of(images: list[Path], out: Path) -> Path:
    for i, image in enumerate(images):
        pixels = read_image(image)
        write_phi_dicom(out / f"case{i}" / "slice.dcm", pixels.astype(np.float32) / (65535 if pixels.dtype == np.uint16 else 255))
    return out


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_brats_predict_and_export_leak_no_phi(tmp_path):
    from keras_medimg.datasets.synthetic.brain import generate_brain

    data = generate_brain(tmp_path / "data", n_per_class=4, size=64, seed=0)
    project = tmp_path / "runs"
    tiny = ["detect.epochs=1", "detect.imgsz=64", "detect.batch=8", "detect.conf=0.01", "model.backbone=vgg16",
            "model.image_size=32", "train.epochs=1", "train.batch_size=8", "train.verbose=0",
            "classify.compare_sources=[]"]
    outputs = [invoke("brats", "train", "--data", str(data), "--project", str(project), "--name", "t",
                      *[a for s in tiny for a in ("--set", s)])]
    sources = dicoms_of(sorted((data / "Testing").rglob("*.jpg"))[:4] or sorted((data / "Testing").rglob("*.png"))[:4],
                        tmp_path / "dicoms")
    run = project / "brats" / "t"
    outputs.append(invoke("brats", "predict", str(sources), "--weights", str(run), "--gradcam", "--project", str(project),
                          "--name", "p"))
    predictions = (project / "brats" / "p" / "predictions.csv").read_text()
    assert predictions.count("slice.dcm") == 4 or predictions.count("case") >= 4, predictions  # all four were read
    outputs.append(invoke("brats", "export", "--weights", str(run), "--project", str(project), "--name", "e",
                          "--set", "export.formats=[onnx]"))  # one classifier format: see the mamclip test below
    assert markers_found(project / "brats" / "p", *outputs) == []
    assert markers_found(project / "brats" / "e") == []


def test_concepts_predict_and_export_leak_no_phi(tmp_path):
    from keras_medimg.datasets.synthetic.concepts import generate_concepts

    data = generate_concepts(tmp_path / "data", n_train=12, n_valid=6, n_test=4, size=32, seed=1)
    project = tmp_path / "runs"
    tiny = ["model.backbone=vgg16", "model.image_size=32", "model.hidden_units=8", "train.epochs=1",
            "train.head_epochs=0", "train.verbose=0", "data.cache=null"]
    outputs = [invoke("concepts", "train", "--data", str(data), "--project", str(project), "--name", "t",
                      *[a for s in tiny for a in ("--set", s)])]
    sources = dicoms_of(sorted((data / "test").rglob("*.jpg"))[:4], tmp_path / "dicoms")
    run = project / "concepts" / "t"
    outputs.append(invoke("concepts", "predict", "--images", str(sources), "--weights", str(run),
                          "--project", str(project), "--name", "p"))
    assert (project / "concepts" / "p" / "submission.csv").read_text().count("\n") >= 4
    outputs.append(invoke("concepts", "export", "--weights", str(run), "--project", str(project), "--name", "e",
                          "--set", "export.formats=[onnx]"))  # one format: see the mamclip test below
    assert markers_found(project / "concepts" / "p", *outputs) == []
    assert markers_found(project / "concepts" / "e") == []


def test_xray_predict_and_export_leak_no_phi(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDIMG_HOME", str(tmp_path / "home"))
    project = tmp_path / "runs"
    small = ["data.demo_images=12", "tiling.size=160", "tiling.overlap=0", "detector.batch=8", "tiling.tiles=2"]
    outputs = [invoke("xray", "train", "--epochs", "1", "--project", str(project), "--name", "t",
                      *[a for s in small for a in ("--set", s)])]
    rng = np.random.default_rng(0)
    sources = tmp_path / "dicoms"
    for i in range(3):  # body scanners export DX/CR: 16-bit greys, here noise with the PHI markers in the header
        write_phi_dicom(sources / f"scan{i}" / "image.dcm", rng.uniform(0.2, 0.8, size=(320, 256)).astype(np.float32))
    run = project / "xray" / "t"
    outputs.append(invoke("xray", "predict", str(sources), "--weights", str(run), "--conf", "0.001",
                          "--project", str(project), "--name", "p"))
    assert len(list((project / "xray" / "p").rglob("*.xml"))) == 3  # every scan was read and written
    outputs.append(invoke("xray", "export", "--weights", str(run), "--project", str(project), "--name", "e"))
    assert markers_found(project / "xray" / "p", *outputs) == []
    assert markers_found(project / "xray" / "e") == []


def test_mamclip_embed_and_export_leak_no_phi(tmp_path):
    from .test_kill_resume import MAMCLIP_TINY, mamclip_pairs

    project = tmp_path / "runs"
    tiny = [s for s in MAMCLIP_TINY if not s.startswith("pretrain.epochs")] + ["pretrain.epochs=1"]
    outputs = [invoke("mamclip", "pretrain", "--pairs", str(mamclip_pairs(tmp_path / "pairs")), "--project",
                      str(project), "--name", "t", *[a for s in tiny for a in ("--set", s)])]
    rng = np.random.default_rng(0)
    sources = tmp_path / "dicoms"
    for i in range(3):  # mammograms as the scanner wrote them, the PHI markers in the header
        write_phi_dicom(sources / f"case{i}" / "image.dcm", rng.uniform(0.1, 0.9, size=(48, 40)).astype(np.float32))
    run = project / "mamclip" / "t"
    outputs.append(invoke("mamclip", "embed", "--weights", str(run), "--source", str(sources), "--project",
                          str(project), "--name", "p"))
    embedded = list((project / "mamclip" / "p").rglob("*.npy"))
    assert embedded and np.load(embedded[0]).shape[0] == 3  # every DICOM was read and embedded
    # One format (ONNX, of both encoders): metadata.json, vocab.txt and config.yaml, where a header value could land,
    # are written whatever the formats; SavedModel beside it holds the same weights and doubled the export's time.
    outputs.append(invoke("mamclip", "export", "--weights", str(run), "--project", str(project), "--name", "e",
                          "--set", "export.formats=[onnx]"))
    assert markers_found(project / "mamclip" / "p", *outputs) == []
    assert markers_found(project / "mamclip" / "e") == []
