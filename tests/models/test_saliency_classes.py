"""Grad-CAM of one file for several classes (multi-label concepts): one overlay per class, each on its evidence."""

import cv2
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from keras_medimg.models.saliency import grad_cam_files  # noqa: E402

from .test_saliency import SQUARE, trained  # noqa: E402,F401 - the fixture: a tiny classifier that finds a square


def _red_peak(path):
    picture = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(int)
    redness = picture[..., 0] - picture[..., 2]
    return np.unravel_index(redness.argmax(), redness.shape)


def test_one_overlay_per_class_and_each_lies_on_that_class_square(trained, tmp_path):  # noqa: F811
    model, (images, labels, corners) = trained
    # One picture with both squares: class 0's (top left) from an image of class 0, class 1's from one of class 1.
    first, second = int(np.argmax(labels == 0)), int(np.argmax(labels == 1))
    both = images[first].copy()
    (top0, left0), (top1, left1) = corners[first], corners[second]
    both[top1:top1 + SQUARE, left1:left1 + SQUARE] = images[second][top1:top1 + SQUARE, left1:left1 + SQUARE]
    path = tmp_path / "both.png"
    cv2.imwrite(str(path), cv2.cvtColor((both * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR))
    outs = {0: tmp_path / "cams" / "both_0.png", 1: tmp_path / "cams" / "both_1.png"}
    written = grad_cam_files(model, path, outs, image_size=both.shape[0])
    assert written == outs and all(p.is_file() for p in outs.values())
    row, col = _red_peak(outs[0])
    assert top0 - 2 <= row < top0 + SQUARE + 2 and left0 - 2 <= col < left0 + SQUARE + 2, (row, col, corners[first])
    row, col = _red_peak(outs[1])
    assert top1 - 2 <= row < top1 + SQUARE + 2 and left1 - 2 <= col < left1 + SQUARE + 2, (row, col, corners[second])


def test_no_class_writes_nothing(trained, tmp_path):  # noqa: F811
    model, _ = trained
    assert grad_cam_files(model, tmp_path / "absent.png", {}, image_size=32) == {}
