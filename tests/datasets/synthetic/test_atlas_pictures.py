"""The demo atlas's mammograms are taken at the classification demo's resolution, then enlarged for print."""

from __future__ import annotations

import cv2
import numpy as np

from keras_medimg.datasets.synthetic.atlas import case_image, random_case
from keras_medimg.datasets.synthetic.mammo import Lesion, MAX_VALUE, draw_mammogram


def _spiculated_case():
    case = random_case(np.random.default_rng(0))
    lesion = Lesion("mass", "irregular", "spiculated", (0.5, 0.5), 0.12)
    return type(case)(view="CC", laterality="L", density=2, birads=5, lesions=(lesion,))


def _screening(seed: int, rows: int) -> np.ndarray:
    case = _spiculated_case()
    pixels = draw_mammogram(np.random.default_rng(seed), height=rows, width=rows * 3 // 4, view="CC", laterality="L",
                            density=2, lesions=case.lesions)
    return pixels.astype(np.float32) * (255.0 / MAX_VALUE)


def test_an_atlas_print_shrunk_to_the_detector_size_is_the_screening_image():
    """A 384-row print taken at 128 rows is, shrunk back to 128 rows, the 128-row screening drawing of the same
    case (the same finding at the same scale); without `detector_rows` it is drawn at its print size."""
    screening = _screening(5, 128)
    taken = case_image(np.random.default_rng(5), _spiculated_case(), height=384, width=288, detector_rows=128)
    assert taken.shape == (384, 288) and taken.dtype == np.uint8
    back = cv2.resize(taken.astype(np.float32), (96, 128), interpolation=cv2.INTER_AREA)
    assert np.abs(back - screening).mean() < 2.0
    drawn = case_image(np.random.default_rng(5), _spiculated_case(), height=384, width=288, detector_rows=None)
    np.testing.assert_allclose(drawn, np.round(_screening(5, 384)), atol=0.51)
