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


def clahe(image: np.ndarray, clip_limit: float = 2.0, tile_grid: tuple[int, int] = (8, 8), bins: int = 256) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a single-channel image, at any bit depth.

    This is OpenCV's CLAHE (tiles, clipping and redistribution, bilinear blending of the tiles' mappings), with
    each tile's histogram in `bins` bins whatever the bit depth: on a uint8 image it gives what
    `cv2.createCLAHE(...).apply` gives. OpenCV itself counts a 16-bit image in 65536 bins, where the clip limit
    falls to one count per level: every tile is equalised fully and nothing is limited. Here a 16-bit or float
    image is binned like its 8-bit version, and its mapping is interpolated between the bins, so the clip limit
    means what it means for the 8-bit JPEGs of the studies and the 16-bit detail is kept.

    Args:
        image: `(H, W)` pixels as uint8, uint16, or float in [0, 1].
        clip_limit: contrast limit per tile, as OpenCV counts it: a histogram bin holds at most `clip_limit`
            times the count of a flat histogram (about 1 leaves the image as it was; 2 to 4 are usual; `bins` or
            more is plain adaptive equalisation). Must be > 0.
        tile_grid: number of tiles `(rows, columns)`.
        bins: histogram bins per tile (256 as 8-bit CLAHE).

    Returns:
        The equalised image in the dtype it came in (float32 for float input).
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"CLAHE works on single-channel (H, W) images, got shape {image.shape}.")
    if image.dtype in (np.uint8, np.uint16):
        scale = float(np.iinfo(image.dtype).max)
    elif np.issubdtype(image.dtype, np.floating):
        scale = 1.0
    else:
        raise ValueError(f"CLAHE needs uint8, uint16 or float pixels in [0, 1], got {image.dtype}.")
    levels, (tiles_y, tiles_x) = int(bins), (int(tile_grid[0]), int(tile_grid[1]))
    if not clip_limit > 0 or levels < 2 or tiles_y < 1 or tiles_x < 1:
        raise ValueError(f"CLAHE needs clip_limit > 0, bins >= 2 and tiles >= 1, got {clip_limit}, {bins}, {tile_grid}.")
    height, width = image.shape
    # Each pixel's grey level on the bin scale [0, levels - 1] (whole numbers for an 8-bit image at 256 bins).
    level = np.clip(image.astype(np.float32) * np.float32((levels - 1) / scale), 0, levels - 1)
    if scale == 1.0:
        level = np.nan_to_num(level, copy=False)
    binned = np.rint(level).astype(np.intp)
    # For the histograms the image is padded to a whole number of tiles as OpenCV pads it: mirrored
    # (BORDER_REFLECT_101), and when one side needs it both get `tiles - size % tiles` (a whole tile if even).
    pad = (0, 0) if height % tiles_y == 0 and width % tiles_x == 0 else (tiles_y - height % tiles_y, tiles_x - width % tiles_x)
    padded = np.pad(binned, ((0, pad[0]), (0, pad[1])), mode="reflect")
    tile_h, tile_w = padded.shape[0] // tiles_y, padded.shape[1] // tiles_x
    blocks = padded.reshape(tiles_y, tile_h, tiles_x, tile_w).transpose(0, 2, 1, 3).reshape(tiles_y * tiles_x, -1)
    offsets = np.arange(tiles_y * tiles_x)[:, None] * levels
    hist = np.bincount((blocks + offsets).ravel(), minlength=tiles_y * tiles_x * levels).reshape(-1, levels)
    area = tile_h * tile_w
    limit = max(int(clip_limit * area / levels), 1)
    excess = np.maximum(hist - limit, 0).sum(axis=1)
    hist = np.minimum(hist, limit) + (excess // levels)[:, None]
    for tile, residual in enumerate(excess % levels):  # what is left goes one count each to evenly spaced bins
        if residual:
            hist[tile, np.arange(0, levels, max(levels // residual, 1))[:residual]] += 1
    luts = np.rint(np.cumsum(hist, axis=1).astype(np.float32) * np.float32((levels - 1) / area)) / np.float32(levels - 1)
    # A tile's mapping is read linearly between bins: lut[low] + (lut[low + 1] - lut[low]) * frac.
    steps = np.diff(luts, axis=1, append=luts[:, -1:])
    low = np.minimum(level.astype(np.int32), levels - 2)
    frac = level - low
    low = low.astype(np.uint8) if levels <= 256 else low
    read = _lut_reader(levels)

    def mapped(tile: int, y_slice: slice, x_slice: slice) -> np.ndarray:
        block = low[y_slice, x_slice]
        return read(block, luts[tile]) + read(block, steps[tile]) * frac[y_slice, x_slice]

    # Each pixel blends the mappings of the four nearest tile centres (bilinear in its position), taken cell by
    # cell between tile centres, where the four tiles are the same.
    out = np.empty((height, width), np.float32)
    y_cells = _clahe_cells(height, tile_h, tiles_y)
    for x_slice, tx0, tx1, wx in _clahe_cells(width, tile_w, tiles_x):
        for y_slice, ty0, ty1, wy in y_cells:
            upper = mapped(ty0 * tiles_x + tx0, y_slice, x_slice)
            if tx1 != tx0:
                upper += (mapped(ty0 * tiles_x + tx1, y_slice, x_slice) - upper) * wx
            if ty1 != ty0:
                lower = mapped(ty1 * tiles_x + tx0, y_slice, x_slice)
                if tx1 != tx0:
                    lower += (mapped(ty1 * tiles_x + tx1, y_slice, x_slice) - lower) * wx
                upper += (lower - upper) * wy[:, None]
            out[y_slice, x_slice] = upper
    np.clip(out, 0.0, 1.0, out=out)
    if scale > 1:
        return np.rint(out * np.float32(scale)).astype(image.dtype)
    return out


def _lut_reader(levels: int):
    """`read(indices, table)`: table[indices], through OpenCV's LUT for uint8 indices (several times NumPy's speed)."""
    if levels > 256:
        return lambda indices, table: table[indices]
    return lambda indices, table: cv2.LUT(np.ascontiguousarray(indices), table.astype(np.float32)).reshape(indices.shape)


def _clahe_cells(size: int, tile: int, tiles: int) -> list[tuple[slice, int, int, np.ndarray]]:
    """Along one axis: the runs of pixels between two tile centres, each with its two tiles and the second tile's
    weight per pixel (OpenCV's: position / tile - 0.5, clamped to the first and last tile)."""
    position = (np.arange(size) / tile - 0.5).astype(np.float32)
    first = np.floor(position).astype(np.intp)
    cells = []
    for cell in np.unique(first):
        where = np.flatnonzero(first == cell)
        run = slice(int(where[0]), int(where[-1]) + 1)
        a, b = max(int(cell), 0), min(int(cell) + 1, tiles - 1)
        cells.append((run, a, b, (position[run] - np.float32(cell)) if a != b else np.zeros(len(where), np.float32)))
    return cells


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
