"""One DICOM file -> float32 pixels in [0, 1] plus a small metadata record that holds no PHI.

The display pipeline of DICOM PS3.3 C.11, in order: decode (pydicom with the pylibjpeg plugins; YBR colour is
returned as RGB by pydicom) -> modality LUT (rescale slope/intercept or Modality LUT Sequence) -> VOI (a window
with its VOI LUT Function, a VOI LUT Sequence, or min-max) -> MONOCHROME1 inverted so that dense tissue is
bright -> [0, 1]. Palette colour images go through their colour LUT instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, pixel_array

from keras_medimg.errors import InvalidInputError
from keras_medimg.preprocessing.intensity import VOI_FUNCTIONS, minmax_scale
from keras_medimg.preprocessing.intensity import window as apply_window

Window = str | int | tuple[float, float] | tuple[float, float, str]

#: Suffixes read as DICOM. Files without one of these are DICOM too when `is_dicom` finds the marker.
DICOM_SUFFIXES = (".dcm", ".dicom")

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class DicomMeta:
    """What keras-medimg keeps of a DICOM header: acquisition facts only, never patient identity.

    Args:
        modality: e.g. MG, CR, DX, CT, MR.
        photometric_interpretation: as stored (MONOCHROME1, MONOCHROME2, RGB, YBR_FULL_422, PALETTE COLOR...).
        bits_stored: bits per stored sample.
        rows: image height in pixels.
        columns: image width in pixels.
        pixel_spacing: (row, column) spacing in mm from Pixel Spacing, else Imager Pixel Spacing.
        view_position: e.g. CC, MLO, PA, AP.
        image_laterality: L, R or B (Image Laterality, else the series' Laterality).
        number_of_frames: 1 for single-frame images.
        sop_instance_uid: the image's unique id, the key of records made from it.
        transfer_syntax_uid: how the pixel data was encoded.
        window: the VOI transform applied: "<FUNCTION> center=<c> width=<w>", "VOI LUT <i>", "minmax" or
            "none" (also "none" for colour images).
    """

    modality: str | None
    photometric_interpretation: str
    bits_stored: int
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    view_position: str | None
    image_laterality: str | None
    number_of_frames: int
    sop_instance_uid: str | None
    transfer_syntax_uid: str | None
    window: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for manifests and JSON)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MedImage:
    """Pixels and their metadata.

    Args:
        pixels: float32 in [0, 1]; `(H, W)` grey or `(H, W, 3)` RGB, with a leading frame axis `(F, ...)` when
            all frames of a multi-frame file were read.
        meta: the file's `DicomMeta`.
    """

    pixels: np.ndarray
    meta: DicomMeta


# === Reading the header ===


def is_dicom(path: str | Path) -> bool:
    """Whether a file is to be read as DICOM: its suffix is .dcm/.dicom, or its bytes say so.

    Scanners often write DICOM files without a suffix (IM000001) or named by their UID (1.2.840...123); a
    DICOM Part 10 file carries the 'DICM' marker after its 128-byte preamble, so 132 bytes tell.

    Args:
        path: any file.

    Returns:
        True for a DICOM suffix or the marker; False otherwise, also for a file that cannot be opened.
    """
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:
        return False



def _read_dataset(path: Path, *, stop_before_pixels: bool = False) -> Dataset:
    if not path.is_file():
        raise InvalidInputError(path, "The DICOM file does not exist. Check the path or the manifest that names it.")
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        raise InvalidInputError(
            path, "The file is not DICOM: it has no 'DICM' marker after the 128-byte preamble. Remove it from the input."
        ) from None
    # pydicom raises whatever its parser hits on a damaged file (EOFError, struct.error, ValueError...).
    except Exception as exc:
        raise InvalidInputError(
            path, f"The DICOM header cannot be parsed ({type(exc).__name__}: {exc}); the file is truncated or corrupt."
        ) from None


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    return str(value).strip() or None


def _meta(ds: Dataset) -> DicomMeta:
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    file_meta = getattr(ds, "file_meta", None)
    return DicomMeta(
        modality=_text(ds, "Modality"),
        photometric_interpretation=str(ds.get("PhotometricInterpretation", "")).strip(),
        bits_stored=int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0),
        rows=int(ds.get("Rows") or 0),
        columns=int(ds.get("Columns") or 0),
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing and len(spacing) == 2 else None,
        view_position=_text(ds, "ViewPosition"),
        image_laterality=_text(ds, "ImageLaterality") or _text(ds, "Laterality"),
        number_of_frames=int(ds.get("NumberOfFrames") or 1),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        transfer_syntax_uid=str(file_meta.TransferSyntaxUID) if file_meta and "TransferSyntaxUID" in file_meta else None,
    )


def read_dicom_meta(path: str | Path) -> DicomMeta:
    """Read only the header of a DICOM file (fast: the pixel data is not loaded).

    Args:
        path: the DICOM file.

    Returns:
        Its `DicomMeta` (with `window` None, since no VOI transform was chosen).
    """
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _read_dataset(path, stop_before_pixels=True)
        with _header_errors(path):
            return _meta(ds)


def _lift_shared_functional_groups(ds: Dataset) -> None:
    """Copy rescale and window of an enhanced multi-frame file's shared functional groups to the top level.

    pydicom's modality and VOI functions read the top-level elements only; enhanced CT/MR/MG files keep them in
    the Shared Functional Groups Sequence. Per-frame groups are not used.
    """
    shared = ds.get("SharedFunctionalGroupsSequence")
    if not shared:
        return
    for sequence, keywords in (
        ("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept", "RescaleType")),
        ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth", "VOILUTFunction")),
    ):
        items = shared[0].get(sequence)
        if items and not any(keyword in ds for keyword in keywords[:2]):
            for keyword in keywords:
                if keyword in items[0]:
                    setattr(ds, keyword, items[0][keyword].value)


# === Decoding ===


def _one_line(exc: Exception, limit: int = 300) -> str:
    """An exception's message on one line (pydicom lists each plugin's failure on its own line)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _header_errors(path: Path) -> Iterator[None]:
    """Report a malformed header value as the file's fault.

    pydicom converts element values lazily, so a bad value (an IS of '1A', a short LUT descriptor) surfaces
    as ValueError, TypeError... wherever it is first read. A defined-length sequence is parsed only when first
    read too, and pydicom reports a broken item in it ("No tag to read at file position ...") as OSError; the
    file's bytes are in memory by then, so an OSError here is the file's fault, not the disk's.
    """
    try:
        yield
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, NotImplementedError, OverflowError,
            BytesLengthException, struct.error, EOFError, OSError) as exc:  # the last four found by fuzzing
        raise InvalidInputError(
            path, f"The DICOM header holds a value that cannot be used ({_one_line(exc)}). Fix or re-export the file."
        ) from None


