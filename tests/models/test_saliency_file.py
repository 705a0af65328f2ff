"""Grad-CAM of an image file: the heat map is drawn over the image as the model saw it, peak on the square."""

import cv2
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from keras_medimg.models.saliency import grad_cam_file  # noqa: E402

from .test_saliency import SQUARE, trained  # noqa: E402,F401 - the fixture: a tiny classifier that finds a square


def test_grad_cam_file_writes_an_overlay_whose_red_lies_on_the_square(trained, tmp_path):  # noqa: F811
    model, (images, _, corners) = trained
    top, left = corners[0]
    path = tmp_path / "image.png"
    # The fixture's channels are an image and two coordinate ramps; written and read back as they are (/255).
    cv2.imwrite(str(path), cv2.cvtColor((images[0] * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR))
    out = grad_cam_file(model, path, tmp_path / "cams" / "image.png", image_size=images.shape[1])
    assert out == tmp_path / "cams" / "image.png"
    picture = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB).astype(int)
    assert picture.shape == images.shape[1:]
    redness = picture[..., 0] - picture[..., 2]
    row, col = np.unravel_index(redness.argmax(), redness.shape)
    assert top - 2 <= row < top + SQUARE + 2 and left - 2 <= col < left + SQUARE + 2, (row, col, top, left)
