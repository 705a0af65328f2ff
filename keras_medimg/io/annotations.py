"""Bounding boxes and the annotation formats that carry them (PASCAL VOC XML, YOLO txt, COCO JSON)."""

from __future__ import annotations

from typing import NamedTuple


class Box(NamedTuple):
    """One axis-aligned box in pixels of the original image.

    `x1, y1` is the top-left corner and `x2, y2` the bottom-right one (exclusive, like array slicing), so the
    width is `x2 - x1`. `label` is the class name (or an index where no names exist); `score` is a detector's
    confidence and 1.0 for ground truth.
    """

    x1: float
    y1: float
    x2: float
    y2: float
    label: str | int = 0
    score: float = 1.0

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)
