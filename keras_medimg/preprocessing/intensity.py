"""Intensity transforms on NumPy arrays: VOI windowing, min-max scaling, CLAHE and median filtering.

The window formulas are those of DICOM PS3.3 C.11.2.1.2 with the output range set to [0, 1]; `io.dicom`
applies them after the modality LUT, so the same function serves DICOM files and raw arrays.
"""

from __future__ import annotations

import cv2
import numpy as np

VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def window(pixels: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Map raw values (after the modality LUT, e.g. Hounsfield units) through a VOI window to [0, 1].

    Args:
        pixels: values in the units the window is given in.
        center: window center.
        width: window width; at least 1 for LINEAR, above 0 for LINEAR_EXACT and SIGMOID.
        function: the VOI LUT Function, LINEAR (the DICOM default, with its half-unit offsets),
            LINEAR_EXACT or SIGMOID.

    Returns:
        float32 array in [0, 1] of the same shape.
    """
    function = function.upper()
    if function not in VOI_FUNCTIONS:
        raise ValueError(f"Unknown VOI LUT function '{function}'; use one of {', '.join(VOI_FUNCTIONS)}.")
    if not (np.isfinite(center) and np.isfinite(width)) or width <= 0 or (function == "LINEAR" and width < 1):
        raise ValueError(f"Window width {width} (center {center}) is not valid for {function}.")
    x = np.asarray(pixels, dtype=np.float64)
    if function == "SIGMOID":
        # exp overflows to inf far below the center, which correctly gives 0; the warning says nothing useful.
        with np.errstate(over="ignore"):
            return (1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))).astype(np.float32)
    if function == "LINEAR":
        center, width = center - 0.5, width - 1.0
        if width == 0:
            # A width of 1 is a threshold: the linear segment has no length.
            return (x > center).astype(np.float32)
    # Clipping the linear ramp is the piecewise definition: <= lower edge -> 0, > upper edge -> 1.
    return np.clip((x - center) / width + 0.5, 0.0, 1.0).astype(np.float32)


def minmax_scale(pixels: np.ndarray) -> np.ndarray:
    """Scale values linearly so that their minimum is 0 and their maximum 1.

    Args:
        pixels: any real array; NaN values are ignored when finding the range and become 0.

    Returns:
        float32 array in [0, 1]; a constant array gives zeros.
    """
    x = np.asarray(pixels, dtype=np.float64)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return np.zeros(x.shape, np.float32)
    low, high = finite.min(), finite.max()
    if high <= low:
        return np.zeros(x.shape, np.float32)
    return np.nan_to_num(np.clip((x - low) / (high - low), 0.0, 1.0), nan=0.0).astype(np.float32)


def clahe(image: np.ndarray, clip_limit: float = 2.0, tile_grid: tuple[int, int] = (8, 8)) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (OpenCV) of a single-channel image.

    Args:
        image: `(H, W)` pixels as uint8, uint16, or float in [0, 1] (equalised at 16 bits, so no detail of a
            16-bit source is lost, and returned as float32).
        clip_limit: OpenCV's clip limit (contrast limit per tile, relative to a flat histogram).
        tile_grid: number of tiles `(rows, columns)`.

    Returns:
        The equalised image in the dtype it came in (float32 for float input).
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"CLAHE works on single-channel (H, W) images, got shape {image.shape}.")
    operator = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(int(tile_grid[1]), int(tile_grid[0])))
    if image.dtype in (np.uint8, np.uint16):
        return operator.apply(np.ascontiguousarray(image))
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"CLAHE needs uint8, uint16 or float pixels in [0, 1], got {image.dtype}.")
    sixteen = np.round(np.clip(image, 0.0, 1.0) * 65535).astype(np.uint16)
    return (operator.apply(sixteen).astype(np.float32) / 65535).astype(np.float32)


def median_filter(image: np.ndarray, size: int) -> np.ndarray:
    """Median filter with a square `size` x `size` window, borders replicated.

    Args:
        image: `(H, W)` or `(H, W, C)` pixels, uint8, uint16 or float32.
        size: odd window size (1 returns a copy).

    Returns:
        The filtered image, same shape and dtype.
    """
    image = np.asarray(image)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"The median filter size must be an odd positive integer, got {size}.")
    if size == 1:
        return image.copy()
    # OpenCV filters any odd size at 8 bits but only sizes 3 and 5 at 16 or 32 bits.
    if image.dtype == np.uint8 or (image.dtype in (np.uint16, np.float32) and size in (3, 5)):
        # medianBlur drops a single channel axis: (H, W, 1) comes back (H, W).
        return cv2.medianBlur(np.ascontiguousarray(image), size).reshape(image.shape)
    from scipy import ndimage

    footprint = (size, size) if image.ndim == 2 else (size, size, 1)
    return ndimage.median_filter(image, size=footprint, mode="nearest")
