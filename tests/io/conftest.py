"""Hand-made DICOM files for the io tests: tiny datasets written with pydicom's dcmwrite."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

PHI = {
    "PatientName": "Doe^Jane^Quinn",
    "PatientID": "PID-7731-XQ",
    "PatientBirthDate": "19470319",
    "AccessionNumber": "ACC-55123",
    "InstitutionName": "Saint Elsewhere Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "OtherPatientIDs": "OTHER-99812",
    "PatientAddress": "12 Harbour Lane",
}


def make_dataset(pixels: np.ndarray, **attributes) -> Dataset:
    """A valid single- or multi-frame grey image dataset holding `pixels` (uint16/int16/uint8) plus PHI."""
    pixels = np.asarray(pixels)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "MG"
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if np.issubdtype(pixels.dtype, np.signedinteger) else 0
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture
def write_dicom(tmp_path: Path) -> Callable[..., Path]:
    """Write `make_dataset(pixels, **attributes)` to `tmp_path/<name>` and return the path."""

    def write(pixels: np.ndarray, name: str = "image.dcm", **attributes) -> Path:
        path = tmp_path / name
        dcmwrite(path, make_dataset(pixels, **attributes), enforce_file_format=True)
        return path

    return write


@pytest.fixture
def dataset_factory() -> Callable[..., Dataset]:
    """`make_dataset`, for tests that edit the dataset before writing it."""
    return make_dataset


@pytest.fixture
def phi() -> dict[str, str]:
    """The PHI values every hand-made dataset carries."""
    return dict(PHI)
