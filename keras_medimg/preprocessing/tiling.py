"""Tiles of large images for detection: random positive tiles to train on, a fixed overlapping grid to predict
on, and stitching the grid's boxes back into one list (the xray study's tiling).

Positions are `(x, y)`, the top-left corner of a tile in pixels of the whole image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from keras_medimg.io.annotations import Box


class Tile(NamedTuple):
    """One `tile x tile` crop and the boxes inside it, in the tile's own pixels."""

    image: np.ndarray
    boxes: list[Box]
    x: int
    y: int


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    # The last tile ends exactly at the border, so no pixel is left out and no tile hangs over.
    starts.append(length - tile)
    return starts


def tile_positions(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """The top-left corners of a grid of tiles covering the whole image, row by row.

    Args:
        height: image height in pixels.
        width: image width in pixels.
        tile: tile side in pixels.
        overlap: pixels shared by neighbouring tiles (0 <= overlap < tile), so an object cut by one tile's
            border is whole in the next one when it is smaller than the overlap.

    Returns:
        `(x, y)` positions. An image smaller than a tile gives one tile at (0, 0) (`crop_tile` pads it).
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be at least 0 and smaller than the tile ({tile}), got {overlap}.")
    stride = tile - overlap
    return [(x, y) for y in _starts(height, tile, stride) for x in _starts(width, tile, stride)]


def crop_tile(image: np.ndarray, x: int, y: int, tile: int, *, pad_value: float = 0) -> np.ndarray:
    """The `tile x tile` crop at `(x, y)`, padded with `pad_value` where it leaves the image."""
    crop = np.full((tile, tile) + image.shape[2:], pad_value, dtype=image.dtype)
    part = image[y : y + tile, x : x + tile]
    crop[: part.shape[0], : part.shape[1]] = part
    return crop


def boxes_in_tile(boxes: Sequence[Box], x: int, y: int, tile: int, *, min_visible: float = 0.5) -> list[Box]:
    """Boxes clipped to a tile and moved into its pixels; boxes with less than `min_visible` of their area
    inside are dropped (a sliver of an object is not a fair positive)."""
    kept = []
    for box in boxes:
        x1, y1 = max(box.x1, x), max(box.y1, y)
        x2, y2 = min(box.x2, x + tile), min(box.y2, y + tile)
        if x2 <= x1 or y2 <= y1 or box.area <= 0:
            continue
        if (x2 - x1) * (y2 - y1) < min_visible * box.area:
            continue
        kept.append(box._replace(x1=x1 - x, y1=y1 - y, x2=x2 - x, y2=y2 - y))
    return kept


def random_positive_tiles(
    image: np.ndarray, boxes: Sequence[Box], tile: int, n: int, rng: np.random.Generator, *, pad_value: float = 0
) -> list[Tile]:
    """`n` tiles, each placed at random so that it holds a randomly chosen box (whole where it fits).

    Training on such tiles keeps small objects at full resolution and every tile positive, the sampling the
    xray study trains its detector with.

    Args:
        image: `(H, W)` or `(H, W, C)` pixels.
        boxes: the objects; with none, no tile is returned.
        tile: tile side in pixels.
        n: how many tiles.
        rng: the random generator (`np.random.default_rng(seed)`), for reproducible tiles.
        pad_value: value where a tile leaves a small image.

    Returns:
        The tiles with their boxes (every box at least half inside, in tile pixels).
    """
    if not boxes:
        return []
    height, width = image.shape[:2]
    tiles = []
    for _ in range(n):
        box = boxes[int(rng.integers(len(boxes)))]
        x = _random_start(box.x1, box.x2, width, tile, rng)
        y = _random_start(box.y1, box.y2, height, tile, rng)
        crop = crop_tile(image, x, y, tile, pad_value=pad_value)
        tiles.append(Tile(crop, boxes_in_tile(boxes, x, y, tile), x, y))
    return tiles


def _random_start(low: float, high: float, length: int, tile: int, rng: np.random.Generator) -> int:
    """A tile start in [0, length - tile] that contains [low, high), or its centre when it is longer than a tile."""
    if length <= tile:
        return 0
    if high - low <= tile:
        first, last = int(np.ceil(high)) - tile, int(np.floor(low))
    else:
        centre = int((low + high) / 2)
        first = last = centre - tile // 2
    first, last = max(0, first), min(length - tile, last)
    return int(rng.integers(first, last + 1)) if last >= first else int(np.clip(first, 0, length - tile))


def stitch_boxes(
    per_tile_boxes: Sequence[Sequence[Box]],
    positions: Sequence[tuple[int, int]],
    iou: float = 0.5,
    *,
    class_agnostic: bool = False,
) -> list[Box]:
    """Move each tile's detections into image pixels and merge duplicates from overlapping tiles.

    Args:
        per_tile_boxes: the boxes found in each tile, in tile pixels.
        positions: the `(x, y)` of each tile, from `tile_positions`.
        iou: boxes overlapping more than this are one object; the highest score is kept.
        class_agnostic: merge boxes whatever their label (one object seen as two classes by two tiles is one
            box); by default only boxes of the same label are merged.

    Returns:
        The merged boxes, highest score first.
    """
    if len(per_tile_boxes) != len(positions):
        raise ValueError(f"Got boxes for {len(per_tile_boxes)} tiles but {len(positions)} positions.")
    moved = [
        box._replace(x1=box.x1 + x, y1=box.y1 + y, x2=box.x2 + x, y2=box.y2 + y)
        for boxes, (x, y) in zip(per_tile_boxes, positions)
        for box in boxes
    ]
    return non_max_suppression(moved, iou, class_agnostic=class_agnostic)


def non_max_suppression(boxes: Sequence[Box], iou: float, *, class_agnostic: bool = True) -> list[Box]:
    """Greedy NMS (torchvision's `batched_nms`): keep the best-scoring box, drop those of its group overlapping it
    by more than `iou`, repeat; a group is one label, or every box with `class_agnostic`.

    Returns:
        The kept boxes, highest score first (ties keep their input order).
    """
    if not boxes:
        return []
    import torch
    from torchvision.ops import batched_nms

    corners = torch.tensor([box[:4] for box in boxes], dtype=torch.float64)
    scores = torch.tensor([box.score for box in boxes], dtype=torch.float64)
    labels = [str(box.label) for box in boxes]
    index = {label: i for i, label in enumerate(dict.fromkeys(labels))}
    groups = torch.zeros(len(boxes), dtype=torch.int64) if class_agnostic else torch.tensor([index[label] for label in labels])
    # Equal scores keep input order: torchvision sorts by score only, so break ties with a tiny rank offset.
    ranked = scores - torch.arange(len(boxes), dtype=torch.float64) * 1e-12
    kept = batched_nms(corners, ranked, groups, iou)
    return [boxes[int(i)] for i in kept]
