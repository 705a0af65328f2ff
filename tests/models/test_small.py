"""Small backbones: bad stage lists, pretrained weights and other families are refused with the fix."""

import pytest

from keras_medimg.errors import ConfigError
from keras_medimg.models.small import small_backbone


def test_refusals_name_the_fix():
    with pytest.raises(ConfigError, match="one entry per stage"):
        small_backbone("convnextv2_atto", [8, 16], [2], 64)
    with pytest.raises(ConfigError, match="network.widths=\\[\\]"):
        small_backbone("convnextv2_atto", [8], [1], 64, weights="w.weights.h5")
    with pytest.raises(ConfigError, match="divisible by 32"):
        small_backbone("swin_tiny", [16], [1], 48)


def test_network_backbone_sizes_convnextv2_and_swin_only():
    from keras_medimg.config import NetworkConfig
    from keras_medimg.models.small import network_backbone, sizes_backbone

    small = NetworkConfig(widths=[8, 16], depths=[1, 1])
    # Registry CNNs keep their size, and [] keeps a ConvNeXtV2's: the name goes to build_classifier (with weights).
    assert network_backbone("vgg16", small, image_size=64, weights="imagenet") == "vgg16"
    assert network_backbone("convnextv2_atto", NetworkConfig(), image_size=64, weights="imagenet") == "convnextv2_atto"
    assert not sizes_backbone("densenet121", small) and sizes_backbone("swin_tiny", small)
    model = network_backbone("convnextv2_atto", small, image_size=64, channels=3)
    assert model.name == "convnextv2_small_widths" and model.input_shape == (None, 64, 64, 3)
    assert model.output.shape[-1] == 16
    swin = network_backbone("swin_tiny", NetworkConfig(widths=[16], depths=[1]), image_size=64)
    assert swin.name == "swin_small_widths" and swin.output.shape[-1] == 16
    with pytest.raises(ConfigError, match="network.widths=\\[\\]"):
        network_backbone("convnextv2_atto", small, image_size=64, weights="imagenet")


def test_network_stem_chooses_the_convnextv2_stem():
    import keras

    from keras_medimg.config import NetworkConfig
    from keras_medimg.models.small import network_backbone

    conv = network_backbone("convnextv2_atto", NetworkConfig([8, 16], [1, 1], stem="conv"), image_size=64)
    patchify = network_backbone("convnextv2_atto", NetworkConfig([8, 16], [1, 1], stem="patchify"), image_size=64)
    assert conv.name == "convnextv2_conv_stem" and conv.get_layer("stem_conv_0").strides == (2, 2)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in patchify._flatten_layers())
    assert conv.output.shape[1:] == patchify.output.shape[1:]  # same output stride


@pytest.mark.parametrize("widths, depths", [([8, 16], [1]), ([8, 16], [1, 0]), ([8, 0], [1, 1]), ([8], [])])
def test_network_config_refuses_stage_lists_that_do_not_match(widths, depths):
    from keras_medimg.config import NetworkConfig

    with pytest.raises(ConfigError, match="'network.widths'.*'network.depths'"):
        NetworkConfig(widths=widths, depths=depths)


def test_network_config_without_widths_needs_no_depths():
    from keras_medimg.config import NetworkConfig

    assert NetworkConfig(widths=[], depths=[7, 0, 3]).depths == [7, 0, 3]  # the registry's size: depths unused
