"""Image files as NumPy arrays: 8- and 16-bit PNG, JPEG, TIFF and BMP with their bit depth kept, and one
entry point, `read_pixels`, that reads every file keras-medimg accepts (DICOM included) as float32 in [0, 1].

Arrays are grey `(H, W)` or colour `(H, W, 3)` in RGB order; OpenCV's BGR order stays inside this module.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from keras_medimg.errors import InvalidInputError
from keras_medimg.io.dicom import DICOM_SUFFIXES, is_dicom, read_dicom
from keras_medimg.runs import atomic_write_bytes

#: Raster formats OpenCV reads and writes. BMP is in because detection datasets (YOLO, VOC) ship it.
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Every suffix a reader of a folder of images accepts. A file with another suffix is DICOM when `is_dicom`
#: finds the DICM marker in it (scanners write IM000001 or UID-named files).
IMAGE_SUFFIXES = RASTER_SUFFIXES + DICOM_SUFFIXES
_EIGHT_BIT_ONLY = (".jpg", ".jpeg", ".bmp")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
BIGTIFF_MAGIC = (b"II+\x00", b"MM\x00+")  # 64-bit offsets: OpenCV reads it; `read_image` checks its size decoded

#: How much of a file `image_shape` reads for its header: 64 KiB hold the header of nearly every PNG, JPEG and BMP.
HEADER_BYTES = 65536

#: The largest image read, in pixels (2**28: a 16384 x 16384 image, 512 MiB at 16 bits). A file whose header
#: claims more is refused before decoding: a 74-byte PNG can claim 10**10 pixels and make a decoder allocate
#: tens of gigabytes. Readers take a `max_pixels` argument to raise it for a known large scan.
MAX_PIXELS = 2**28


def is_image_file(path: str | Path) -> bool:
    """Whether keras-medimg reads this file as an image: an accepted suffix, or DICOM by its content.

    Args:
        path: any file.

    Returns:
        True for a suffix in `IMAGE_SUFFIXES`, or for another file that carries the DICOM marker.
    """
    return Path(path).suffix.lower() in IMAGE_SUFFIXES or is_dicom(path)


def image_shape(data: bytes | str | Path) -> tuple[int, int] | None:
    """`(height, width)` from the header of a PNG, JPEG, BMP or TIFF file, without decoding it.

    Given a path, only the header is read: the first `HEADER_BYTES`, and for a TIFF its first image file
    directory wherever it lies. OpenCV and libtiff write that directory after the pixels, at the end of the file
    (megabytes in for a 16-bit scan), so the first bytes of such a TIFF do not hold its size.

    Args:
        data: the file's bytes, or its first bytes (64 KiB hold the header of nearly every JPEG; a TIFF needs the
            bytes up to the end of its directory), or the path of the file.

    Returns:
        The size the header claims, or None when `data` is none of these formats or the header is not in it.

    Raises:
        OSError: a path that cannot be read.
    """
    if isinstance(data, (str, Path)):
        with open(data, "rb") as handle:

            def read(offset: int, size: int) -> bytes:
                handle.seek(offset)
                return handle.read(size)

            return _shape(handle.read(HEADER_BYTES), read)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(height), abs(width)  # a negative height marks a top-down bitmap
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg_shape(data)
    if data[:4] in _TIFF_MAGIC:
        return _tiff_shape(data, lambda offset, size: data[offset : offset + size])
    return None


def _shape(head: bytes, read: Callable[[int, int], bytes]) -> tuple[int, int] | None:
    """`image_shape` of a file's first bytes, a TIFF's directory read with `read(offset, size)` wherever it lies."""
    return _tiff_shape(head, read) if head[:4] in _TIFF_MAGIC else image_shape(head)


def _jpeg_shape(data: bytes) -> tuple[int, int] | None:
    # Walk the marker segments to the first start-of-frame (SOF0-SOF15 but DHT C4, JPG C8 and DAC CC).
    pos = 2
    while pos + 9 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return height, width
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    return None


def _tiff_shape(head: bytes, read: Callable[[int, int], bytes]) -> tuple[int, int] | None:
    # The first image file directory: ImageWidth (256) and ImageLength (257), each SHORT or LONG. `read(offset,
    # size)` gives the bytes there (fewer past the end), as the directory may lie anywhere in the file.
    order = "<" if head[:2] == b"II" else ">"
    if len(head) < 8:
        return None  # only the magic number: no directory to read (found by the property tests)
    (offset,) = struct.unpack(order + "I", head[4:8])
    raw = read(offset, 2)
    if len(raw) < 2:
        return None
    (count,) = struct.unpack(order + "H", raw)
    entries = read(offset + 2, 12 * count)
    size = {}
    for entry in range(0, len(entries) - 11, 12):
        tag, kind = struct.unpack(order + "HH", entries[entry : entry + 4])
        if tag in (256, 257) and kind in (3, 4):
            size[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), entries[entry + 8 : entry + (10 if kind == 3 else 12)])[0]
            if len(size) == 2:
                break
    return (size[257], size[256]) if len(size) == 2 else None


def check_pixel_count(path: str | Path, shape: tuple[int, int] | None, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse an image whose header claims more than `max_pixels` pixels (or none at all).

    Args:
        path: the file, for the message.
        shape: `(height, width)` from `image_shape`; None (unknown) passes.
        max_pixels: the limit.

    Raises:
        InvalidInputError: the size is 0 or over the limit.
    """
    if shape is None:
        return
    height, width = shape
    if height * width > max_pixels:
        raise InvalidInputError(
            path,
            f"The image header claims {width} x {height} pixels, more than the {max_pixels:,} this tool reads "
            "(a damaged or hostile file). Replace it, or pass a larger max_pixels for a genuinely huge scan.",
        )
    if height * width == 0:
        raise InvalidInputError(path, f"The image header claims {width} x {height} pixels: the image is empty. Replace it.")


