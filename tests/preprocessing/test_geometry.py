"""Letterbox, foreground crop, flip and square crop keep pixels, boxes and masks in step."""

import numpy as np
import pytest

from keras_medimg.io.annotations import Box
from keras_medimg.preprocessing.geometry import crop_to_square, foreground_crop, hflip, letterbox


def _mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("shape,size", [((300, 200), 128), ((90, 160), 64), ((50, 50), 96), ((64, 100, 3), (48, 80))])
def test_letterbox_maps_box_and_mask_consistently(shape, size):
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    box = Box(shape[1] * 0.2, shape[0] * 0.3, shape[1] * 0.7, shape[0] * 0.9, "lesion")
    mask = np.zeros(shape[:2], np.uint8)
    mask[round(box.y1) : round(box.y2), round(box.x1) : round(box.x2)] = 255

    out, transform = letterbox(image, size)
    expected = (size, size) if isinstance(size, int) else size
    assert out.shape[:2] == expected and out.shape[2:] == image.shape[2:] and out.dtype == image.dtype

    (moved,) = transform.apply_boxes([box])
    moved_mask = transform.apply_mask(mask)
    assert moved_mask.shape == expected
    np.testing.assert_allclose(_mask_bbox(moved_mask), moved[:4], atol=1.0)
    assert moved.label == "lesion"

    (back,) = transform.invert_boxes([moved])
    np.testing.assert_allclose(back[:4], box[:4], atol=1e-6)
    restored = transform.invert_mask(moved_mask)
    assert restored.shape == mask.shape
    np.testing.assert_allclose(_mask_bbox(restored), _mask_bbox(mask), atol=2)


def test_letterbox_pads_centred_with_pad_value():
    image = np.ones((100, 200), np.uint16) * 1000
    out, transform = letterbox(image, 100, pad_value=7)
    assert (transform.scale, transform.pad_x, transform.pad_y) == (0.5, 0, 25)
    assert (out[:25] == 7).all() and (out[75:] == 7).all() and (out[25:75] == 1000).all()


def test_foreground_crop_finds_the_largest_bright_region():
    image = np.zeros((200, 300), np.float32)
    image[40:160, 20:120] = 0.8  # the body
    image[5:10, 250:260] = 1.0  # a small bright label, not the body
    cropped, (y0, y1, x0, x1) = foreground_crop(image, margin=0.05)
    assert (y0, y1, x0, x1) == (30, 170, 5, 135)
    assert cropped.shape == (140, 130)
    uniform = np.full((20, 30), 0.5, np.float32)
    assert foreground_crop(uniform)[1] == (0, 20, 0, 30)


def test_hflip_moves_boxes_with_pixels():
    image = np.zeros((10, 20), np.uint8)
    image[2:5, 1:4] = 1
    flipped, (box,) = hflip(image, [Box(1, 2, 4, 5, "a")])
    assert box == Box(16, 2, 19, 5, "a")
    assert flipped[2:5, 16:19].all() and flipped.sum() == 9


def test_crop_to_square_pads_and_blanks_outside_the_mask():
    image = np.arange(100, dtype=np.float32).reshape(10, 10) + 1
    crop = crop_to_square(image, Box(0, 2, 2, 6), pad_value=-1)
    assert crop.shape == (4, 4)
    assert (crop[:, 0] == -1).all()  # one column left of the image is padding
    np.testing.assert_array_equal(crop[:, 1:], image[2:6, 0:3])

    mask = np.zeros((10, 10), bool)
    mask[3:5, 3:5] = True
    crop = crop_to_square(np.dstack([image] * 3), Box(2, 2, 6, 6), mask=mask)
    assert crop.shape == (4, 4, 3)
    assert (crop[1:3, 1:3] > 0).all() and crop.sum() == 3 * image[3:5, 3:5].sum()
