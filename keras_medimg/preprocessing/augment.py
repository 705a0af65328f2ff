"""Random augmentations for tf.data input pipelines, seeded per element.

Every random choice comes from a stateless TensorFlow op (`tf.random.stateless_*`, `tf.image.stateless_*`) fed
with the element's own seed, so an element gets the same augmentation for the same seed whatever the thread
scheduling, and the pipeline gives the same batches run after run. The ops are TensorFlow ops because the input
pipeline is tf.data on every Keras backend; no Keras layer is involved, so this module knows nothing of models.

Images are float32 `(H, W, C)` in [0, 1]; boxes are a float32 `(N, 4)` tensor of `x1, y1, x2, y2` pixels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from keras_medimg.errors import ConfigError

_OPS = 6  # seeds 0-5: rotation+zoom, flip, brightness, contrast, blur, noise; one more seeds the coin flips


@dataclass(frozen=True)
class Augment:
    """Which augmentations to apply, their ranges, and how often.

    The fields are plain numbers so an app can keep an `Augment` in its YAML config as it is. A range of 0 (or
    `zoom_min == zoom_max == 1`, `hflip: false`) switches that augmentation off.

    Args:
        probability: chance that each switched-on augmentation is applied to an image.
        rotation: largest rotation in degrees, either way (0-45).
        zoom_min: smallest zoom factor (0.5 halves the anatomy's size; the border is filled with `fill`).
        zoom_max: largest zoom factor (2.0 doubles it, cropping the border).
        hflip: mirror left-right (with the boxes) half of the time, independently of `probability`.
        brightness: largest brightness shift, added to [0, 1] pixels.
        contrast: largest relative contrast change: the factor is drawn from [1 - contrast, 1 + contrast].
        blur: largest Gaussian blur sigma, in pixels.
        noise: largest standard deviation of additive Gaussian noise.
        fill: value of pixels that rotation or zoom bring in from outside the image.
    """

    probability: float = 0.5
    rotation: float = 0.0
    zoom_min: float = 1.0
    zoom_max: float = 1.0
    hflip: bool = False
    brightness: float = 0.0
    contrast: float = 0.0
    blur: float = 0.0
    noise: float = 0.0
    fill: float = 0.0

    def __post_init__(self) -> None:
        checks = [
            (0.0 <= self.probability <= 1.0, "probability", "between 0 and 1"),
            (0.0 <= self.rotation <= 180.0, "rotation", "between 0 and 180 degrees (the studies use up to 45)"),
            (0.0 < self.zoom_min <= self.zoom_max, "zoom_min", "positive and at most zoom_max"),
            (self.brightness >= 0.0, "brightness", "0 or more"),
            (0.0 <= self.contrast < 1.0, "contrast", "at least 0 and below 1"),
            (0.0 <= self.blur <= 10.0, "blur", "between 0 and 10 pixels"),
            (self.noise >= 0.0, "noise", "0 or more"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ConfigError(f"Augmentation setting '{key}' must be {expected}, got {getattr(self, key)!r}. Fix it in the config.")

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is switched on."""
        ranges = (self.rotation, self.zoom_min != 1, self.zoom_max != 1, self.brightness, self.contrast, self.blur, self.noise)
        return self.hflip or (self.probability > 0 and any(ranges))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Augment":
        """Build from YAML values; an unknown key is a `ConfigError` naming the valid ones."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"Unknown augmentation setting(s) {', '.join(unknown)}. Valid settings: {', '.join(names)}.")
        return cls(**data)

    def __call__(self, image, seed, boxes=None):
        """Augment one image (and its boxes); see `augment`."""
        return augment(image, seed, self, boxes=boxes)


def augment(image, seed, config: Augment, *, boxes=None):
    """Apply `config`'s augmentations to one image, deterministically for a given seed.

    Args:
        image: float32 `(H, W, C)` tensor in [0, 1].
        seed: int32/int64 tensor of shape `(2,)`, this element's seed.
        config: which augmentations and how strong.
        boxes: optional float32 `(N, 4)` tensor of pixel boxes `x1, y1, x2, y2`; they follow the flip, rotation
            and zoom (as the box around the moved corners, clipped to the image).

    Returns:
        The augmented image, or `(image, boxes)` when boxes were given.
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=_OPS + 1)
    coins = tf.random.stateless_uniform([_OPS], seeds[_OPS])
    apply = coins < config.probability

    image = tf.convert_to_tensor(image, tf.float32)
    if boxes is not None:
        boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    if config.hflip:
        image, boxes = _maybe_flip(image, boxes, seeds[1])
    if config.rotation or config.zoom_min != 1 or config.zoom_max != 1:
        if boxes is None:
            image = tf.cond(apply[0], lambda: _rotate_zoom(image, seeds[0], config)[0], lambda: image)
        else:
            image, boxes = tf.cond(apply[0], lambda: _rotate_zoom(image, seeds[0], config, boxes), lambda: (image, boxes))
    if config.brightness:
        image = tf.cond(apply[2], lambda: tf.image.stateless_random_brightness(image, config.brightness, seeds[2]), lambda: image)
    if config.contrast:
        low, high = 1.0 - config.contrast, 1.0 + config.contrast
        image = tf.cond(apply[3], lambda: _contrast(image, low, high, seeds[3]), lambda: image)
    if config.blur:
        image = tf.cond(apply[4], lambda: _blur(image, config.blur, seeds[4]), lambda: image)
    if config.noise:
        image = tf.cond(apply[5], lambda: _noise(image, config.noise, seeds[5]), lambda: image)
    image = tf.clip_by_value(image, 0.0, 1.0)
    return image if boxes is None else (image, boxes)


