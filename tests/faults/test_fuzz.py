"""A short coverage-guided fuzz run of the DICOM and image readers in CI (the long one: benchmarks/faults.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_readers_let_only_invalid_input_error_escape(tmp_path):
    pytest.importorskip("atheris", reason="atheris (the fuzzer) is not installed; it is in the test extra")
    report = tmp_path / "fuzz.json"
    harness = Path(__file__).with_name("fuzz_readers.py")
    done = subprocess.run([sys.executable, str(harness), "20", str(report), str(tmp_path / "corpus")],
                          capture_output=True, text=True, timeout=300)
    assert report.is_file(), done.stdout[-2000:] + done.stderr[-2000:]
    hang = report.with_suffix(".current")
    assert "libFuzzer: timeout" not in done.stderr, f"a hang on the input {hang.read_bytes()[:512].hex()}..."
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["executions"] > 100, result  # it really ran
    # Each escape's whole input is in the message: zlib.decompress(base64.b64decode(input_zlib_b64)) is the file.
    assert result["escapes"] == {}, f"seed {result['seed']}: " + json.dumps(result["escapes"], indent=1)[:20000]
    assert result["slow_inputs"] == 0


# --- regressions of what the fuzzer found (fast) ---


def _dicom(path):
    import numpy as np
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.PhotometricInterpretation, ds.SamplesPerPixel = "MONOCHROME2", 1
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 4, 4, 16, 16, 15, 0
    ds.PixelData = np.arange(16, dtype="<u2").tobytes()
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def test_a_header_value_of_odd_length_is_invalid_input(tmp_path):
    from keras_medimg.errors import InvalidInputError
    from keras_medimg.io.dicom import read_dicom

    path = _dicom(tmp_path / "odd.dcm")
    data = path.read_bytes()
    columns = bytes.fromhex("2800 1100") + b"US" + bytes.fromhex("0200 0400")
    assert data.count(columns) == 1
    # Columns rewritten as an explicit UN element of 3 bytes: a US value cannot be 3 bytes long
    path.write_bytes(data.replace(columns, bytes.fromhex("2800 1100") + b"UN\x00\x00" + bytes.fromhex("0300 0000 0400 00")))
    with pytest.raises(InvalidInputError, match="odd.dcm"):
        read_dicom(path)


def test_a_decoder_panic_is_invalid_input(tmp_path, monkeypatch):
    """pylibjpeg-rle is Rust: corrupt RLE data raised pyo3's PanicException, a BaseException, through read_dicom."""
    from keras_medimg.errors import InvalidInputError
    from keras_medimg.io import dicom

    class PanicException(BaseException):
        pass

    def panic(*args, **kwargs):
        raise PanicException("index out of bounds: the len is 400 but the index is 401")

    monkeypatch.setattr(dicom, "pixel_array", panic)
    with pytest.raises(InvalidInputError, match="cannot be decoded"):
        dicom.read_dicom(_dicom(tmp_path / "rle.dcm"))


def test_a_jp2_header_box_of_length_zero_is_invalid_input_not_a_hang():
    """A fuzzed JPEG 2000 DICOM whose JP2 header has a box of length 0: pydicom's box walk looped forever."""
    import subprocess
    import sys

    path = Path(__file__).parent / "regressions" / "jp2_zero_length_box.dcm"
    code = ("import sys\nfrom keras_medimg.io.dicom import read_dicom\nfrom keras_medimg.errors import InvalidInputError\n"
            f"try:\n    read_dicom({str(path)!r})\nexcept InvalidInputError as e:\n    print('INVALID', e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "INVALID" in done.stdout and "JP2 header" in done.stdout, done.stdout + done.stderr[-2000:]


def test_valid_jpeg2000_files_still_decode():
    import glob
    import os

    import pydicom.data

    from keras_medimg.io.dicom import read_dicom

    files = [f for f in glob.glob(os.path.join(os.path.dirname(pydicom.data.__file__), "test_files", "*.dcm"))
             if "j2k" in f.lower() or "jp2" in f.lower()]
    assert files
    for name in files:
        if "mismatch" in name:
            continue  # its pixel representation disagrees with the codestream; not a JP2-header case
        assert read_dicom(name).pixels.size > 0, name
