"""Random augmentations for tf.data input pipelines, seeded per element.

Every random choice of an element comes from a generator seeded with that element's own seed, so an element gets
the same augmentation for the same seed whatever the thread scheduling, and the pipeline gives the same batches
run after run. The pixel work is NumPy and OpenCV (`augment_array`), run inside tf.data through
`tf.numpy_function` (`augment`): the input pipeline is tf.data on every Keras backend, and OpenCV resamples a
224x224 image about 10x faster than TensorFlow's `ImageProjectiveTransformV3` on a CPU (0.09 vs 1.2 ms), with
the GIL released. No Keras layer is involved, so this module knows nothing of models.

Images are float32 `(H, W, C)` in [0, 1]; boxes are a float32 `(N, 4)` array of `x1, y1, x2, y2` pixels.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

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
        self._check(checks)

    def _check(self, checks: list[tuple[bool, str, str]]) -> None:
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
    def from_dict(cls, data: dict[str, Any]) -> Augment:
        """Build from YAML values; an unknown key is a `ConfigError` naming the valid ones."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"Unknown augmentation setting(s) {', '.join(unknown)}. Valid settings: {', '.join(names)}.")
        return cls(**data)

    def __call__(self, image, seed, boxes=None):
        """Augment one image (and its boxes); see `augment`."""
        return augment(image, seed, self, boxes=boxes)


@dataclass(frozen=True)
class GridAugment(Augment):
    """`Augment` plus grid distortion, the third augmentation of the MAM-CLIP study (albumentations' GridDistortion).

    A subclass rather than two more `Augment` fields so that the apps whose configs hold a plain `Augment` keep
    their settings as they are; an app switches grid distortion on by giving its config a `GridAugment`.

    Args:
        grid_distortion: largest relative change of a grid cell's width or height (0-0.9), as albumentations'
            `GridDistortion(distort_limit)`: the image is cut into `grid_steps` columns and rows whose sizes are
            each scaled by a factor from [1 - d, 1 + d] (then rescaled to fill the image, so the border stays put
            and nothing comes in from outside) and resampled piecewise-linearly. Applied with `probability`,
            after rotation and zoom.
        grid_steps: number of grid cells along each side (albumentations' default 5).
        Other arguments: as `Augment`.
    """

    grid_distortion: float = 0.0
    grid_steps: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check([
            (0.0 <= self.grid_distortion <= 0.9, "grid_distortion", "between 0 and 0.9 (albumentations' default 0.3)"),
            (isinstance(self.grid_steps, int) and 1 <= self.grid_steps <= 64, "grid_steps", "a whole number from 1 to 64"),
        ])

    @property
    def enabled(self) -> bool:
        return super().enabled or (self.probability > 0 and self.grid_distortion > 0)


def augment(image, seed, config: Augment, *, boxes=None):
    """Apply `config`'s augmentations to one image inside a tf.data pipeline, deterministically for a seed.

    Args:
        image: float32 `(H, W, C)` tensor in [0, 1].
        seed: int32/int64 tensor of shape `(2,)`, this element's seed.
        config: which augmentations and how strong.
        boxes: optional float32 `(N, 4)` tensor of pixel boxes `x1, y1, x2, y2`; they follow the flip, rotation
            and zoom (as the box around the moved corners, clipped to the image).

    Returns:
        The augmented image tensor, or `(image, boxes)` when boxes were given.
    """
    import tensorflow as tf

    image = tf.convert_to_tensor(image, tf.float32)
    seed = tf.cast(seed, tf.int64)
    if boxes is None:
        out = tf.numpy_function(functools.partial(_augment_image, config=config), [image, seed], tf.float32, stateful=False)
        out.set_shape(image.shape)
        return out
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
    out, moved = tf.numpy_function(
        functools.partial(_augment_with_boxes, config=config), [image, seed, boxes], [tf.float32, tf.float32], stateful=False
    )
    out.set_shape(image.shape)
    moved.set_shape(boxes.shape)
    return out, moved


