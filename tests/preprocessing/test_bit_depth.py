"""The one 16-bit -> 8-bit conversion: percentile, min-max and DICOM window; never a >> 8."""

import numpy as np
import pytest

from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.io.images import write_image
from keras_medimg.preprocessing.bit_depth import Conversion, read_scan, to_uint8


def test_a_narrow_16_bit_range_fills_8_bits_where_a_shift_would_not():
    pixels = np.linspace(30000, 31000, 1000, dtype=np.float32).reshape(10, 100).astype(np.uint16)
    shifted = pixels >> 8  # what OpenCV's 8-bit loading does: about 4 grey levels left
    assert len(np.unique(shifted)) <= 5
    for method in ("percentile", "minmax"):
        out = to_uint8(pixels, Conversion(method))
        assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 200


def test_percentile_clips_hot_pixels_and_minmax_does_not():
    pixels = np.full((100, 100), 1000, np.uint16)
    pixels[:, 50:] = 2000
    pixels[0, 0] = 65535  # one hot pixel
    assert to_uint8(pixels, Conversion("percentile", 1, 99))[50, 60] == 255
    assert to_uint8(pixels, Conversion("minmax"))[50, 60] < 10


def test_read_scan_png_and_dicom_rules(tmp_path):
    path = tmp_path / "a.png"
    write_image(path, np.tile(np.arange(100, 200, dtype=np.uint16), (5, 1)), bits=16)
    assert read_scan(path, Conversion("minmax"))[0].tolist()[::33] == [0, 85, 170, 255]
    with pytest.raises(InvalidInputError, match="not DICOM"):
        read_scan(path, Conversion("dicom"))
    with pytest.raises(ConfigError):
        Conversion("shift")
    assert Conversion().describe()["method"] == "percentile"
