"""Grad-CAM (Selvaraju et al., 2017) heat maps for classifiers built by `build_classifier`, on every backend.

The model is split at the feature layer into `features = front(images)` and `scores = rest(features)`; the
gradient of the class score with respect to `features` is taken with the backend's own autodiff
(tf.GradientTape, torch.autograd, jax.grad), the only backend-specific code here. The score is the class logit
(the head's pre-activation), because a saturated softmax or sigmoid has vanishing gradients.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from keras_medimg.errors import ConfigError
from keras_medimg.models.classifier import backbone_of


def _feature_layer(backbone: keras.Model, layer: str | None) -> keras.layers.Layer:
    if layer is None:
        return backbone.layers[-1]
    names = [candidate.name for candidate in backbone.layers]
    if layer not in names:
        close = difflib.get_close_matches(layer, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"Grad-CAM layer '{layer}' is not a layer of the backbone.{hint}")
    return backbone.get_layer(layer)


def _split(model: keras.Model, layer: str | None) -> tuple[keras.Model, Callable]:
    """`front` (images -> feature map) and `rest` (feature map -> class logits) of a classifier."""
    backbone = backbone_of(model)
    feature = _feature_layer(backbone, layer)
    if len(feature.output.shape) != 4:
        raise ConfigError(f"Grad-CAM layer '{feature.name}' outputs shape {feature.output.shape}; pick a layer "
                          "with a (batch, height, width, channels) feature map.")
    front = keras.Model(backbone.input, feature.output)
    tail = None
    if feature is not backbone.layers[-1]:
        try:
            tail = keras.Model(feature.output, backbone.output)
        except Exception as exc:  # the backbone has a skip connection around this layer
            raise ConfigError(f"Grad-CAM layer '{feature.name}' is bypassed by a skip connection, so the "
                              "prediction cannot be computed from it alone; pick a block's output.") from exc
    head = model.layers[model.layers.index(backbone) + 1:]

    def rest(features):
        x = tail(features, training=False) if tail is not None else features
        for head_layer in head[:-1]:
            x = head_layer(x, training=False)
        return _logits(head[-1], x)

    return front, rest


def _logits(layer: keras.layers.Layer, x):
    if isinstance(layer, keras.layers.Dense):
        logits = ops.matmul(ops.cast(x, layer.kernel.dtype), layer.kernel)
        return logits + layer.bias if layer.use_bias else logits
    return layer(x, training=False)


def _gradients_tensorflow(score_fn: Callable, features):
    import tensorflow as tf

    features = tf.convert_to_tensor(features)
    with tf.GradientTape() as tape:
        tape.watch(features)
        score = score_fn(features)
    return tape.gradient(score, features)


def _gradients_torch(score_fn: Callable, features):
    import torch

    features = features.detach().requires_grad_(True)
    with torch.enable_grad():
        score = score_fn(features)
        (gradients,) = torch.autograd.grad(score, features)
    return gradients


def _gradients_jax(score_fn: Callable, features):
    import jax

    return jax.grad(score_fn)(features)


_GRADIENTS = {"tensorflow": _gradients_tensorflow, "torch": _gradients_torch, "jax": _gradients_jax}


def grad_cam(model: keras.Model, images, *, class_index: int | list[int] | None = None,
             layer: str | None = None) -> np.ndarray:
    """Grad-CAM heat maps, one per image, in [0, 1] at the input resolution.

    Args:
        model: a classifier built by `build_classifier`.
        images: (N, H, W, C) float batch, normalised as the model expects.
        class_index: the class to explain, one for all images or one per image; None explains each image's
            predicted class.
        layer: a backbone layer with a 4D output; None uses the backbone's output (its last feature map), for
            registry backbones `get_spec(name).feature_layer` names the conventional one.

    Returns:
        float32 array (N, H, W); an image whose map is zero everywhere (no positive evidence) stays zero.
    """
    backend = keras.backend.backend()
    if backend not in _GRADIENTS:
        raise ConfigError(f"Grad-CAM supports the tensorflow, torch and jax backends, not '{backend}'.")
    images = np.asarray(images, dtype="float32")
    front, rest = _split(model, layer)
    features = front(images, training=False)
    logits = rest(features)
    num_classes = logits.shape[-1]
    if class_index is None:
        targets = np.argmax(ops.convert_to_numpy(logits), axis=-1)
    else:
        targets = np.broadcast_to(np.asarray(class_index), (images.shape[0],))
    if np.any(targets < 0) or np.any(targets >= num_classes):
        raise ConfigError(f"class_index {class_index} is outside the model's {num_classes} classes.")
    one_hot = ops.convert_to_tensor(np.eye(num_classes, dtype="float32")[targets])

    def score_fn(feature_map):
        return ops.sum(ops.cast(rest(feature_map), "float32") * one_hot)

    gradients = _GRADIENTS[backend](score_fn, features)
    weights = ops.mean(ops.cast(gradients, "float32"), axis=(1, 2), keepdims=True)
    cam = ops.relu(ops.sum(weights * ops.cast(features, "float32"), axis=-1, keepdims=True))
    cam = ops.image.resize(cam, images.shape[1:3], interpolation="bilinear")
    cam = ops.convert_to_numpy(cam)[..., 0]
    peak = cam.reshape(cam.shape[0], -1).max(axis=1)
    return (cam / np.where(peak > 0, peak, 1.0)[:, None, None]).clip(0.0, 1.0).astype("float32")


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a heat map, coloured with the jet colormap, over an image.

    Args:
        image: (H, W), (H, W, 1) or (H, W, 3) image, float in [0, 1] or uint8.
        heatmap: (h, w) map in [0, 1]; resized to the image.
        alpha: weight of the heat map colours.

    Returns:
        uint8 RGB image (H, W, 3).
    """
    import cv2

    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (np.clip(image.astype("float32"), 0.0, 1.0) * 255).round().astype(np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    height, width = image.shape[:2]
    heat = cv2.resize(np.asarray(heatmap, dtype="float32"), (width, height), interpolation=cv2.INTER_LINEAR)
    heat = (np.clip(heat, 0.0, 1.0) * 255).round().astype(np.uint8)
    colours = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blended = (1.0 - alpha) * image.astype("float32") + alpha * colours.astype("float32")
    return np.clip(blended, 0, 255).round().astype(np.uint8)


def grad_cam_file(model: keras.Model, image_path: str | Path, out: str | Path, *, image_size: int,
                  normalization: Any = None, denoise_median: int = 0, channels: int = 3,
                  class_index: int | None = None) -> Path:
    """Grad-CAM of one image file, drawn over that image as the model saw it, written to `out` (PNG).

    The image is decoded exactly as in training (`datasets.pipeline.load_images_numpy`: resize, median
    filter, `normalization`) for the model; the picture under the heat map is the same image without the
    normalisation.

    Args:
        model: a classifier built by `build_classifier`.
        image_path: the image to explain.
        out: the overlay file to write.
        image_size: the model's input side.
        normalization: the backbone's input `Normalization` (None: [0, 1]).
        denoise_median: median-filter size used in training (0: off).
        channels: the model's input channels.
        class_index: the class to explain (None: the predicted one).

    Returns:
        `out`.
    """
    from keras_medimg.datasets.pipeline import load_images_numpy
    from keras_medimg.datasets.records import Sample
    from keras_medimg.io.images import to_float, write_image

    sample = [Sample(id=Path(image_path).stem, path=Path(image_path))]
    images, _ = load_images_numpy(sample, image_size=image_size, channels=channels, normalization=normalization,
                                  denoise_median=denoise_median, strict=True)
    heatmap = grad_cam(model, images, class_index=class_index)[0]
    picture, _ = load_images_numpy(sample, image_size=image_size, channels=channels, strict=True)
    return write_image(out, overlay(to_float(picture[0]), heatmap))


def grad_cam_files(model: keras.Model, image_path: str | Path, outs: Mapping[int, str | Path], *, image_size: int,
                   normalization: Any = None, denoise_median: int = 0, channels: int = 3,
                   layer: str | None = None) -> dict[int, Path]:
    """Grad-CAM of one image file for several classes (a multi-label prediction): one overlay file per class.

    The image is decoded once, as in `grad_cam_file`; its copies go through `grad_cam` in one batch, each
    with its own class, so every class gets the map of its own evidence.

    Args:
        model: a classifier built by `build_classifier`.
        image_path: the image to explain.
        outs: class index -> the overlay file to write for it.
        image_size: the model's input side.
        normalization: the backbone's input `Normalization` (None: [0, 1]).
        denoise_median: median-filter size used in training (0: off).
        channels: the model's input channels.
        layer: the backbone layer to explain (see `grad_cam`); None uses the backbone's output.

    Returns:
        class index -> the written file.
    """
    from keras_medimg.datasets.pipeline import load_images_numpy
    from keras_medimg.datasets.records import Sample
    from keras_medimg.io.images import to_float, write_image

    if not outs:
        return {}
    sample = [Sample(id=Path(image_path).stem, path=Path(image_path))]
    images, _ = load_images_numpy(sample, image_size=image_size, channels=channels, normalization=normalization,
                                  denoise_median=denoise_median, strict=True)
    classes = [int(c) for c in outs]
    heatmaps = grad_cam(model, np.repeat(images, len(classes), axis=0), class_index=classes, layer=layer)
    picture, _ = load_images_numpy(sample, image_size=image_size, channels=channels, strict=True)
    picture = to_float(picture[0])
    return {c: write_image(outs[c], overlay(picture, heatmap)) for c, heatmap in zip(classes, heatmaps)}
