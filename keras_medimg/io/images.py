"""8- and 16-bit PNG, JPEG and TIFF files as NumPy arrays, bit depth kept.

Arrays are grey `(H, W)` or colour `(H, W, 3)` in RGB order; OpenCV's BGR order stays inside this module.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from keras_medimg.errors import InvalidInputError
from keras_medimg.runs import atomic_write_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_EIGHT_BIT_ONLY = (".jpg", ".jpeg")


def read_image(path: str | Path) -> np.ndarray:
    """Read a PNG, JPEG or TIFF file without changing its bit depth.

    Args:
        path: the image file.

    Returns:
        `uint8` or `uint16` pixels (float32 for floating-point TIFF), grey `(H, W)` or RGB `(H, W, 3)`.
        An alpha channel is dropped.

    Raises:
        InvalidInputError: the file is missing or is not an image OpenCV can decode.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(path, "The image file does not exist. Check the path or the manifest that names it.")
    # imdecode on the bytes (rather than imread on the name) also opens paths with non-ASCII characters.
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise InvalidInputError(
            path, "The file is not a readable PNG, JPEG or TIFF image (empty, truncated or another format). Replace it or remove it."
        )
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.ndim == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


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
    """Write pixels as a PNG, JPEG or TIFF file, atomically.

    Args:
        path: the output file; its suffix chooses the format (.png, .jpg/.jpeg, .tif/.tiff).
        array: grey `(H, W)` or RGB `(H, W, 3)` pixels. Float arrays are taken to be in [0, 1] and scaled to the
            bit depth; integer arrays are written as they are (their values must fit the bit depth); boolean
            arrays become 0 and the maximum value.
        bits: 8 or 16. JPEG holds 8 bits only.

    Returns:
        `path`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, not {bits}.")
    if suffix not in IMAGE_SUFFIXES:
        raise InvalidInputError(path, f"Cannot write images with the suffix '{path.suffix}'. Use one of {', '.join(IMAGE_SUFFIXES)}.")
    if bits == 16 and suffix in _EIGHT_BIT_ONLY:
        raise InvalidInputError(path, "JPEG files hold 8 bits per pixel only. Write 16-bit images as .png or .tif.")
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
