"""Backbones of a registry family at chosen widths and depths (tiny networks for tests, demos and small data).

`small_backbone("convnextv2_atto", widths=[8, 16, 32, 64], depths=[2, 2, 2, 2], image_size=64)` builds our
ConvNeXt V2 at those stage widths; a `swin*` name builds keras-hub's Swin Transformer with embedding width
`widths[0]` (each stage doubles it; the other widths are not used), reshaped to a feature map, so that
`models.classifier.build_classifier` takes either. Randomly initialised: pretrained weights fit only the
registry's own sizes.
"""

from __future__ import annotations

from typing import Sequence

from keras_medimg.errors import ConfigError


def small_backbone(backbone: str, widths: Sequence[int], depths: Sequence[int], image_size: int, channels: int = 1,
                   weights: str | None = None):
    """The family of registry entry `backbone` (ConvNeXt V2 or Swin) at `widths`/`depths`, for square inputs;
    `weights` (pretrained weights asked for) is refused: they fit only the registry's own sizes."""
    from keras_medimg.models.backbones import get_spec

    if weights:
        raise ConfigError("Pretrained weights fit only the registry's sizes: set network.widths=[] to use "
                          f"model.weights={weights}.")
    spec = get_spec(backbone)
    if len(widths) != len(depths):
        raise ConfigError(f"network.widths {list(widths)} and network.depths {list(depths)} need one entry per stage "
                          "each.")
    shape = (image_size, image_size, channels)
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