def _augment_image(image: np.ndarray, seed: np.ndarray, config: Augment) -> np.ndarray:
    return augment_array(image, seed, config)


def _augment_with_boxes(image: np.ndarray, seed: np.ndarray, boxes: np.ndarray, config: Augment):
    return augment_array(image, seed, config, boxes)


def augment_array(image: np.ndarray, seed, config: Augment, boxes: np.ndarray | None = None):
    """Apply `config`'s augmentations to one NumPy image (and its boxes), deterministically for a given seed.

    Each switched-on augmentation is applied with `config.probability`, in this order: flip, rotation + zoom
    (one resampling), grid distortion (a `GridAugment`), brightness, contrast, blur, noise; the result is clipped to
    [0, 1].

    Args:
        image: float32 `(H, W, C)` pixels in [0, 1] (any number of channels).
        seed: two integers; the same seed gives the same augmentation.
        config: which augmentations and how strong.
        boxes: optional float32 `(N, 4)` pixel boxes `x1, y1, x2, y2`.

    Returns:
        The augmented float32 image, or `(image, boxes)` when boxes were given.
    """
    rng = np.random.default_rng(np.asarray(seed, np.int64).astype(np.uint64).tolist())
    # Every draw is made whatever the config, so switching one augmentation on or off does not change the
    # others' random values for a seed.
    apply = rng.random(_OPS) < config.probability
    flip = rng.random() < 0.5
    angle, log_zoom, shift, factor, sigma_u, std_u = rng.random(6)
    out = np.array(image, dtype=np.float32, copy=True)
    height, width = out.shape[:2]
    if boxes is not None:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if config.hflip and flip:
        out = np.ascontiguousarray(out[:, ::-1])
        if boxes is not None:
            boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)
    if (config.rotation or config.zoom_min != 1 or config.zoom_max != 1) and apply[0]:
        degrees = (2 * angle - 1) * config.rotation
        # Zoom is drawn uniformly in log scale so that 0.5x and 2x are equally likely.
        zoom = math.exp(math.log(config.zoom_min) + log_zoom * (math.log(config.zoom_max) - math.log(config.zoom_min)))
        out = _rotate_zoom(out, math.radians(degrees), zoom, config.fill)
        if boxes is not None:
            boxes = _move_boxes(boxes, math.radians(degrees), zoom, width, height)
    if isinstance(config, GridAugment) and config.grid_distortion:
        # Its own generator (the element's seed and one more word), so that switching it on leaves every other
        # augmentation's random values for a seed as they were.
        grid_rng = np.random.default_rng([*np.asarray(seed, np.int64).astype(np.uint64).tolist(), _OPS + 1])
        if grid_rng.random() < config.probability:
            factors = 1.0 + config.grid_distortion * (2 * grid_rng.random((2, config.grid_steps)) - 1)
            out, boxes = _grid_distort(out, factors[0], factors[1], boxes)
    if config.brightness and apply[2]:
        out += np.float32((2 * shift - 1) * config.brightness)
    if config.contrast and apply[3]:
        # Around each channel's mean; for grey copied to three channels this is around the image mean.
        mean = out.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
        out -= mean
        out *= np.float32(1 - config.contrast + factor * 2 * config.contrast)
        out += mean
    if config.blur and apply[4]:
        out = _blur(out, (0.1 + 0.9 * sigma_u) * config.blur, config.blur)
    if config.noise and apply[5]:
        out += np.float32(std_u * config.noise) * rng.standard_normal(out.shape, dtype=np.float32)
    np.clip(out, 0.0, 1.0, out=out)
    return out if boxes is None else (out, boxes.astype(np.float32))


