"""Weight-free lesion masks inside a box: GrabCut, Otsu + largest component, the box itself, and their Dice."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from keras_medimg.detection import segment_fallback as sf
from keras_medimg.errors import ConfigError
from keras_medimg.io.annotations import Box

from .conftest import make_disc_image, write_disc_pairs


def _ring_lesion(size: int = 96) -> tuple[np.ndarray, np.ndarray, Box]:
    """A bright ring with a dark core (a necrotic glioma) on a mid-grey textured background."""
    rng = np.random.default_rng(3)
    image = (90 + rng.normal(0, 6, (size, size))).clip(0, 255).astype(np.uint8)
    truth = np.zeros((size, size), np.uint8)
    cv2.circle(truth, (50, 44), 18, 1, -1)
    image[truth > 0] = 210
    core = np.zeros_like(truth)
    cv2.circle(core, (50, 44), 8, 1, -1)
    image[core > 0] = 40
    return image, truth > 0, Box(30.0, 24.0, 71.0, 65.0, "lesion", 1.0)


@pytest.mark.parametrize("method", ["grabcut", "otsu"])
def test_each_method_outlines_a_disc_far_better_than_the_box(method):
    rng = np.random.default_rng(0)
    for _ in range(5):
        image, (x1, y1, x2, y2), mask = make_disc_image(rng, 64)
        box = Box(x1 - 2.0, y1 - 2.0, x2 + 2.0, y2 + 2.0, "t", 1.0)
        got = sf.BoxSegmenter(method)(image, box)
        assert got.shape == image.shape and got.dtype == bool
        assert sf.dice(got, mask > 0) > 0.9 > sf.dice(sf.box_mask(image, box), mask > 0) + 0.05


@pytest.mark.parametrize("method", ["grabcut", "otsu"])
def test_a_dark_necrotic_core_stays_inside_the_mask(method):
    image, truth, box = _ring_lesion()
    got = sf.BoxSegmenter(method)(image, box)
    assert got[44, 50]  # the core's centre: holes are filled
    assert sf.dice(got, truth) > 0.85
    assert not got[:20].any() and not got[:, :25].any()  # nothing outside the box


def test_sixteen_bit_and_float_images_give_about_the_same_mask_as_eight_bit():
    image, truth, box = _ring_lesion()
    for method in ("otsu", "grabcut"):
        eight = sf.BoxSegmenter(method)(image, box)
        for other in (image.astype(np.uint16) * 257, image.astype(np.float32) / 255):
            assert sf.dice(sf.BoxSegmenter(method)(other, box), eight) > 0.97


def test_degenerate_boxes_do_not_fail():
    flat = np.full((32, 32), 7, np.uint8)
    assert not sf.otsu_mask(flat, Box(4.0, 4.0, 20.0, 20.0, "t", 1.0)).any()  # one flat value: nothing stands out
    whole = Box(0.0, 0.0, 32.0, 32.0, "t", 1.0)
    assert sf.grabcut_mask(flat, whole).all()  # no background to learn from: the box itself
    tiny = sf.grabcut_mask(flat, Box(10.0, 10.0, 10.5, 10.5, "t", 1.0))
    assert tiny.shape == flat.shape


def test_unknown_method_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="grabcut, otsu, box"):
        sf.BoxSegmenter("snake")


def test_measure_dice_scores_every_method_on_the_masks_box_and_skips_empty_masks():
    rng = np.random.default_rng(1)
    pairs = [(image, mask) for image, _, mask in (make_disc_image(rng, 64) for _ in range(4))]
    pairs.append((pairs[0][0], np.zeros_like(pairs[0][1])))  # an empty mask has no box to prompt with
    report = sf.measure_dice(pairs, {name: sf.BoxSegmenter(name) for name in ("box", "grabcut", "otsu")})
    assert report["images"] == 4
    dice = report["dice"]
    # A disc fills pi/4 of its own bounding box: the box scores about 2 * 0.785 / 1.785 = 0.88.
    assert 0.8 < dice["box"] < 0.92 and dice["grabcut"] > dice["box"] and dice["otsu"] > dice["box"]
    assert sf.best_method(dice) in ("grabcut", "otsu")
    assert sf.best_method({"grabcut": None, "otsu": None}) == "grabcut"


def test_dice_report_reads_files(tmp_path):
    pairs = write_disc_pairs(tmp_path, np.random.default_rng(2), 3)
    report = sf.dice_report(pairs)
    assert report["images"] == 3 and report["prompt"] == "ground-truth box"
    assert set(report["dice"]) == {"box", "grabcut", "otsu"}