def read_image(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a PNG, JPEG, TIFF or BMP file without changing its bit depth.

    Args:
        path: the image file.
        max_pixels: refuse files whose header claims more pixels than this, before decoding them.

    Returns:
        `uint8` or `uint16` pixels, grey `(H, W)` or RGB `(H, W, 3)`; an alpha channel is dropped. A TIFF of
        another depth comes back as uint16 when its values fit 0..65535, else (signed CT values, floats outside
        [0, 1]) as float32 min-max scaled to [0, 1] by its own range; a float TIFF in [0, 1] as float32.

    Raises:
        InvalidInputError: the file is missing, claims more than `max_pixels` pixels, or is not an image OpenCV
            can decode.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(path, "The image file does not exist. Check the path or the manifest that names it.")
    # imdecode on the bytes (rather than imread on the name) also opens paths with non-ASCII characters.
    data = np.fromfile(path, dtype=np.uint8)
    shape = _shape(data[:HEADER_BYTES].tobytes(), lambda offset, size: data[offset : offset + size].tobytes())
    check_pixel_count(path, shape, max_pixels)
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    except cv2.error:  # OpenCV's own size limit, for a header the check above cannot parse
        image = None
    if image is None:
        raise InvalidInputError(
            path, "The file is not a readable PNG, JPEG, TIFF or BMP image (empty, truncated or another format). Replace it or remove it."
        )
    if shape is None:  # a header not parsed above (BigTIFF...): the decoded size must pass the same limit
        check_pixel_count(path, image.shape[:2], max_pixels)
    image = _supported_depth(image)
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.ndim == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def _supported_depth(image: np.ndarray) -> np.ndarray:
    """TIFF pixels of another depth as uint16 or float32 in [0, 1], so every reader scales them alike.

    Integers that fit 0..65535 (a 12-bit scan in a 32-bit TIFF) become uint16. Other integers (signed CT values
    in int16/int32) and floats outside [0, 1] (a CT slice in HU) are min-max scaled by the image's own range: by
    the dtype's maximum they came out nearly black or, clipped to [0, 1], two-valued.
    """
    if image.dtype in (np.uint8, np.uint16) or not np.issubdtype(image.dtype, np.number):
        return image
    values = np.where(np.isfinite(image), image, np.nan).astype(np.float64)  # the decoder never gives an empty one
    low, high = np.nanmin(values), np.nanmax(values)
    if np.issubdtype(image.dtype, np.integer) and low >= 0 and high <= 65535:
        return image.astype(np.uint16)
    if np.issubdtype(image.dtype, np.floating) and not np.isnan(values).any() and low >= 0.0 and high <= 1.0:
        return image.astype(np.float32)
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.nan_to_num(scaled, nan=0.0).astype(np.float32)


def read_pixels(path: str | Path, *, window: str | int | tuple = "auto", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read any file keras-medimg accepts as float32 pixels in [0, 1]: the one reader for folders of images.

    DICOM files (by suffix or content, see `is_dicom`) go through `io.dicom.read_dicom` (modality LUT, VOI
    window, MONOCHROME1 inverted); a multi-frame file gives its first frame. Other files go through
    `read_image` and are scaled by the maximum of their bit depth.

    Args:
        path: a PNG, JPEG, TIFF, BMP or DICOM file.
        window: the DICOM VOI transform (see `read_dicom`); ignored for other files.
        max_pixels: the largest image read (see `MAX_PIXELS`).

    Returns:
        float32 `(H, W)` grey or `(H, W, 3)` RGB pixels in [0, 1].

    Raises:
        InvalidInputError: the file is missing, too large, or cannot be decoded.
    """
    if is_dicom(path):
        image = read_dicom(path, window=window, frame=0)  # frame 0 is the whole image of a single-frame file
        check_pixel_count(path, image.pixels.shape[:2], max_pixels)
        return image.pixels
    return to_float(read_image(path, max_pixels=max_pixels))


# PNG colour type -> samples per pixel, for the types `decode_png_rows` handles (palette and sub-byte depths go
# to libpng).
_PNG_SAMPLES = {0: 1, 2: 3, 4: 2, 6: 4}
_PNG_NONE, _PNG_UP = 0, 2


def decode_png_rows(data: bytes) -> np.ndarray | None:
    """Decode a PNG whose rows all use the "none" or "up" filter, 2-3x faster than libpng; None for other PNGs.

    `write_image` and `prepare` write every row with the "up" filter. Undoing it is a running sum down the
    columns, which NumPy does for the whole image in log2(height) vectorised additions instead of libpng's
    row-by-row loop, and libdeflate inflates the data about twice as fast as zlib. Both release the GIL, so
    input-pipeline threads decode in parallel. For a noisy 512x512 16-bit radiograph this takes about 2 ms
    instead of 4.5-6 ms with libpng (TensorFlow's `decode_png`, OpenCV).

    Args:
        data: the bytes of a PNG file.

    Returns:
        `uint8` or `uint16` pixels `(H, W, C)` as stored (C = 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA), the same
        values libpng gives; None when the file is not an 8/16-bit, non-interlaced, non-palette PNG with only
        "none"/"up" rows and no transparency chunk, or when its data does not inflate to exactly the expected
        size (then libpng decodes it, or reports the damage).
    """
    import deflate

    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR" or len(data) < 33:
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    depth, colour, interlace = data[24], data[25], data[28]
    if depth not in (8, 16) or colour not in _PNG_SAMPLES or interlace or not width or not height:
        return None
    view, chunks, pos, kind = memoryview(data), [], 8, b""
    while pos + 8 <= len(data):
        length, kind = int.from_bytes(view[pos : pos + 4], "big"), bytes(view[pos + 4 : pos + 8])
        if kind == b"IDAT":
            chunks.append(view[pos + 8 : pos + 8 + length])  # views: the one copy is the join below
        elif kind in (b"tRNS", b"IEND"):
            break
        pos += 12 + length
    if kind != b"IEND" or not chunks:
        return None
    samples, size = _PNG_SAMPLES[colour], depth // 8
    row_bytes = width * samples * size
    try:
        raw = deflate.zlib_decompress(b"".join(chunks), height * (row_bytes + 1))
    except deflate.DeflateError:
        return None  # damaged data (or a stream of another size): libpng names the problem
    rows = np.frombuffer(raw, np.uint8).reshape(height, row_bytes + 1)
    filters = rows[:, 0]
    if not np.all((filters == _PNG_UP) | (filters == _PNG_NONE)):
        return None
    # Each run of "up" rows adds the rows above it, back to the last "none" row (the first row's "up" adds
    # zeros): an inclusive prefix sum down each run, in uint8 so it wraps modulo 256 as the filter does. The
    # sum doubles its reach each step, switching between two buffers.
    pixels, spare = rows[:, 1:], np.empty((height, row_bytes), np.uint8)
    starts = np.flatnonzero(filters == _PNG_NONE)
    if starts.size == 0 or starts[0] != 0:
        starts = np.concatenate([[0], starts])
    for start, stop in zip(starts.tolist(), [*starts[1:].tolist(), height]):
        run, other, step, in_spare = pixels[start:stop], spare[start:stop], 1, False
        while step < len(run):
            np.add(run[step:], run[:-step], out=other[step:])
            other[:step] = run[:step]
            run, other, step, in_spare = other, run, step * 2, not in_spare
        if in_spare:
            pixels[start:stop] = run
    if size == 2:
        pixels = pixels.view(">u2").astype(np.uint16)
    return pixels.reshape(height, width, samples)


def to_float(array: np.ndarray) -> np.ndarray:
    """Scale integer pixels to float32 in [0, 1] by the maximum of their dtype (255 for uint8, 65535 for uint16).

    Args:
        array: integer or boolean pixels; float pixels are taken to be in [0, 1] already and only clipped.

    Returns:
        float32 array of the same shape.
    """
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / np.float32(np.iinfo(array.dtype).max)
    return np.clip(array, 0.0, 1.0).astype(np.float32)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """An 8-bit RGB copy of any image, for models trained on 8-bit photos (YOLO, SAM).

    Float pixels are taken as [0, 1]; other integer depths are stretched by the image's own maximum, so a 12-bit
    scan stored in uint16 still fills 0-255. Grey (H, W) or (H, W, 1) is repeated into three channels.

    Returns:
        a C-contiguous (H, W, 3) uint8 array.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating):
            image = np.clip(image * 255.0 + 0.5, 0, 255)
        else:
            image = image.astype("float64") * (255.0 / max(int(image.max()), 1))
        image = image.astype(np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image)


def _to_bits(array: np.ndarray, bits: int) -> np.ndarray:
    dtype = np.uint8 if bits == 8 else np.uint16
    top = np.iinfo(dtype).max
    if array.dtype == np.bool_:
        return array.astype(dtype) * dtype(top)
    if np.issubdtype(array.dtype, np.floating):
        return np.round(np.clip(array, 0.0, 1.0) * top).astype(dtype)
    if array.size and (array.min() < 0 or array.max() > top):
        raise ValueError(
            f"Integer pixels in [{array.min()}, {array.max()}] do not fit a {bits}-bit image; "
            f"scale them first (e.g. with to_float) or write with bits=16."
        )
    return array.astype(dtype)


# PNG rows are written with the "up" filter alone. libpng's default adaptive choice mostly picks Paeth for noisy
# 16-bit medical images, which compresses no better there but decodes 1.4-1.6x slower (5.4 vs 3.5 ms for a
# 512x512 16-bit radiograph here), and every training epoch without a cache decodes every file again.
_PNG_PARAMS = [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP] if hasattr(cv2, "IMWRITE_PNG_FILTER") else []


def write_image(path: str | Path, array: np.ndarray, *, bits: int = 8) -> Path:
    """Write pixels as a PNG, JPEG, TIFF or BMP file, atomically.

    Args:
        path: the output file; its suffix chooses the format (.png, .jpg/.jpeg, .tif/.tiff, .bmp).
        array: grey `(H, W)` or RGB `(H, W, 3)` pixels. Float arrays are taken to be in [0, 1] and scaled to the
            bit depth; integer arrays are written as they are (their values must fit the bit depth); boolean
            arrays become 0 and the maximum value.
        bits: 8 or 16. JPEG and BMP hold 8 bits only.

    Returns:
        `path`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, not {bits}.")
    if suffix not in RASTER_SUFFIXES:
        raise InvalidInputError(path, f"Cannot write images with the suffix '{path.suffix}'. Use one of {', '.join(RASTER_SUFFIXES)}.")
    if bits == 16 and suffix in _EIGHT_BIT_ONLY:
        raise InvalidInputError(path, f"{suffix} files hold 8 bits per pixel only. Write 16-bit images as .png or .tif.")
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"Expected pixels of shape (H, W) or (H, W, 3), got {array.shape}.")
    pixels = _to_bits(array, bits)
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(suffix, pixels, _PNG_PARAMS if suffix == ".png" else [])
    if not ok:
        raise InvalidInputError(path, f"OpenCV could not encode a {pixels.shape} {bits}-bit image as {suffix}.")
    return atomic_write_bytes(path, encoded.tobytes())
