"""read_dicom on every file bundled with pydicom and on hand-made files checked against PS3.3 C.11."""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.pixels import apply_windowing
from pydicom.uid import JPEGBaseline8Bit

from keras_medimg.errors import InvalidInputError
from keras_medimg.io.dicom import read_dicom, read_dicom_meta

# Several bundled files break the standard on purpose; pydicom warns when the tests read them directly.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# Listed from the folder: pydicom.data.get_testdata_files() may try to download the larger test files.
PYDICOM_FILES = Path(os.path.dirname(pydicom.data.__file__)) / "test_files"
BUNDLED = sorted(p for p in PYDICOM_FILES.rglob("*") if p.is_file())
PHI_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames", "AccessionNumber",
    "InstitutionName", "InstitutionAddress", "ReferringPhysicianName", "PerformingPhysicianName",
    "OperatorsName", "PatientAddress", "PatientTelephoneNumbers", "StudyID",
)


def pydicom_decodes(path: Path) -> np.ndarray | None:
    """What pydicom itself makes of the file: its pixel array, or None when it cannot read or decode it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path).pixel_array
        except Exception:
            return None


def standard_window(x: float, c: float, w: float, function: str) -> float:
    """PS3.3 C.11.2.1.2 written out piece by piece, with output range [0, 1]."""
    if function == "LINEAR":
        if x <= c - 0.5 - (w - 1) / 2:
            return 0.0
        if x > c - 0.5 + (w - 1) / 2:
            return 1.0
        return (x - (c - 0.5)) / (w - 1) + 0.5
    if function == "LINEAR_EXACT":
        if x <= c - w / 2:
            return 0.0
        if x > c + w / 2:
            return 1.0
        return (x - c) / w + 0.5
    return 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: str(p.relative_to(PYDICOM_FILES)))
def test_every_bundled_file_loads_or_raises_invalid_input(path):
    expected = pydicom_decodes(path)
    if expected is None:
        with pytest.raises(InvalidInputError) as info:
            read_dicom(path)
        assert info.value.path == path
        return
    image = read_dicom(path)
    assert image.pixels.dtype == np.float32
    assert 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0
    shape = expected.shape + (3,) if image.meta.photometric_interpretation == "PALETTE COLOR" else expected.shape
    assert image.pixels.shape == shape
    assert image.meta.rows == shape[-3 if image.pixels.ndim > 2 and shape[-1] == 3 else -2]


@pytest.mark.parametrize("path", [p for p in BUNDLED if pydicom_decodes(p) is not None], ids=lambda p: p.name)
def test_no_phi_value_reaches_the_metadata(path):
    ds = pydicom.dcmread(path)
    meta = read_dicom(path).meta
    shown = repr(meta) + repr(meta.as_dict())
    values = [str(ds[k].value) for k in PHI_KEYWORDS if k in ds and ds[k].value not in (None, "")]
    for value in values:
        # Very short values ("1", "M") would match digits of a UID or a size by chance.
        if len(value) >= 4:
            assert value not in shown


def test_monochrome1_bundled_files_come_out_inverted():
    mono1 = [p for p in BUNDLED if "CR" in p.parts[-2] and pydicom_decodes(p) is not None]
    assert mono1, "pydicom's test data should hold MONOCHROME1 CR images"
    for path in mono1:
        ds = pydicom.dcmread(path)
        assert ds.PhotometricInterpretation == "MONOCHROME1"
        raw = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        c, w = float(ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter), float(
            ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth
        )
        expected = 1.0 - np.vectorize(standard_window)(raw, c, w, "LINEAR")
        np.testing.assert_allclose(read_dicom(path).pixels, expected, atol=1e-6)


def test_lossless_transfer_syntaxes_give_the_same_pixels():
    reference = read_dicom(PYDICOM_FILES / "MR_small.dcm").pixels
    for name in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        np.testing.assert_array_equal(read_dicom(PYDICOM_FILES / name).pixels, reference)


def test_ybr_and_rgb_colour_agree():
    rgb = read_dicom(PYDICOM_FILES / "SC_rgb_rle.dcm").pixels
    ybr = read_dicom(PYDICOM_FILES / "SC_ybr_full_422_uncompressed.dcm").pixels
    assert rgb.shape == ybr.shape == (100, 100, 3)
    # 4:2:2 chroma subsampling and rounding move a few edge pixels by some levels.
    assert np.abs(rgb - ybr).mean() < 1 / 255 and np.abs(rgb - ybr).max() < 8 / 255
    np.testing.assert_allclose(rgb[0, 0], [1, 0, 0])  # the first stripe is red, in RGB order


RAMP = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_voi_functions_follow_the_standard(write_dicom, function):
    c, w = 1500.0, 1001.0
    path = write_dicom(RAMP, WindowCenter=c, WindowWidth=w, VOILUTFunction=function)
    image = read_dicom(path)
    expected = np.vectorize(standard_window)(RAMP.astype(float), c, w, function)
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
    assert image.meta.window == f"{function} center=1500 width=1001"
    # pydicom's own windowing, scaled from its 16-bit output range, agrees.
    ds = pydicom.dcmread(path)
    np.testing.assert_allclose(image.pixels, apply_windowing(ds.pixel_array, ds) / 65535, atol=1e-5)


def test_rescale_comes_before_the_window(write_dicom):
    stored = np.arange(256, dtype=np.int16).reshape(16, 16) * 10  # 0..2550, stored values
    path = write_dicom(stored, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    hounsfield = stored.astype(float) - 1024
    np.testing.assert_allclose(read_dicom(path).pixels, np.vectorize(standard_window)(hounsfield, 40, 400, "LINEAR"), atol=1e-6)


def test_window_choices(write_dicom):
    path = write_dicom(RAMP, WindowCenter=[1000, 3000], WindowWidth=[500, 800])
    assert read_dicom(path).meta.window == "LINEAR center=1000 width=500"
    second = read_dicom(path, window=1)
    np.testing.assert_allclose(second.pixels, np.vectorize(standard_window)(RAMP.astype(float), 3000, 800, "LINEAR"), atol=1e-6)
    own = read_dicom(path, window=(2048, 4096, "LINEAR_EXACT"))
    np.testing.assert_allclose(own.pixels, np.clip((RAMP.astype(float) - 2048) / 4096 + 0.5, 0, 1), atol=1e-6)
    minmax = read_dicom(path, window="minmax").pixels
    assert minmax.min() == 0 and minmax.max() == 1
    np.testing.assert_allclose(read_dicom(path, window="none").pixels, RAMP / 65535, atol=1e-6)
    with pytest.raises(InvalidInputError, match="2 window"):
        read_dicom(path, window=2)


def test_no_window_falls_back_to_minmax_and_bad_widths_are_skipped(write_dicom):
    path = write_dicom(RAMP + 100)
    image = read_dicom(path)
    assert image.meta.window == "minmax" and image.pixels.min() == 0 and image.pixels.max() == 1
    path = write_dicom(RAMP, name="zero.dcm", WindowCenter=100, WindowWidth=0)
    assert read_dicom(path).meta.window == "minmax"
    with pytest.raises(InvalidInputError, match="not valid"):
        read_dicom(path, window=0)


def lut_item(first: int, data: list[int], bits: int) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", [len(data), first, bits])  # LUT Descriptor
    item.add_new(0x00283006, "US", data)  # LUT Data
    return item


def test_voi_lut_sequence(write_dicom):
    data = np.linspace(0, 4095, 50).round().astype(int).tolist()  # declared 16 bits, holds 12 (common)
    path = write_dicom(RAMP // 40, VOILUTSequence=[lut_item(10, data, 16)])
    image = read_dicom(path)
    assert image.meta.window == "VOI LUT 0"
    index = np.clip(RAMP.astype(int) // 40 - 10, 0, 49)
    np.testing.assert_allclose(image.pixels, np.asarray(data)[index] / 4095, atol=1e-6)


def test_modality_lut_sequence_then_window(write_dicom):
    data = [v * 3 for v in range(256)]
    item = lut_item(0, data, 16)
    item.ModalityLUTType = "US"
    pixels = np.arange(256, dtype=np.uint16).reshape(16, 16)
    path = write_dicom(pixels, ModalityLUTSequence=[item], WindowCenter=384, WindowWidth=200)
    expected = np.vectorize(standard_window)(pixels * 3.0, 384, 200, "LINEAR")
    np.testing.assert_allclose(read_dicom(path).pixels, expected, atol=1e-6)


def test_monochrome1_is_inverted(write_dicom):
    mono2 = read_dicom(write_dicom(RAMP, name="m2.dcm", WindowCenter=2048, WindowWidth=4096)).pixels
    mono1 = read_dicom(
        write_dicom(RAMP, name="m1.dcm", WindowCenter=2048, WindowWidth=4096, PhotometricInterpretation="MONOCHROME1")
    ).pixels
    np.testing.assert_allclose(mono1, 1 - mono2, atol=1e-6)
    assert mono1[0, 0] > mono1[-1, -1]  # low stored values are dense tissue in MONOCHROME1


def test_multi_frame(write_dicom):
    frames = np.stack([RAMP, RAMP // 2, RAMP // 4])
    path = write_dicom(frames, WindowCenter=2048, WindowWidth=4096)
    every = read_dicom(path)
    assert every.pixels.shape == (3, 16, 16) and every.meta.number_of_frames == 3
    np.testing.assert_allclose(read_dicom(path, frame=2).pixels, every.pixels[2], atol=1e-6)
    with pytest.raises(InvalidInputError, match="Frame 3") as info:
        read_dicom(path, frame=3)
    assert info.value.path == path


def test_meta_holds_acquisition_facts_and_no_phi(write_dicom, phi):
    path = write_dicom(
        RAMP, ViewPosition="MLO", ImageLaterality="L", ImagerPixelSpacing=[0.07, 0.07], WindowCenter=2048, WindowWidth=4096
    )
    for meta in (read_dicom(path).meta, read_dicom_meta(path)):
        assert (meta.modality, meta.view_position, meta.image_laterality) == ("MG", "MLO", "L")
        assert meta.pixel_spacing == (0.07, 0.07) and (meta.rows, meta.columns) == (16, 16)
        assert meta.sop_instance_uid == pydicom.dcmread(path).SOPInstanceUID
        assert meta.transfer_syntax_uid == "1.2.840.10008.1.2.1"
        shown = repr(meta) + repr(meta.as_dict())
        for value in phi.values():
            assert value not in shown and value.split("^")[0] not in shown


def test_broken_files_raise_invalid_input(tmp_path, write_dicom, dataset_factory):
    good = write_dicom(RAMP)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(InvalidInputError, match="truncated"):
        read_dicom(truncated)

    not_dicom = tmp_path / "photo.dcm"
    not_dicom.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    with pytest.raises(InvalidInputError, match="not DICOM"):
        read_dicom(not_dicom)

    with pytest.raises(InvalidInputError, match="does not exist"):
        read_dicom(tmp_path / "missing.dcm")

    ds = dataset_factory(RAMP)
    del ds.PixelData
    dcmwrite(tmp_path / "nopixels.dcm", ds, enforce_file_format=True)
    with pytest.raises(InvalidInputError, match="no pixel data"):
        read_dicom(tmp_path / "nopixels.dcm")

    with pytest.raises(InvalidInputError, match="Transfer Syntax"):
        read_dicom(PYDICOM_FILES / "meta_missing_tsyntax.dcm")


def test_a_broken_item_in_a_lazily_read_sequence_raises_invalid_input(tmp_path, write_dicom):
    # pydicom parses a defined-length sequence only when it is first read, and reports a broken item there as
    # OSError ("No tag to read at file position ..."), past dcmread's own error handling (found by fuzzing in CI).
    good = write_dicom(RAMP).read_bytes()
    pixel_data = good.rfind(b"\xe0\x7f\x10\x00")
    shared_groups = b"\x00\x52\x29\x92SQ\x00\x00" + struct.pack("<I", 4) + bytes(4)  # (5200,9229), a 4-byte item
    broken = tmp_path / "broken_sequence.dcm"
    broken.write_bytes(good[:pixel_data] + shared_groups + good[pixel_data:])
    with pytest.raises(InvalidInputError, match=r"broken_sequence\.dcm.*cannot be used \(No tag to read"):
        read_dicom(broken)


def test_undecodable_pixel_data_names_the_transfer_syntax(tmp_path, dataset_factory):
    ds = dataset_factory(RAMP.astype(np.uint8))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 this is no JPEG stream \xff\xd9"])
    ds["PixelData"].VR = "OB"
    dcmwrite(tmp_path / "garbage.dcm", ds, enforce_file_format=True)
    with pytest.raises(InvalidInputError, match="JPEG Baseline.*cannot be decoded"):
        read_dicom(tmp_path / "garbage.dcm")


def test_is_dicom_by_suffix_or_by_the_marker_after_the_preamble(tmp_path, write_dicom):
    from keras_medimg.io.dicom import is_dicom

    dicom = write_dicom(np.zeros((4, 4), np.uint16), name="IM000001")
    assert is_dicom(dicom) and is_dicom(tmp_path / "absent.dcm") and is_dicom(tmp_path / "absent.DICOM")
    (tmp_path / "notes").write_bytes(b"x" * 200)
    (tmp_path / "short").write_bytes(b"DICM")
    assert not is_dicom(tmp_path / "notes") and not is_dicom(tmp_path / "short") and not is_dicom(tmp_path / "absent")