def _maybe_flip(image, boxes, seed):
    import tensorflow as tf

    flip = tf.random.stateless_uniform([], seed) < 0.5
    width = tf.cast(tf.shape(image)[1], tf.float32)
    image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    if boxes is not None:
        flipped = tf.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)
        boxes = tf.cond(flip, lambda: flipped, lambda: boxes)
    return image, boxes


def _rotate_zoom(image, seed, config: Augment, boxes=None):
    """Rotate about the centre and zoom by factors drawn from the config's ranges, in one resampling."""
    import tensorflow as tf

    angle_seed, zoom_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    angle = tf.random.stateless_uniform([], angle_seed, -config.rotation, config.rotation) * (math.pi / 180.0)
    # Zoom is drawn uniformly in log scale so that 0.5x and 2x are equally likely.
    log_zoom = tf.random.stateless_uniform([], zoom_seed, math.log(config.zoom_min), math.log(config.zoom_max) + 1e-12)
    zoom = tf.exp(log_zoom)
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    # Pixel i has its centre at i + 0.5 in box coordinates, so the image centre is (W/2, H/2) there and
    # ((W-1)/2, (H-1)/2) in the index coordinates that ImageProjectiveTransform works in.
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    # The transform maps each output pixel back to the input: in = R(-angle) (out - c) / zoom + c.
    a0, a1 = cos / zoom, sin / zoom
    b0, b1 = -sin / zoom, cos / zoom
    a2 = cx - a0 * cx - a1 * cy
    b2 = cy - b0 * cx - b1 * cy
    matrix = tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0])[None, :]
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=matrix,
        output_shape=shape[:2],
        fill_value=config.fill,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )[0]
    moved.set_shape(image.shape)
    if boxes is None:
        return moved, None
    return moved, _move_boxes(boxes, angle, zoom, width, height)


def _move_boxes(boxes, angle, zoom, width, height):
    """Forward-map box corners (out = zoom R(angle) (in - c) + c) and take the box around them, clipped."""
    import tensorflow as tf

    cx, cy = width / 2.0, height / 2.0
    xs = tf.stack([boxes[:, 0], boxes[:, 2], boxes[:, 0], boxes[:, 2]], axis=1) - cx
    ys = tf.stack([boxes[:, 1], boxes[:, 1], boxes[:, 3], boxes[:, 3]], axis=1) - cy
    cos, sin = tf.cos(angle), tf.sin(angle)
    out_x = zoom * (cos * xs - sin * ys) + cx
    out_y = zoom * (sin * xs + cos * ys) + cy
    moved = tf.stack(
        [tf.reduce_min(out_x, 1), tf.reduce_min(out_y, 1), tf.reduce_max(out_x, 1), tf.reduce_max(out_y, 1)], axis=1
    )
    return tf.clip_by_value(moved, 0.0, tf.stack([width, height, width, height]))


def _contrast(image, low: float, high: float, seed):
    import tensorflow as tf

    # tf.image's contrast works per channel around the channel mean; for grey copied to three channels this is
    # the same as around the image mean.
    return tf.image.stateless_random_contrast(image, low, high, seed)


def _blur(image, max_sigma: float, seed):
    """Separable Gaussian blur with sigma drawn from [0.1 * max, max]; the kernel covers 3 max sigmas."""
    import tensorflow as tf

    sigma = tf.random.stateless_uniform([], seed, 0.1 * max_sigma, max_sigma)
    radius = max(1, int(math.ceil(3 * max_sigma)))
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(x / sigma))
    kernel /= tf.reduce_sum(kernel)
    channels = tf.shape(image)[-1]
    horizontal = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
    vertical = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
    # Reflect padding keeps the border from darkening.
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    blurred = tf.nn.depthwise_conv2d(padded, horizontal, strides=[1, 1, 1, 1], padding="VALID")
    blurred = tf.nn.depthwise_conv2d(blurred, vertical, strides=[1, 1, 1, 1], padding="VALID")
    out = blurred[0]
    out.set_shape(image.shape)
    return out


def _noise(image, max_std: float, seed):
    import tensorflow as tf

    std_seed, pixel_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    std = tf.random.stateless_uniform([], std_seed, 0.0, max_std)
    return image + std * tf.random.stateless_normal(tf.shape(image), pixel_seed)
