"""Cross-entropy on probability heads keeps its gradient on every backend (`training.losses`)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_medimg.training.losses import LogitsOfProbabilities, on_probabilities


def _saturated_head(classes: int, activation: str) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """A linear head whose bias makes class 0 (or 'off' for every sigmoid) certain far beyond the 1e-7 clip.

    (A sigmoid certain of 'on' is 1.0 exactly in float32 above 1 - 6e-8, which no loss recovers from.)"""
    inputs = keras.Input((classes,))
    model = keras.Model(inputs, keras.layers.Dense(classes, activation=activation, name="head")(inputs))
    model.get_layer("head").kernel.assign(np.eye(classes, dtype="float32"))
    model.get_layer("head").bias.assign(np.array([25.0] + [0.0] * (classes - 1), "float32")
                                        if activation == "softmax" else np.full(classes, -25.0, "float32"))
    y = np.arange(12) % classes
    x = np.eye(classes, dtype="float32")[y] * 3.0  # class k: input k lit
    return model, x, y


@pytest.mark.parametrize("make, sparse", [(keras.losses.SparseCategoricalCrossentropy, True),
                                          (keras.losses.CategoricalCrossentropy, False)])
def test_a_saturated_softmax_head_learns_on_every_backend(make, sparse):
    model, x, y = _saturated_head(3, "softmax")
    labels = y if sparse else np.eye(3, dtype="float32")[y]
    assert model.predict(x, verbose=0)[np.arange(12), y][y > 0].max() < 1e-7  # beyond the clip
    model.compile(optimizer=keras.optimizers.Adam(0.5), loss=on_probabilities(make, binary=False))
    model.fit(x, labels, epochs=15, batch_size=4, verbose=0, shuffle=False)
    np.testing.assert_array_equal(model.predict(x, verbose=0).argmax(axis=1), y)


def test_a_saturated_sigmoid_head_learns_on_every_backend():
    model, x, y = _saturated_head(3, "sigmoid")
    labels = np.eye(3, dtype="float32")[y]  # one concept on per image; every sigmoid starts certain of "off"
    assert model.predict(x, verbose=0)[labels > 0].max() < 1e-7  # beyond the clip
    model.compile(optimizer=keras.optimizers.Adam(0.5), loss=on_probabilities(keras.losses.BinaryCrossentropy, binary=True))
    model.fit(x, labels, epochs=15, batch_size=4, verbose=0, shuffle=False)
    np.testing.assert_array_equal(model.predict(x, verbose=0) > 0.5, labels > 0.5)


@pytest.mark.parametrize("make, binary, kwargs", [
    (keras.losses.CategoricalCrossentropy, False, {"label_smoothing": 0.1}),
    (keras.losses.CategoricalFocalCrossentropy, False, {"gamma": 2.0}),
    (keras.losses.BinaryCrossentropy, True, {"label_smoothing": 0.1}),
    (keras.losses.BinaryFocalCrossentropy, True, {"gamma": 2.0}),
])
def test_the_value_is_keras_own_on_unsaturated_probabilities(make, binary, kwargs):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4)).astype("float32")
    probs = keras.ops.convert_to_numpy(keras.ops.sigmoid(logits) if binary else keras.ops.softmax(logits))
    labels = (rng.random((6, 4)) > 0.5).astype("float32") if binary else np.eye(4, dtype="float32")[rng.integers(0, 4, 6)]
    wrapped = LogitsOfProbabilities(make(from_logits=True, **kwargs), binary=binary)
    expected = make(from_logits=True, **kwargs)(labels, logits)
    np.testing.assert_allclose(float(wrapped(labels, probs)), float(expected), rtol=1e-4)


def test_the_wrapped_loss_round_trips_through_its_config():
    loss = LogitsOfProbabilities(keras.losses.CategoricalFocalCrossentropy(gamma=3.0, from_logits=True), binary=False)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(again, LogitsOfProbabilities) and again.binary is False
    assert again.inner.get_config()["gamma"] == 3.0 and again.inner.get_config()["from_logits"] is True


def test_tensorflow_keeps_keras_own_loss():
    loss = on_probabilities(keras.losses.BinaryCrossentropy, binary=True)
    if keras.backend.backend() == "tensorflow":
        assert isinstance(loss, keras.losses.BinaryCrossentropy) and not loss.get_config()["from_logits"]
    else:
        assert isinstance(loss, LogitsOfProbabilities)
