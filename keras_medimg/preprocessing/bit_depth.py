"""The one documented conversion of a 16-bit (or DICOM) scan into the 8-bit picture a YOLO detector reads.

Detectors pretrained on photographs read 8-bit images. A 16-bit body scan uses only part of its 65,536 levels,
so a plain `>> 8` (what OpenCV and Ultralytics do when they load a 16-bit PNG as colour) throws away most of the
contrast. Here the range is kept until this one step, which is the same at training, prediction and in the
exported metadata:

- `percentile` (default): the image's own `low`..`high` percentiles map to 0..255 (robust to a few hot pixels);
- `minmax`: the image's minimum..maximum map to 0..255;
- `dicom`: DICOM files go through their VOI window (or VOI LUT) as `io.dicom.read_dicom(window="auto")` applies
  it, then 0..1 -> 0..255. Other files have no window, so this method refuses them.

The conversion works on the whole image, before any tiling, so a tile's grey levels do not depend on where it
was cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from keras_medimg.errors import ConfigError, InvalidInputError

Method = Literal["percentile", "minmax", "dicom"]


@dataclass(frozen=True)
class Conversion:
    """How a scan becomes 8 bits.

    Args:
        method: `percentile`, `minmax` or `dicom` (see the module docstring).
        low: lower percentile of `percentile` (0-100).
        high: upper percentile of `percentile` (0-100, above `low`).
    """

    method: Method = "percentile"
    low: float = 0.05
    high: float = 99.95

    def __post_init__(self) -> None:
        if self.method not in ("percentile", "minmax", "dicom"):
            raise ConfigError(f"Unknown 16-bit conversion '{self.method}'; use percentile, minmax or dicom.")
        if not 0 <= self.low < self.high <= 100:
            raise ConfigError(f"Conversion percentiles must satisfy 0 <= low < high <= 100, not {self.low}, {self.high}.")

    def describe(self) -> dict[str, object]:
        """What a serving system needs to repeat the conversion (written to metadata.json)."""
        text = {
            "percentile": f"clip to the image's {self.low}th..{self.high}th percentiles, scale linearly to 0..255",
            "minmax": "scale the image's minimum..maximum linearly to 0..255",
            "dicom": "apply the DICOM VOI window (first window, else first VOI LUT, else min-max), scale 0..1 to 0..255",
        }[self.method]
        return {"method": self.method, "low": self.low, "high": self.high, "rule": text,
                "rounding": "round half up, clip to 0..255, grey repeated into 3 channels"}


def read_scan(path: str | Path, conversion: Conversion = Conversion()) -> np.ndarray:
    """Read an image (PNG/TIFF/JPEG at any bit depth, or DICOM) and convert it to 8-bit grey with `conversion`.

    Returns:
        uint8 `(H, W)`.

    Raises:
        InvalidInputError: an unreadable file, or `dicom` asked of a file that is not DICOM.
    """
    from keras_medimg.io.dicom import is_dicom, read_dicom
    from keras_medimg.io.images import read_image

    path = Path(path)
    if is_dicom(path):
        window = "auto" if conversion.method == "dicom" else "none"
        pixels = read_dicom(path, window=window, frame=0).pixels
    elif conversion.method == "dicom":
        raise InvalidInputError(path, "The 16-bit conversion is 'dicom' but this file is not DICOM and has no window. "
                                "Set convert.method to percentile or minmax for PNG/TIFF images.")
    else:
        pixels = read_image(path)
    if pixels.ndim == 3:
        pixels = pixels.astype(np.float32).mean(axis=2)
    return to_uint8(pixels, conversion)


def to_uint8(pixels: np.ndarray, conversion: Conversion = Conversion()) -> np.ndarray:
    """Convert grey pixels (any integer depth, or float) to uint8 with `conversion` (see the module docstring)."""
    values = np.asarray(pixels, dtype=np.float32)
    if conversion.method == "dicom":
        low, high = 0.0, 1.0  # read_dicom has already windowed the file into 0..1
    elif conversion.method == "minmax":
        low, high = float(values.min()), float(values.max())
    else:
        low, high = (float(v) for v in np.percentile(values, (conversion.low, conversion.high)))
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip((values - low) * scale + 0.5, 0, 255).astype(np.uint8)
