"""Tiny models and separable data for the training tests (no files from the models package needed)."""

from __future__ import annotations

import numpy as np
import pytest


def make_images(n: int, *, seed: int = 0, size: int = 16, classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is their brightness: class k has mean intensity (k + 0.5) / classes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.normal(0.0, 0.05, size=(n, size, size, 1)) + ((labels + 0.5) / classes)[:, None, None, None]
    return images.astype("float32"), labels.astype("int32")


def make_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int = 8):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)


def tiny_classifier(num_classes: int = 2, *, size: int = 16, activation: str = "softmax"):
    import keras

    inputs = keras.Input((size, size, 1), name="images")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, activation=activation, name="head")(x)
    return keras.Model(inputs, outputs, name="tiny")


@pytest.fixture
def run(tmp_path):
    from keras_medimg.runs import create_run

    return create_run("test", "train", project=tmp_path)
