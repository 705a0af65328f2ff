"""Geometric transforms of whole images that keep boxes and masks in step: letterbox resize, foreground crop,
horizontal flip, square crops around a box.

NumPy/OpenCV only (no Keras, no TensorFlow), so `prepare` worker processes and the apps can use them on any
backend. Boxes are `io.annotations.Box` in pixels with exclusive `x2, y2`, so a pixel `i` covers `[i, i + 1)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from keras_medimg.io.annotations import Box


@dataclass(frozen=True)
class Transform:
    """How `letterbox` moved an image: `out = in * scale + pad`, per axis.

    Args:
        scale: resize factor applied to both axes.
        pad_x: pixels added on the left.
        pad_y: pixels added on the top.
        in_size: `(height, width)` of the original image.
        out_size: `(height, width)` of the letterboxed image.
    """

    scale: float
    pad_x: int
    pad_y: int
    in_size: tuple[int, int]
    out_size: tuple[int, int]

    def _resized_size(self) -> tuple[int, int]:
        return _scaled(self.in_size, self.scale)

    def apply_boxes(self, boxes: Sequence[Box]) -> list[Box]:
        """Map boxes of the original image onto the letterboxed one."""
        s = self.scale
        return [
            box._replace(x1=box.x1 * s + self.pad_x, y1=box.y1 * s + self.pad_y, x2=box.x2 * s + self.pad_x, y2=box.y2 * s + self.pad_y)
            for box in boxes
        ]

    def invert_boxes(self, boxes: Sequence[Box]) -> list[Box]:
        """Map boxes found on the letterboxed image back to the original one, clipped to its borders."""
        s = self.scale
        height, width = self.in_size
        return [
            box._replace(
                x1=float(np.clip((box.x1 - self.pad_x) / s, 0, width)),
                y1=float(np.clip((box.y1 - self.pad_y) / s, 0, height)),
                x2=float(np.clip((box.x2 - self.pad_x) / s, 0, width)),
                y2=float(np.clip((box.y2 - self.pad_y) / s, 0, height)),
            )
            for box in boxes
        ]

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        """Letterbox a label mask the way the image was: nearest-neighbour resize, padded with 0."""
        return _place(_resize(mask, self._resized_size(), cv2.INTER_NEAREST_EXACT), self, pad_value=0)

    def invert_mask(self, mask: np.ndarray) -> np.ndarray:
        """Map a mask predicted on the letterboxed image back to the original image size."""
        height, width = self._resized_size()
        inner = mask[self.pad_y : self.pad_y + height, self.pad_x : self.pad_x + width]
        return _resize(inner, self.in_size, cv2.INTER_NEAREST_EXACT)


def _scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _resize(image: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    height, width = size
    if image.shape[:2] == (height, width):
        return image.copy()
    resized = cv2.resize(image, (width, height), interpolation=interpolation)
    # OpenCV drops a trailing channel axis of length 1; keep the caller's shape.
    if image.ndim == 3 and resized.ndim == 2:
        resized = resized[:, :, None]
    return resized


def _place(resized: np.ndarray, transform: Transform, *, pad_value: float) -> np.ndarray:
    out_h, out_w = transform.out_size
    canvas = np.full((out_h, out_w) + resized.shape[2:], pad_value, dtype=resized.dtype)
    h, w = resized.shape[:2]
    canvas[transform.pad_y : transform.pad_y + h, transform.pad_x : transform.pad_x + w] = resized
    return canvas


def letterbox(image: np.ndarray, size: int | tuple[int, int], *, pad_value: float = 0) -> tuple[np.ndarray, Transform]:
    """Resize keeping the aspect ratio, then pad equally on both sides to `size` (YOLO's letterbox).

    Args:
        image: `(H, W)` or `(H, W, C)` pixels of any dtype OpenCV resizes (uint8, uint16, float32).
        size: the output side, or `(height, width)`.
        pad_value: value of the padding.

    Returns:
        The letterboxed image (same dtype and channels) and the `Transform` that maps boxes and masks onto it.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    in_h, in_w = image.shape[:2]
    scale = min(out_h / in_h, out_w / in_w)
    new_h, new_w = _scaled((in_h, in_w), scale)
    transform = Transform(
        scale=scale, pad_x=(out_w - new_w) // 2, pad_y=(out_h - new_h) // 2, in_size=(in_h, in_w), out_size=(out_h, out_w)
    )
    # INTER_AREA averages when shrinking (no aliasing of fine texture); it is bilinear-like when enlarging.
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return _place(_resize(image, (new_h, new_w), interpolation), transform, pad_value=pad_value), transform


def foreground_crop(image: np.ndarray, *, margin: float = 0.02) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Crop to the body (or breast): Otsu threshold, largest connected component, plus a margin.

    Args:
        image: grey `(H, W)` or `(H, W, C)` pixels, foreground brighter than the background (MONOCHROME1
            already inverted).
        margin: extra border on every side, as a fraction of the image's height (top/bottom) and width (sides).

    Returns:
        The cropped image and its bounds `(y0, y1, x0, x1)` in the original (exclusive ends). An image without a
        foreground (constant) is returned whole.
    """
    grey = image if image.ndim == 2 else image.mean(axis=2)
    grey = np.asarray(grey, dtype=np.float32)
    low, high = float(grey.min()), float(grey.max())
    height, width = grey.shape
    if high <= low:
        return image.copy(), (0, height, 0, width)
    # Otsu in OpenCV needs 8-bit input; 256 levels are plenty to split body from air.
    scaled = np.round((grey - low) * (255.0 / (high - low))).astype(np.uint8)
    _, binary = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count < 2:
        return image.copy(), (0, height, 0, width)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[largest, :4])
    pad_y, pad_x = round(margin * height), round(margin * width)
    y0, y1 = max(0, y - pad_y), min(height, y + h + pad_y)
    x0, x1 = max(0, x - pad_x), min(width, x + w + pad_x)
    return image[y0:y1, x0:x1].copy(), (y0, y1, x0, x1)


def hflip(image: np.ndarray, boxes: Sequence[Box] = ()) -> tuple[np.ndarray, list[Box]]:
    """Mirror an image left-right, and its boxes with it.

    Args:
        image: `(H, W)` or `(H, W, C)` pixels.
        boxes: boxes in pixels of `image`.

    Returns:
        The flipped image and the flipped boxes.
    """
    width = image.shape[1]
    flipped = [box._replace(x1=width - box.x2, x2=width - box.x1) for box in boxes]
    return image[:, ::-1].copy(), flipped


def crop_to_square(image: np.ndarray, box: Box, *, mask: np.ndarray | None = None, pad_value: float = 0) -> np.ndarray:
    """Crop the square that holds `box` (its longer side, centred on it), padding outside the image.

    The brats app classifies the lesion a detector found this way, optionally with everything outside the
    segmentation mask blanked so the classifier sees only the lesion.

    Args:
        image: `(H, W)` or `(H, W, C)` pixels.
        box: the region to keep, in pixels of `image`.
        mask: optional `(H, W)` mask of `image`; pixels where it is 0 become `pad_value`.
        pad_value: value of the padding and of the blanked background.

    Returns:
        A square `(side, side)` or `(side, side, C)` crop, `side = ceil(max(box width, box height))` (at least 1).
    """
    side = max(1, int(np.ceil(max(box.width, box.height))))
    x0 = int(np.floor((box.x1 + box.x2 - side) / 2))
    y0 = int(np.floor((box.y1 + box.y2 - side) / 2))
    if mask is not None:
        if mask.shape[:2] != image.shape[:2]:
            raise ValueError(f"The mask has shape {mask.shape[:2]} but the image {image.shape[:2]}; they must match.")
        keep = mask.astype(bool)
        image = np.where(keep if image.ndim == 2 else keep[:, :, None], image, np.asarray(pad_value, dtype=image.dtype))
    crop = np.full((side, side) + image.shape[2:], pad_value, dtype=image.dtype)
    height, width = image.shape[:2]
    sy0, sy1 = max(0, y0), min(height, y0 + side)
    sx0, sx1 = max(0, x0), min(width, x0 + side)
    if sy1 > sy0 and sx1 > sx0:
        crop[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return crop
