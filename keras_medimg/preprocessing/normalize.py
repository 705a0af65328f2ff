"""A backbone's input normalisation, as data.

Images flow through keras-medimg as float32 in [0, 1]. Each backbone expects its own input range (ImageNet
mean/std, [-1, 1], caffe-style BGR minus mean, or 0-255 for models that normalise inside), so every registry entry
carries a `Normalization` and the input pipeline applies it, after augmentation, as the last step. Exports record
it in `metadata.json` so a served model gets the same input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, TypeVar

A = TypeVar("A")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    """`out = (x[..., order] * scale - mean) / std` for `x` in [0, 1], channels last.

    Args:
        scale: multiply [0, 1] pixels by this first (255 for models trained on 0-255 inputs).
        mean: per-channel value subtracted after scaling (in the scaled range).
        std: per-channel divisor after subtracting the mean.
        bgr: reverse the channel order (caffe-style models such as VGG16).
        minmax: first stretch each image's own minimum..maximum to [0, 1] (`per_image_minmax`), as mammography
            pipelines such as MAM-CLIP's do, so that images stored with different ranges (8-bit atlas prints,
            12-bit detector values in 16-bit PNGs) reach the model alike. The input pipeline applies it when an
            image is decoded, before augmentation; `apply` does it too.
    """

    scale: float = 1.0
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    bgr: bool = False
    minmax: bool = False

    def apply(self, x: A) -> A:
        """Normalise a NumPy array or tf/keras tensor of shape (..., H, W, C); works inside tf.data."""
        if self.minmax:
            x = per_image_minmax(x)
        if self.bgr:
            x = x[..., ::-1]
        return (x * self.scale - self._vector(self.mean)) / self._vector(self.std)

    def _vector(self, values: tuple[float, ...]):
        import numpy as np

        return np.asarray(values, dtype="float32")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Normalization":
        return cls(
            scale=float(data.get("scale", 1.0)),
            mean=tuple(data.get("mean", (0.0, 0.0, 0.0))),
            std=tuple(data.get("std", (1.0, 1.0, 1.0))),
            bgr=bool(data.get("bgr", False)),
            minmax=bool(data.get("minmax", False)),
        )


def per_image_minmax(x: A) -> A:
    """Each image of `x` (..., H, W, C), a NumPy array or a tf tensor, scaled so that its own minimum is 0 and its
    maximum 1; a flat image becomes all zeros."""
    import numpy as np

    if isinstance(x, np.ndarray):
        low = x.min(axis=(-3, -2, -1), keepdims=True)
        span = x.max(axis=(-3, -2, -1), keepdims=True) - low
        return ((x - low) / np.maximum(span, 1e-6)).astype(x.dtype)
    import tensorflow as tf

    low = tf.reduce_min(x, axis=[-3, -2, -1], keepdims=True)
    span = tf.reduce_max(x, axis=[-3, -2, -1], keepdims=True) - low
    return (x - low) / tf.maximum(span, tf.cast(1e-6, x.dtype))


IMAGENET = Normalization(mean=IMAGENET_MEAN, std=IMAGENET_STD)
MINUS_ONE_TO_ONE = Normalization(scale=2.0, mean=(1.0, 1.0, 1.0))
ZERO_TO_255 = Normalization(scale=255.0)
CAFFE = Normalization(scale=255.0, mean=(103.939, 116.779, 123.68), bgr=True)
