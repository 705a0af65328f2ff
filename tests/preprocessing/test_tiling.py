"""Tiling: the grid covers the image, positive tiles hold their box, stitching merges duplicates."""

import numpy as np
import pytest

from keras_medimg.io.annotations import Box
from keras_medimg.preprocessing.tiling import boxes_in_tile, random_positive_tiles, stitch_boxes, tile_positions


@pytest.mark.parametrize("height,width,tile,overlap", [(100, 150, 64, 16), (64, 64, 64, 0), (30, 200, 64, 8), (1000, 700, 256, 64)])
def test_grid_covers_every_pixel_inside_the_image(height, width, tile, overlap):
    positions = tile_positions(height, width, tile, overlap)
    covered = np.zeros((height, width), bool)
    for x, y in positions:
        assert 0 <= x and 0 <= y and (x + tile <= width or x == 0) and (y + tile <= height or y == 0)
        covered[y : y + tile, x : x + tile] = True
    assert covered.all()
    assert len(positions) == len(set(positions))


def test_overlap_must_be_smaller_than_the_tile():
    with pytest.raises(ValueError, match="overlap"):
        tile_positions(100, 100, 32, 32)


def test_random_positive_tiles_hold_their_box_and_are_reproducible():
    image = np.zeros((300, 400), np.uint16)
    boxes = [Box(20, 30, 50, 70, "knife"), Box(350, 250, 390, 290, "gun")]
    for box in boxes:
        image[int(box.y1) : int(box.y2), int(box.x1) : int(box.x2)] = 60000
    tiles = random_positive_tiles(image, boxes, 128, 10, np.random.default_rng(0))
    again = random_positive_tiles(image, boxes, 128, 10, np.random.default_rng(0))
    assert [(t.x, t.y) for t in tiles] == [(t.x, t.y) for t in again]
    assert len(tiles) == 10 and len({(t.x, t.y) for t in tiles}) > 1
    for t in tiles:
        assert t.image.shape == (128, 128) and t.boxes
        for box in t.boxes:
            # The pixels under each tile box are the object.
            assert (t.image[int(box.y1) : int(box.y2), int(box.x1) : int(box.x2)] == 60000).all()
    assert random_positive_tiles(image, [], 128, 5, np.random.default_rng(0)) == []


def test_boxes_mostly_outside_a_tile_are_dropped():
    boxes = [Box(0, 0, 10, 10, "a"), Box(60, 0, 80, 10, "b")]
    assert boxes_in_tile(boxes, 0, 0, 64) == [Box(0, 0, 10, 10, "a")]  # only 4 of b's 20 columns are inside
    assert boxes_in_tile(boxes, 50, 0, 64) == [Box(10, 0, 30, 10, "b")]


def test_stitch_merges_the_same_object_seen_by_two_tiles():
    positions = tile_positions(100, 160, 100, 40)  # tiles at x = 0 and x = 60
    assert positions == [(0, 0), (60, 0)]
    per_tile = [
        [Box(70, 10, 90, 30, "gun", 0.9), Box(5, 5, 15, 15, "knife", 0.5)],
        [Box(10.5, 10, 30, 30, "gun", 0.8), Box(12, 10, 30, 30, "knife", 0.7)],
    ]
    merged = stitch_boxes(per_tile, positions)
    assert merged == [Box(70, 10, 90, 30, "gun", 0.9), Box(72, 10, 90, 30, "knife", 0.7), Box(5, 5, 15, 15, "knife", 0.5)]


def test_stitch_can_merge_across_classes_and_keeps_score_order():
    positions = [(0, 0), (60, 0)]
    per_tile = [[Box(70, 10, 90, 30, "gun", 0.6)], [Box(10, 10, 30, 30, "knife", 0.8)]]
    assert len(stitch_boxes(per_tile, positions)) == 2  # different labels stay apart by default
    assert stitch_boxes(per_tile, positions, class_agnostic=True) == [Box(70, 10, 90, 30, "knife", 0.8)]