_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  "


def _check_jp2_boxes(path: Path, data: bytes) -> None:
    """Refuse JP2-wrapped JPEG 2000 frames whose header boxes cannot be walked.

    pydicom (3.0) walks the JP2 boxes to the codestream by their lengths; a box whose length is under 8 bytes
    (0 included) makes that walk loop forever (found by fuzzing: read_dicom hung). A valid JP2 header never has
    one before its codestream (jp2c) box.
    """
    start = data.find(_JP2_SIGNATURE)
    while start != -1:
        offset = start + 12
        while offset < len(data):
            length = int.from_bytes(data[offset:offset + 4], byteorder="big")
            if data[offset + 4:offset + 8] == b"jp2c":
                break
            if length < 8:
                raise InvalidInputError(
                    path, f"Its JPEG 2000 pixel data has a malformed JP2 header (a box of length {length} at byte "
                    f"{offset}), which the decoder cannot read. Re-export or re-encode the file."
                )
            offset += length
        start = data.find(_JP2_SIGNATURE, start + 1)


def _decode(path: Path, ds: Dataset, frame: int | None, frames: int) -> np.ndarray:
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise InvalidInputError(path, "The DICOM file has no pixel data (it may be a report, a structure set or a DICOMDIR). Remove it from the image input.")
    file_meta = getattr(ds, "file_meta", None)
    if not file_meta or "TransferSyntaxUID" not in file_meta:
        raise InvalidInputError(
            path, "The DICOM file has no Transfer Syntax UID (0002,0010), so its pixel data cannot be decoded. Re-export it with a file meta header."
        )
    if frame is not None and not 0 <= frame < frames:
        raise InvalidInputError(path, f"Frame {frame} was asked for but the file has {frames} frame(s), numbered 0 to {frames - 1}.")
    syntax = file_meta.TransferSyntaxUID
    if "JPEG 2000" in syntax.name or "JPEG2000" in syntax.name:
        _check_jp2_boxes(path, ds.get("PixelData") or b"")
    try:
        return pixel_array(ds, index=frame if frames > 1 else None)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - every decoder plugin has its own exception types, and the Rust
        # ones (pylibjpeg-rle) raise pyo3's PanicException, a BaseException, on corrupt data (found by fuzzing)
        detail = _one_line(exc)
        if "less than expected" in detail:
            reason = f"The pixel data is shorter than its size says ({detail}); the file is truncated. Copy it again from the source."
        elif isinstance(exc, (AttributeError, KeyError)):
            reason = f"The image pixel module of the header is incomplete ({detail}). Fix or re-export the file."
        else:
            reason = (
                f"Its {syntax.name} pixel data cannot be decoded ({detail}). Install the decoder for this transfer "
                "syntax (pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle) or convert the file, e.g. with dcmtk's dcmdjpeg."
            )
        raise InvalidInputError(path, reason) from None


