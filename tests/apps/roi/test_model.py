"""network.stem: the convolutional stem changes the ConvNeXtV2 demo network, and its classifier saves and reloads."""

from __future__ import annotations

import numpy as np
import pytest

from keras_medimg.apps.roi import pipeline
from keras_medimg.apps.roi.config import RoiAppConfig
from keras_medimg.config import load_config
from keras_medimg.errors import ConfigError


def test_conv_stem_replaces_the_patchify_stem_and_reloads(tmp_path):
    import keras

    from keras_medimg.models.classifier import build_classifier

    conv = pipeline.backbone_model(load_config(RoiAppConfig, app="roi"))
    patchify = pipeline.backbone_model(load_config(RoiAppConfig, app="roi", overrides=["network.stem=patchify"]))
    names = {layer.name for layer in conv.layers}
    assert {"stem_conv_0", "stem_conv_1", "stem_batchnorm_0"} <= names
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in patchify.layers)
    assert conv.output.shape[1:] == patchify.output.shape[1:] == (2, 2, 64)  # same output stride (32)
    model = build_classifier(conv, 2, input_shape=(64, 64, 1))
    x = np.random.default_rng(0).random((2, 64, 64, 1)).astype("float32")
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_conv_stem_refuses_mismatched_stages_and_pretrained_weights():
    with pytest.raises(ConfigError, match="network.depths"):
        pipeline.backbone_model(load_config(RoiAppConfig, app="roi", overrides=["network.depths=[1, 1]"]))
    with pytest.raises(ConfigError, match="network.widths=\\[\\]"):
        pipeline.backbone_model(load_config(RoiAppConfig, app="roi", overrides=["model.weights=imagenet"]))
