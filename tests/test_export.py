"""export_model: every format reproduces a model trained under the current backend (torch and JAX via a child)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from keras_medimg.export import ExportError, _verify, export_model
from keras_medimg.errors import InvalidInputError


def trained_tiny_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 1), name="images")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    model.fit(rng.uniform(size=(16, 16, 16, 1)).astype("float32"), rng.integers(0, 3, 16), epochs=1, verbose=0)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = trained_tiny_model()
    out = tmp_path_factory.mktemp("export")
    sample = np.random.default_rng(1).uniform(size=(3, 16, 16, 1)).astype("float32")
    result = export_model(model, out, metadata={"class_names": ["a", "b", "c"], "backbone": "tiny"},
                          sample_input=sample)
    return model, out, sample, result


def test_every_format_reproduces_the_model(exported):
    model, out, sample, result = exported
    assert set(result.paths) == {"keras", "savedmodel", "onnx"}
    assert all(diff <= 1e-4 for diff in result.max_abs_diff.values()), result.max_abs_diff
    import onnxruntime
    import tensorflow as tf

    expected = keras.ops.convert_to_numpy(model(sample, training=False))
    signature = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
    np.testing.assert_allclose(signature(images=tf.constant(sample))["probabilities"].numpy(), expected, atol=1e-4)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    np.testing.assert_allclose(session.run(["probabilities"], {"images": sample[:1]})[0], expected[:1], atol=1e-4)


def test_metadata_records_inputs_versions_and_verification(exported):
    _, out, _, result = exported
    metadata = json.loads(result.metadata_path.read_text())
    assert metadata["class_names"] == ["a", "b", "c"]
    assert metadata["input"]["shape"] == [None, 16, 16, 1]
    assert metadata["trained_backend"] == keras.backend.backend()
    assert metadata["versions"]["keras"] == keras.__version__
    assert set(metadata["verification"]["max_abs_diff"]) == {"keras", "savedmodel", "onnx"}
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "model.keras", "model.onnx", "saved_model"]


def test_a_wrong_export_is_an_error(exported):
    _, out, sample, result = exported
    wrong = keras.ops.convert_to_numpy(exported[0](sample, training=False)) + 1e-3
    with pytest.raises(ExportError, match="differs from the Keras model"):
        _verify("onnx", out / "model.onnx", sample, wrong, 1e-4)


def test_bad_arguments(tmp_path):
    with pytest.raises(InvalidInputError, match="Unknown export format"):
        export_model(tmp_path / "x.keras", tmp_path, formats=["tflite"])
    with pytest.raises(InvalidInputError, match=".keras model file"):
        export_model(tmp_path / "missing.keras", tmp_path / "out", formats=["keras"])


def test_our_own_layers_survive_the_export_child(tmp_path):
    # ConvNeXt V2 layers are ours: the TensorFlow child process (torch/JAX backends) must register them to reload.
    from keras_medimg.models.classifier import build_classifier

    model = build_classifier("convnextv2_atto", 2, input_shape=(32, 32, 3))
    sample = np.random.default_rng(2).uniform(size=(2, 32, 32, 3)).astype("float32")
    result = export_model(model, tmp_path, formats=["keras", "savedmodel"], metadata={}, sample_input=sample)
    assert max(result.max_abs_diff.values()) <= 1e-4


def test_exact_gelu_models_export_to_onnx(tmp_path):
    # ConvNeXt V2 and Swin use the exact GELU, which TensorFlow lowers to Erfc; tf2onnx had no converter for it
    # ("Unsupported ops: Erfc") until export registers one (Erfc = 1 - Erf).
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="images")
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.Dense(4, activation="gelu")(x)  # keras' gelu is the exact one (approximate=False)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    sample = np.random.default_rng(3).normal(size=(2, 8, 8, 1)).astype("float32") * 3
    result = export_model(model, tmp_path, formats=["onnx"], metadata={}, sample_input=sample)
    assert result.max_abs_diff["onnx"] <= 1e-4
