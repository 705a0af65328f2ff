"""Fixtures shared by the dataset tests: tiny image files written with the project's own writers."""

from pathlib import Path

import numpy as np
import pytest

from keras_medimg.io.images import write_image


@pytest.fixture
def make_image():
    """Write a small random image and return its path: make_image(path, size=(h, w), bits=8, channels=1)."""

    def make(path: Path, size: tuple[int, int] = (40, 50), *, bits: int = 8, channels: int = 1, seed: int = 0) -> Path:
        rng = np.random.default_rng(seed)
        shape = size if channels == 1 else (*size, channels)
        return write_image(path, rng.random(shape).astype(np.float32), bits=bits)

    return make
