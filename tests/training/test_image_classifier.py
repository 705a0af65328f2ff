"""fit_image_classifier: the model the `model` section describes, trained into the run, best checkpoint back."""

from __future__ import annotations

import numpy as np
import pytest

from keras_medimg.config import ModelConfig, NetworkConfig, TrainConfig
from keras_medimg.training.image_classifier import (backbone_normalization, build_image_classifier,
                                                     fit_image_classifier)


def _data(n: int = 16, size: int = 32):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    images = rng.normal(0.3, 0.05, (n, size, size, 3)).astype("float32") + labels[:, None, None, None] * 0.4
    return tf.data.Dataset.from_tensor_slices((images, labels.astype("int32"))).batch(8), labels


@pytest.mark.slow  # builds and fits a registry backbone: about a minute on a busy 2-core CPU
def test_fit_image_classifier_builds_from_the_model_section_and_reloads_the_best(run):
    train_ds, labels = _data()
    model_cfg = ModelConfig(backbone="vgg16", image_size=32, hidden_units=8)
    train_cfg = TrainConfig(epochs=2, batch_size=8, verbose=0, monitor="val_accuracy", class_weight="balanced")
    model, plan = fit_image_classifier(model_cfg, train_cfg, train_ds, None, num_classes=2, run=run,
                                       labels=labels.tolist())
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 2)
    assert any(layer.name.startswith("dense") or "hidden" in layer.name for layer in model.layers)
    assert [p["phase"] for p in plan.phases] == ["train"] and plan.phases[0]["epochs_run"] == 2
    # No validation set: the run watched the training loss, and last.keras is what came back.
    assert (run.dir / "weights" / "last.keras").is_file()
    np.testing.assert_allclose(model.predict(np.zeros((1, 32, 32, 3), "float32"), verbose=0).sum(), 1.0, rtol=1e-5)


def test_build_image_classifier_sizes_the_backbone_by_the_network_section():
    model_cfg = ModelConfig(backbone="convnextv2_atto", image_size=32, hidden_units=4, dropout=0.1)
    network = NetworkConfig(widths=[8, 16], depths=[1, 1], stem="conv")
    model = build_image_classifier(model_cfg, 3, network=network, channels=1)
    assert model.input_shape == (None, 32, 32, 1) and model.output_shape == (None, 3)
    backbone = model.get_layer("backbone")
    assert backbone.output.shape[-1] == 16  # the last of network.widths, not the registry's atto (320)
    assert {"hidden", "dropout"} <= {layer.name for layer in model.layers}
    # Without widths the network section leaves the registry entry as it is, at the registry's size.
    registry = build_image_classifier(model_cfg, 3, network=NetworkConfig(), channels=1)
    assert registry.get_layer("backbone").output.shape[-1] == 320
    multilabel = build_image_classifier(model_cfg, 3, network=network, channels=1, multilabel=True)
    assert multilabel.get_layer("predictions").activation.__name__ == "sigmoid"


def test_backbone_normalization_is_the_registry_one():
    from keras_medimg.models.backbones import get_spec

    assert backbone_normalization("vgg16").to_dict() == get_spec("vgg16").input_normalization(3).to_dict()


def test_known_length_gives_a_filtered_dataset_its_batches():
    import tensorflow as tf

    from keras_medimg.training.image_classifier import known_length

    filtered = tf.data.Dataset.range(10).filter(lambda x: x != 3).batch(4)  # one element dropped: length unknown
    assert int(filtered.cardinality()) < 0
    fixed = known_length(filtered, 3)
    assert int(fixed.cardinality()) == 3
    batches = [b.numpy().tolist() for b in fixed]
    assert batches == [[0, 1, 2, 4], [5, 6, 7, 8], [9]]  # an epoch is the 3 batches, in order
    plain = tf.data.Dataset.range(8).batch(4)
    assert known_length(plain, 5) is plain
