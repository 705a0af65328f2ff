"""The classifier builder: named layers, heads, freezing policies, fine-tuning phases and saved models."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from keras_medimg.errors import ConfigError, InvalidInputError  # noqa: E402
from keras_medimg.models.classifier import (  # noqa: E402
    Phase,
    apply_freeze,
    backbone_layers,
    backbone_of,
    build_classifier,
    finetune_phases,
    load_model,
    model_summary_dict,
)
from keras_medimg.models.convnextv2 import ConvNeXtV2Backbone  # noqa: E402


def tiny_backbone(channels: int = 1) -> keras.Model:
    inputs = keras.Input((32, 32, channels))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(inputs)
    x = keras.layers.BatchNormalization(name="bn_a")(x)
    x = keras.layers.Activation("relu", name="relu_a")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv_b")(x)
    x = keras.layers.BatchNormalization(name="bn_b")(x)
    return keras.Model(inputs, keras.layers.Activation("relu", name="relu_b")(x), name="tiny")


def test_registry_classifier_has_named_layers_and_softmax(rng):
    model = build_classifier("vgg16", 3, input_shape=(32, 32, 1), hidden_units=8, dropout=0.2)
    assert [layer.name for layer in model.layers[1:]] == ["backbone", "pool", "hidden", "dropout", "predictions"]
    probabilities = model.predict(rng.random((4, 32, 32, 1), dtype="float32"), verbose=0)
    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_multilabel_head_is_sigmoid_and_optional_layers_are_left_out(rng):
    model = build_classifier(tiny_backbone(), 5, multilabel=True, pooling="max")
    assert [layer.name for layer in model.layers[1:]] == ["backbone", "pool", "predictions"]
    assert model.get_layer("predictions").activation is keras.activations.sigmoid
    assert model.predict(rng.random((2, 32, 32, 1), dtype="float32"), verbose=0).shape == (2, 5)


def test_head_stays_float32_under_mixed_precision(rng):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_classifier(tiny_backbone(), 2)
        assert model.get_layer("pool").compute_dtype == "bfloat16"
        assert keras.backend.standardize_dtype(model(rng.random((1, 32, 32, 1), dtype="float32")).dtype) == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"num_classes": 1}, "at least 2 classes"),
        ({"num_classes": 2, "pooling": "mean"}, "Unknown pooling 'mean'"),
        ({"num_classes": 2, "freeze": "half"}, "Unknown freeze policy 'half'"),
        ({"num_classes": 2, "freeze": "first:many"}, "whole number"),
        ({"num_classes": 2, "freeze": "until:conv_c"}, "no layer 'conv_c'. Did you mean 'conv_"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_classifier(tiny_backbone(), **kwargs)


def _trainable_names(model: keras.Model) -> list[str]:
    return [layer.name for layer in backbone_layers(backbone_of(model)) if layer.trainable and layer.weights]


def test_freeze_policies_pick_the_trainable_layers():
    model = build_classifier(tiny_backbone(), 2)
    assert _trainable_names(model) == ["conv_a", "bn_a", "conv_b", "bn_b"]
    apply_freeze(model, "until:conv_b")
    assert _trainable_names(model) == ["conv_b", "bn_b"]
    apply_freeze(model, "first:3")  # input layer, conv_a, bn_a
    assert _trainable_names(model) == ["conv_b", "bn_b"]
    apply_freeze(model, "backbone")
    assert _trainable_names(model) == []
    assert model.get_layer("predictions").trainable
    apply_freeze(model, "none")
    assert _trainable_names(model) == ["conv_a", "bn_a", "conv_b", "bn_b"]
    summary = model_summary_dict(model)
    assert summary["params"] == model.count_params()
    assert summary["trainable_params"] + summary["non_trainable_params"] == summary["params"]


def test_frozen_backbone_keeps_weights_and_batchnorm_statistics(rng):
    model = build_classifier(tiny_backbone(), 2, freeze="backbone")
    backbone = backbone_of(model)
    before = [w.numpy().copy() for w in backbone.weights]
    head_before = model.get_layer("predictions").kernel.numpy().copy()
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    images = rng.normal(3.0, 2.0, (8, 32, 32, 1)).astype("float32")  # far from the initial BN statistics
    model.fit(images, np.arange(8) % 2, epochs=1, batch_size=8, verbose=0)
    for old, new in zip(before, backbone.weights):  # includes the moving mean and variance
        np.testing.assert_array_equal(old, new.numpy())
    assert not np.allclose(head_before, model.get_layer("predictions").kernel.numpy())


def test_finetune_phases_head_first_then_lower_learning_rate():
    assert finetune_phases("imagenet", 2, 10, "until:conv5_block1_0_bn") == [
        Phase("head", "backbone", 0, 2, 1.0),
        Phase("finetune", "until:conv5_block1_0_bn", 2, 10, 0.1),
    ]
    assert finetune_phases("imagenet", 0, 5, "none") == [Phase("train", "none", 0, 5)]
    with pytest.raises(ConfigError, match="head_epochs"):
        finetune_phases("imagenet", 6, 5, "none")


def test_finetune_phases_skip_the_frozen_phase_with_random_weights(caplog):
    with caplog.at_level(logging.WARNING, logger="keras_medimg.models.classifier"):
        phases = finetune_phases(None, 2, 10, "first:10")
    assert phases == [Phase("train", "first:10", 0, 10)]
    assert "Skipping the 2 head-only epochs" in caplog.text


def convnextv2_classifier() -> keras.Model:
    backbone = ConvNeXtV2Backbone(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), image_shape=(32, 32, 1), name="v2")
    return build_classifier(backbone, 3, hidden_units=4)


def test_saved_classifier_loads_with_equal_outputs(rng, check_round_trip):
    check_round_trip(convnextv2_classifier(), rng.random((2, 32, 32, 1), dtype="float32"))


def test_load_model_names_a_bad_file(tmp_path):
    path = tmp_path / "broken.keras"
    path.write_bytes(b"not a zip file")
    with pytest.raises(InvalidInputError, match="broken.keras"):
        load_model(path)
    with pytest.raises(InvalidInputError, match="missing.keras"):
        load_model(tmp_path / "missing.keras")


_CHILD = """
import sys
import numpy as np
from keras_medimg.models.classifier import load_model
model = load_model(sys.argv[1])
np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
"""


def test_model_saved_on_one_backend_loads_on_another(tmp_path, rng):
    other = "tensorflow" if keras.backend.backend() != "tensorflow" else "torch"
    model = convnextv2_classifier()
    images = rng.random((2, 32, 32, 1), dtype="float32")
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "images.npy", images)
    env = {**os.environ, "KERAS_BACKEND": other}
    subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "model.keras"), str(tmp_path / "images.npy"),
         str(tmp_path / "out.npy")],
        env=env, check=True, capture_output=True, timeout=300,
    )
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), model.predict(images, verbose=0), atol=1e-5)
