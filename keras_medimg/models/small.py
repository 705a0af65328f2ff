"""Backbones of a registry family at chosen widths and depths (tiny networks for tests, demos and small data).

`small_backbone("convnextv2_atto", widths=[8, 16, 32, 64], depths=[2, 2, 2, 2], image_size=64)` builds our
ConvNeXt V2 at those stage widths; a `swin*` name builds keras-hub's Swin Transformer with embedding width
`widths[0]` (each stage doubles it; the other widths are not used), reshaped to a feature map, so that
`models.classifier.build_classifier` takes either. Randomly initialised: pretrained weights fit only the
registry's own sizes.

`network_backbone(backbone, network, ...)` is what an app calls with its `model` and `network` config sections:
the registry entry, or its family at `network`'s widths, depths and stem.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

from keras_medimg.config import NetworkConfig
from keras_medimg.errors import ConfigError

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


def sizes_backbone(backbone: str, network: NetworkConfig) -> bool:
    """Whether `network` sizes registry entry `backbone`: widths are given and it is a ConvNeXtV2 or Swin entry
    (the registry's other CNNs keep their own size)."""
    from keras_medimg.models.backbones import get_spec

    return bool(network.widths) and (get_spec(backbone).family == "convnextv2" or backbone.startswith("swin"))


def network_backbone(backbone: str, network: NetworkConfig, *, image_size: int, channels: int = 1,
                     weights: str | None = None) -> str | keras.Model:
    """The backbone of an app's classifier, from its `model.backbone`, `model.weights`, `model.image_size` and
    `network` config: the registry name `backbone` itself (`models.classifier.build_classifier` builds it with
    `weights`) when `network.widths` is empty or the entry is not a ConvNeXtV2/Swin, else `small_backbone` at
    `network`'s widths, depths and stem (random weights: `weights` is refused).

    Example:
    ```python
    features = network_backbone("convnextv2_atto", NetworkConfig([8, 16, 32, 64], [1, 1, 1, 1], "conv"), image_size=64)
    build_classifier(features, 2)  # a 64 x 64 x 1 classifier on the small ConvNeXt V2
    ```
    """
    widths, depths, stem = network.widths, network.depths, network.stem
    if not sizes_backbone(backbone, network):
        if widths:
            log.info(f"network (widths {widths}, depths {depths}, stem {stem}) sizes ConvNeXtV2/Swin backbones; "
                     f"{backbone} is built at its registry size.")
        return backbone
    return small_backbone(backbone, widths, depths, image_size, channels, weights=weights, stem=stem)


def small_backbone(backbone: str, widths: Sequence[int], depths: Sequence[int], image_size: int, channels: int = 1,
                   weights: str | None = None, stem: str = "patchify"):
    """The family of registry entry `backbone` (ConvNeXt V2 or Swin) at `widths`/`depths`, for square inputs;
    `weights` (pretrained weights asked for) is refused: they fit only the registry's own sizes. `stem` (ConvNeXt
    V2 only): "patchify" (the registry's 4x4 stride-4 conv) or "conv" (`conv_stem_convnextv2`)."""
    from keras_medimg.models.backbones import get_spec

    if weights:
        raise ConfigError("Pretrained weights fit only the registry's sizes: set network.widths=[] to use "
                          f"model.weights={weights}.")
    spec = get_spec(backbone)
    if len(widths) != len(depths):
        raise ConfigError(f"network.widths {list(widths)} and network.depths {list(depths)} need one entry per stage "
                          "each.")
    shape = (image_size, image_size, channels)
    if stem not in ("patchify", "conv"):
        raise ConfigError(f"network.stem must be patchify or conv, not {stem!r}.")
    if spec.family == "convnextv2" and stem == "conv":
        return conv_stem_convnextv2(widths, depths, image_size, channels)
    if spec.family == "convnextv2":
        from keras_medimg.models.convnextv2 import ConvNeXtV2Backbone

        return ConvNeXtV2Backbone(depths=tuple(depths), dims=tuple(widths), image_shape=shape,
                                  name="convnextv2_small_widths")
    if backbone.startswith("swin"):
        return small_swin(shape, widths[0], depths)
    raise ConfigError(f"network.widths applies to the ConvNeXtV2 and Swin backbones, not {backbone}; set "
                      "network.widths=[] for it.")


def small_swin(shape: tuple[int, int, int], embed_dim: int, depths: Sequence[int]):
    """keras-hub's Swin Transformer at `embed_dim` (each stage doubles it, 16 channels a head), as a feature map."""
    import keras
    import keras_hub

    if shape[0] % 32 or shape[0] != shape[1]:
        raise ConfigError(f"Swin needs a square image size divisible by 32, not {shape[0]}x{shape[1]}.")
    heads = tuple(max(1, w // 16) for w in (embed_dim * 2**i for i in range(len(depths))))
    window = max(1, min(7, shape[0] // 32))
    hub = keras_hub.models.SwinTransformerBackbone(image_shape=shape, window_size=window, drop_path=0.0,
                                                    embed_dim=embed_dim, depths=tuple(depths), num_heads=heads,
                                                    name="swin_transformer")
    inputs = keras.Input(shape=shape, name="images")
    tokens = hub(inputs)
    side = shape[0] // 2 ** (len(depths) + 1)
    feature_map = keras.layers.Reshape((side, side, tokens.shape[-1]), name="feature_map")(tokens)
    return keras.Model(inputs, feature_map, name="swin_small_widths")


def conv_stem_convnextv2(widths: Sequence[int], depths: Sequence[int], image_size: int, channels: int = 1):
    """ConvNeXtV2 stages (our blocks) behind a convolutional stem: two 3x3 stride-2 convolutions with BatchNorm and
    GELU (widths[0] / 2, widths[0]) replace the 4x4 patchify conv, then the stem's LayerNorm.

    Why: trained from scratch on a few hundred images, the patchify stem's LayerNorm over a handful of channels
    leaves little of a patch's brightness, and the small ConvNeXtV2 memorised the demo mammograms without
    generalising (test ROC AUC 0.4-0.6 at widths 8-128, avg or max pooling, 64 or 128 px), while the same blocks
    behind this stem reach 0.8 and more ("early convolutions", Xiao et al. 2021). Same output stride (32)."""
    import keras

    from keras_medimg.models import convnextv2 as cnx

    inputs = keras.Input(shape=(image_size, image_size, channels), name="images")
    x = inputs
    for index, width in enumerate((max(1, widths[0] // 2), widths[0])):
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name=f"stem_conv_{index}")(x)
        x = keras.layers.BatchNormalization(name=f"stem_batchnorm_{index}")(x)
        x = keras.layers.Activation("gelu", name=f"stem_gelu_{index}")(x)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="stem_layernorm")(x)
    for stage, (depth, width) in enumerate(zip(depths, widths)):
        if stage > 0:
            x = cnx.apply_downsample(x, width, name=f"stage_{stage}_downsample")
        for block in range(depth):
            x = cnx.apply_block(x, width, 0.0, name=f"stage_{stage}_block_{block}")
    return keras.Model(inputs, x, name="convnextv2_conv_stem")