def _rotate_zoom(image: np.ndarray, angle: float, zoom: float, fill: float) -> np.ndarray:
    """Rotate about the centre by `angle` radians and zoom by `zoom`, in one bilinear resampling."""
    import cv2

    height, width, channels = image.shape
    # Pixel i has its centre at i + 0.5 in box coordinates, so the image centre is (W/2, H/2) there and
    # ((W-1)/2, (H-1)/2) in the index coordinates that warpAffine works in. The matrix maps each output pixel
    # back to the input: in = R(-angle) (out - c) / zoom + c.
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    matrix = np.array([[cos, sin, cx - cos * cx - sin * cy], [-sin, cos, cy + sin * cx - cos * cy]], np.float64)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    planes = [image] if channels <= 4 else [image[:, :, c] for c in range(channels)]
    moved = [
        cv2.warpAffine(plane, matrix, (width, height), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=(fill,) * 4)
        for plane in planes
    ]
    out = moved[0] if len(moved) == 1 else np.stack(moved, axis=-1)
    return out.reshape(height, width, channels)


def _grid_knots(size: int, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell edges along one axis (index coordinates): evenly spaced in the output, `factors`-sized in the input."""
    even = np.linspace(0.0, size - 1.0, len(factors) + 1)
    distorted = np.concatenate([[0.0], np.cumsum(factors) / np.sum(factors) * (size - 1.0)])
    return even, distorted


def _grid_distort(image: np.ndarray, x_factors: np.ndarray, y_factors: np.ndarray, boxes: np.ndarray | None):
    """Resample so that input cells sized by the factors fill an even output grid; boxes follow (separable and
    monotonic along each axis, so each box edge maps exactly)."""
    import cv2

    height, width, channels = image.shape
    x_even, x_in = _grid_knots(width, x_factors)
    y_even, y_in = _grid_knots(height, y_factors)
    map_x = np.interp(np.arange(width), x_even, x_in).astype(np.float32)
    map_y = np.interp(np.arange(height), y_even, y_in).astype(np.float32)
    map_x, map_y = np.broadcast_to(map_x, (height, width)).copy(), np.broadcast_to(map_y[:, None], (height, width)).copy()
    planes = [image] if channels <= 4 else [image[:, :, c] for c in range(channels)]
    moved = [cv2.remap(plane, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for plane in planes]
    out = (moved[0] if len(moved) == 1 else np.stack(moved, axis=-1)).reshape(height, width, channels)
    if boxes is not None:
        # Box edges are in box coordinates (pixel i spans [i, i + 1]): the knots shifted by half a pixel, and the
        # outer half pixels unchanged.
        xs = np.interp(boxes[:, [0, 2]], *_box_knots(x_in, x_even, width))
        ys = np.interp(boxes[:, [1, 3]], *_box_knots(y_in, y_even, height))
        boxes = np.clip(np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1), 0.0,
                        [width, height, width, height]).astype(np.float32)
    return out, boxes


def _box_knots(source: np.ndarray, target: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([[0.0], source + 0.5, [size]]), np.concatenate([[0.0], target + 0.5, [size]])


def _move_boxes(boxes: np.ndarray, angle: float, zoom: float, width: int, height: int) -> np.ndarray:
    """Forward-map box corners (out = zoom R(angle) (in - c) + c) and take the box around them, clipped."""
    cx, cy = width / 2.0, height / 2.0
    xs = boxes[:, [0, 2, 0, 2]] - cx
    ys = boxes[:, [1, 1, 3, 3]] - cy
    cos, sin = math.cos(angle), math.sin(angle)
    out_x = zoom * (cos * xs - sin * ys) + cx
    out_y = zoom * (sin * xs + cos * ys) + cy
    moved = np.stack([out_x.min(1), out_y.min(1), out_x.max(1), out_y.max(1)], axis=1)
    return np.clip(moved, 0.0, [width, height, width, height]).astype(np.float32)


def _blur(image: np.ndarray, sigma: float, max_sigma: float) -> np.ndarray:
    """Gaussian blur; the kernel covers 3 of the largest sigmas, and the border is reflected."""
    import cv2

    radius = max(1, math.ceil(3 * max_sigma))
    size = 2 * radius + 1
    out = cv2.GaussianBlur(image, (size, size), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    return out.reshape(image.shape)
