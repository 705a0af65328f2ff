"""Shared model checks: output shape, a .keras save/load round trip with equal outputs, and a training step."""

from pathlib import Path

import numpy as np
import pytest


def _round_trip(model, inputs: np.ndarray, tmp_path: Path) -> None:
    """Save to .keras, load back (with our custom layers registered) and compare outputs."""
    from keras_medimg.models.classifier import load_model

    expected = np.asarray(model.predict(inputs, verbose=0))
    path = tmp_path / "model.keras"
    model.save(path)
    restored = load_model(path)
    np.testing.assert_allclose(np.asarray(restored.predict(inputs, verbose=0)), expected, rtol=1e-5, atol=1e-5)


def _training_step(model, inputs: np.ndarray, targets: np.ndarray, loss: str) -> None:
    """One optimizer step runs, gives a finite loss and changes the trainable weights."""
    import keras

    before = [np.array(w.numpy()) for w in model.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    history = model.fit(inputs, targets, epochs=1, batch_size=len(inputs), verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = [np.array(w.numpy()) for w in model.trainable_weights]
    assert any(not np.allclose(b, a) for b, a in zip(before, after))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def check_round_trip(tmp_path):
    """`check_round_trip(model, inputs)`: save to .keras, load back, outputs equal."""
    return lambda model, inputs: _round_trip(model, inputs, tmp_path)


@pytest.fixture
def check_training_step():
    """`check_training_step(model, inputs, targets, loss)`: one finite step that changes the weights."""
    return _training_step