# === VOI ===


def _windows(ds: Dataset) -> list[tuple[float, float]]:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return []
    centers, widths = ds.WindowCenter, ds.WindowWidth
    centers = list(centers) if isinstance(centers, (list, MultiValue)) else [centers]
    widths = list(widths) if isinstance(widths, (list, MultiValue)) else [widths]
    return [(float(c), float(w)) for c, w in zip(centers, widths)]


def _voi_function(ds: Dataset) -> str:
    return str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()


def _window_is_valid(center: float, width: float, function: str) -> bool:
    return math.isfinite(center) and math.isfinite(width) and width >= (1 if function == "LINEAR" else 0) and width > 0


def _stored_range(ds: Dataset, values: np.ndarray) -> tuple[float, float]:
    """The range the modality LUT output can take: the ends of the stored bit range, mapped like the pixels."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    if not np.issubdtype(values.dtype, np.integer) and "PixelData" not in ds:
        return float(np.nanmin(values)), float(np.nanmax(values))
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.get("PixelRepresentation") == 1 else (0, 2**bits - 1)
    slope, intercept = float(ds.get("RescaleSlope") or 1.0), float(ds.get("RescaleIntercept") or 0.0)
    return tuple(sorted((low * slope + intercept, high * slope + intercept)))


def _lut_scale(ds: Dataset, index: int, values: np.ndarray) -> float:
    """Full-scale value of a VOI LUT's output.

    The descriptor states bits per entry, but many files declare 16 while holding 12-bit data; as dcmtk does,
    the bits the LUT data actually use win when fewer.
    """
    declared = int(ds.VOILUTSequence[index].LUTDescriptor[2])
    used = int(values.max()).bit_length() if values.size else declared
    return float(2 ** min(declared, max(used, 1)) - 1)


def _apply_voi(path: Path, ds: Dataset, values: np.ndarray, window: Window) -> tuple[np.ndarray, str]:
    """Apply the chosen VOI transform to modality-LUT output; return [0, 1] values and a description."""
    windows = _windows(ds)
    function = _voi_function(ds)
    luts = ds.get("VOILUTSequence") or []
    if isinstance(window, str) and window.lower() == "minmax":
        return minmax_scale(values), "minmax"
    if isinstance(window, str) and window.lower() == "none":
        low, high = _stored_range(ds, values)
        return (np.clip((values - low) / (high - low), 0, 1) if high > low else np.zeros_like(values)).astype(np.float32), "none"
    if isinstance(window, tuple):
        center, width, *rest = window
        return _window(path, values, float(center), float(width), str(rest[0]).upper() if rest else "LINEAR")
    if isinstance(window, int) and not isinstance(window, bool):
        if windows:
            if not 0 <= window < len(windows):
                raise InvalidInputError(path, f"Window {window} was asked for but the file has {len(windows)} window(s), numbered from 0.")
            return _window(path, values, *windows[window], function)
        if not 0 <= window < len(luts):
            raise InvalidInputError(path, f"Window {window} was asked for but the file has no windows and {len(luts)} VOI LUT(s).")
        return _lut(path, ds, values, window)
    if window != "auto":
        raise ValueError(f"window must be 'auto', 'minmax', 'none', an index or a (center, width) tuple, not {window!r}.")
    # auto: the first usable window, else the first VOI LUT, else min-max
    for center, width in windows:
        if function in VOI_FUNCTIONS and _window_is_valid(center, width, function):
            return _window(path, values, center, width, function)
    if luts:
        return _lut(path, ds, values, 0)
    return minmax_scale(values), "minmax"


def _window(path: Path, values: np.ndarray, center: float, width: float, function: str) -> tuple[np.ndarray, str]:
    try:
        return apply_window(values, center, width, function), f"{function} center={center:g} width={width:g}"
    except ValueError as exc:
        raise InvalidInputError(path, f"{exc} Choose another window (window=<index>, (center, width) or 'minmax').") from None


def _lut(path: Path, ds: Dataset, values: np.ndarray, index: int) -> tuple[np.ndarray, str]:
    # The LUT is indexed by integer input values; modality output of a rescale is float but whole-numbered.
    integers = np.rint(values).astype(np.int64) if not np.issubdtype(values.dtype, np.integer) else values
    try:
        mapped = apply_voi(integers, ds, index=index)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, NotImplementedError) as exc:
        raise InvalidInputError(path, f"VOI LUT {index} cannot be applied ({exc}). Use window='minmax' instead.") from None
    scale = _lut_scale(ds, index, np.asarray(mapped))
    return np.clip(mapped.astype(np.float32) / np.float32(scale), 0, 1), f"VOI LUT {index}"


# === The pipeline ===


def _grey(path: Path, ds: Dataset, raw: np.ndarray, window: Window, photometric: str) -> tuple[np.ndarray, str]:
    values = apply_modality_lut(raw, ds) if "PixelData" in ds else raw
    values = np.asarray(values, dtype=np.float64) if not np.issubdtype(np.asarray(values).dtype, np.integer) else values
    scaled, used = _apply_voi(path, ds, values, window)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    return scaled, used


def _colour(ds: Dataset, raw: np.ndarray, photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(raw, ds)
        return rgb.astype(np.float32) / np.float32(np.iinfo(rgb.dtype).max)
    bits = int(ds.get("BitsStored") or raw.dtype.itemsize * 8)
    return raw.astype(np.float32) / np.float32(2**bits - 1)


def read_dicom(path: str | Path, *, window: Window = "auto", frame: int | None = None) -> MedImage:
    """Read a DICOM image as float32 pixels in [0, 1] (dense tissue bright) and its PHI-free metadata.

    Args:
        path: the DICOM file (any transfer syntax pydicom decodes with the pylibjpeg plugins).
        window: which VOI transform to apply to grey images:
            "auto" the first window in the file, else its first VOI LUT, else min-max;
            an int chooses among the file's windows (or its VOI LUTs when it has no windows);
            (center, width) or (center, width, function) a window of your own, in modality units (e.g. HU),
            LINEAR unless a function (LINEAR, LINEAR_EXACT, SIGMOID) is given;
            "minmax" the image's own range; "none" the full range the stored bits can hold.
            Colour images ignore it.
        frame: for multi-frame files, the 0-based frame to read; None reads all frames.

    Returns:
        `MedImage` with pixels `(H, W)` or `(H, W, 3)`, or `(F, H, W[, 3])` for all frames of a multi-frame
        file, and `meta.window` saying which VOI transform was used.

    Raises:
        InvalidInputError: the file is missing, not DICOM, truncated, has no transfer syntax or no pixel data,
            its pixel data cannot be decoded, the frame or window index is out of range, or the window is invalid.
    """
    path = Path(path)
    # pydicom warns about every small standard violation (and may quote header values); the image is usable.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _read_dataset(path)
        with _header_errors(path):
            meta = _meta(ds)
            raw = _decode(path, ds, frame, meta.number_of_frames)
            _lift_shared_functional_groups(ds)
            photometric = meta.photometric_interpretation
            if photometric in _MONOCHROME or photometric == "":
                pixels, used = _grey(path, ds, raw, window, photometric)
            else:
                pixels, used = _colour(ds, raw, photometric), "none"
    pixels = np.nan_to_num(np.clip(pixels, 0.0, 1.0), nan=0.0).astype(np.float32, copy=False)
    return MedImage(pixels=pixels, meta=dataclasses.replace(meta, window=used))
