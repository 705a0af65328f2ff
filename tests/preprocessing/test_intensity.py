"""Window formulas (PS3.3 C.11.2.1.2), min-max scaling, CLAHE (OpenCV's at 8 bits, contrast-limited at 16) and median filters of any odd size."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage

from keras_medimg.preprocessing.intensity import clahe, median_filter, minmax_scale, window


def test_linear_window_follows_the_standard_with_half_unit_offsets():
    c, w = 40.0, 400.0
    x = np.array([-1000, c - 0.5 - (w - 1) / 2, c - 0.5 - (w - 1) / 2 + 1, c - 0.5, c - 0.5 + (w - 1) / 2, 1000])
    expected = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    out = window(x, c, w)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out[0] == 0 and out[1] == 0 and out[-1] == 1 and out[3] == pytest.approx(0.5)


def test_linear_exact_and_sigmoid():
    x = np.linspace(-100, 100, 21)
    np.testing.assert_allclose(window(x, 10, 50, "LINEAR_EXACT"), np.clip((x - 10) / 50 + 0.5, 0, 1), atol=1e-6)
    np.testing.assert_allclose(window(x, 10, 50, "sigmoid"), 1 / (1 + np.exp(-4 * (x - 10) / 50)), atol=1e-6)
    assert window(np.array([-1e6]), 0, 1, "SIGMOID")[0] == 0.0


def test_width_one_is_a_threshold_and_bad_windows_are_refused():
    np.testing.assert_array_equal(window(np.array([9, 10, 11]), 10.5, 1), [0, 0, 1])
    with pytest.raises(ValueError):
        window(np.zeros(3), 0, 0.5, "LINEAR")
    with pytest.raises(ValueError):
        window(np.zeros(3), 0, 0, "SIGMOID")
    with pytest.raises(ValueError, match="Unknown VOI"):
        window(np.zeros(3), 0, 10, "GAMMA")


def test_minmax_scale():
    np.testing.assert_allclose(minmax_scale(np.array([2.0, 4.0, 6.0])), [0, 0.5, 1])
    assert minmax_scale(np.full((3, 3), 7)).max() == 0
    np.testing.assert_allclose(minmax_scale(np.array([0.0, np.nan, 2.0])), [0, 0, 1])


@pytest.fixture
def low_contrast():
    rng = np.random.default_rng(1)
    base = np.tile(np.linspace(0.4, 0.5, 64), (64, 1))
    return np.clip(base + rng.normal(0, 0.01, base.shape), 0, 1)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_clahe_keeps_dtype_and_raises_contrast(low_contrast, dtype):
    image = np.round(low_contrast * np.iinfo(dtype).max).astype(dtype)
    out = clahe(image, clip_limit=4.0, tile_grid=(4, 4))
    assert out.dtype == dtype and out.shape == image.shape
    assert out.astype(float).std() > 1.5 * image.astype(float).std()


def test_clahe_on_float_works_at_16_bits(low_contrast):
    image = low_contrast.astype(np.float32)
    out = clahe(image, clip_limit=4.0, tile_grid=(4, 4))
    expected = clahe(np.round(image * 65535).astype(np.uint16), clip_limit=4.0, tile_grid=(4, 4)) / 65535
    assert out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    np.testing.assert_allclose(out, expected, atol=1e-3)  # the uint16 copy is rounded; the mapping is steep
    # More than 256 distinct levels: the float path did not go through 8 bits.
    assert len(np.unique(out)) > 256
    with pytest.raises(ValueError, match="single-channel"):
        clahe(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="clip_limit > 0"):
        clahe(image, clip_limit=0)


def _body(shape, seed):
    """A dim, low-contrast 'body' on a black background, as a windowed radiograph has."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    image = np.clip(0.3 + 0.05 * np.sin(xx / 40) + 0.05 * yy / shape[0] + rng.normal(0, 0.01, shape), 0, 1)
    image[:, : shape[1] // 6] = 0
    return image


@pytest.mark.parametrize("shape, grid", [((512, 400), (8, 8)), ((517, 403), (8, 8)), ((64, 64), (4, 3)), ((33, 90), (2, 5))])
@pytest.mark.parametrize("clip_limit", [0.5, 2.0, 40.0])
def test_clahe_on_8_bits_is_opencvs(shape, grid, clip_limit):
    image = np.round(_body(shape, 3) * 255).astype(np.uint8)
    ours = clahe(image, clip_limit, grid).astype(int)
    theirs = cv2.createCLAHE(clip_limit, (grid[1], grid[0])).apply(image).astype(int)
    assert np.abs(ours - theirs).max() <= 1  # float rounding of the blend
    assert (ours != theirs).mean() < 0.01


def test_clahe_limits_contrast_on_16_bits_as_on_8():
    image = _body((512, 400), 4)
    body = (slice(None), slice(80, None))
    eight, sixteen = np.round(image * 255).astype(np.uint8), np.round(image * 65535).astype(np.uint16)
    contrast = []
    for clip_limit in (1.0, 2.0, 4.0, 40.0):
        out16 = clahe(sixteen, clip_limit) / 65535
        # The clip limit means the same at both depths (OpenCV's own 16-bit CLAHE ignores it: 65536 bins).
        assert np.abs(out16 - clahe(eight, clip_limit) / 255).mean() < 0.02
        contrast.append(out16[body].std())
    assert contrast == sorted(contrast) and contrast[-1] > 3 * contrast[0], contrast
    assert contrast[0] < 1.3 * image[body].std()  # a clip limit of 1 leaves the contrast almost as it was
    assert len(np.unique(clahe(sixteen, 2.0))) > 4096  # the 16-bit detail survives the 256 bins


@pytest.mark.parametrize("size", [3, 5, 7, 9])
def test_median_filter_any_odd_size_agrees_between_8_and_16_bits(size):
    rng = np.random.default_rng(size)
    image8 = rng.integers(0, 256, (32, 40), dtype=np.uint8)
    out8 = median_filter(image8, size)
    out16 = median_filter(image8.astype(np.uint16) * 257, size)
    assert out8.dtype == np.uint8 and out16.dtype == np.uint16
    np.testing.assert_array_equal(out16, out8.astype(np.uint16) * 257)
    np.testing.assert_array_equal(out8, ndimage.median_filter(image8, size=size, mode="nearest"))


def test_median_filter_removes_salt_noise_and_checks_size():
    image = np.full((16, 16), 1000, np.uint16)
    image[5, 5] = 65535
    assert median_filter(image, 7).max() == 1000
    assert median_filter(np.zeros((8, 8, 3), np.uint16), 7).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="odd"):
        median_filter(image, 4)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_median_filter_keeps_a_single_channel_axis(dtype):
    image = np.zeros((9, 9, 1), dtype)
    image[4, 4, 0] = 200
    out = median_filter(image, 3)
    assert out.shape == (9, 9, 1) and out.dtype == dtype and out.max() == 0
