"""ConvNeXt V2 (Woo et al., 2023, "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders").

Our own Keras 3 code (`keras.ops` and `keras.layers` only, so it runs on TensorFlow, PyTorch and JAX). A block is
depthwise 7x7 conv -> LayerNorm -> pointwise 4x expansion -> GELU -> Global Response Normalization -> pointwise
projection -> drop path -> residual; V2 drops V1's layer scale, GRN takes its place. The backbone is headless:
it returns the last stage's feature map and pooling is the classifier's job.

The official PyTorch checkpoints (`convnextv2_<variant>_1k_224_ema.pt`) load with `load_torch_checkpoint`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
from keras import layers, ops

from keras_medimg.errors import InvalidInputError

VARIANTS: dict[str, dict[str, tuple[int, ...]]] = {
    "atto": {"depths": (2, 2, 6, 2), "dims": (40, 80, 160, 320)},
    "femto": {"depths": (2, 2, 6, 2), "dims": (48, 96, 192, 384)},
    "pico": {"depths": (2, 2, 6, 2), "dims": (64, 128, 256, 512)},
    "nano": {"depths": (2, 2, 8, 2), "dims": (80, 160, 320, 640)},
    "tiny": {"depths": (3, 3, 9, 3), "dims": (96, 192, 384, 768)},
    "base": {"depths": (3, 3, 27, 3), "dims": (128, 256, 512, 1024)},
}

CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_{variant}_1k_224_ema.pt"

_EPSILON = 1e-6


def _kernel_initializer() -> keras.initializers.Initializer:
    # The paper initialises every conv and linear layer with trunc_normal(std=0.02) and zero biases.
    return keras.initializers.TruncatedNormal(stddev=0.02)


@keras.saving.register_keras_serializable(package="keras_medimg")
class GlobalResponseNormalization(layers.Layer):
    """GRN: `gamma * (x * N(x)) + beta + x`, N(x) = per-channel spatial L2 norm divided by its channel mean.

    Args:
        epsilon: added to the channel mean of the norms before dividing.
    """

    def __init__(self, epsilon: float = _EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = input_shape[-1]
        self.gamma = self.add_weight(shape=(channels,), initializer="zeros", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")

    def call(self, inputs):
        # The sum of squares over a whole feature map overflows float16, so the norm is taken in float32.
        x32 = ops.cast(inputs, "float32")
        norms = ops.sqrt(ops.sum(ops.square(x32), axis=(1, 2), keepdims=True))
        relative = norms / (ops.mean(norms, axis=-1, keepdims=True) + self.epsilon)
        relative = ops.cast(relative, inputs.dtype)
        gamma = ops.cast(self.gamma, inputs.dtype)
        beta = ops.cast(self.beta, inputs.dtype)
        return gamma * (inputs * relative) + beta + inputs

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="keras_medimg")
class DropPath(layers.Layer):
    """Stochastic depth: during training, zero a whole residual branch per sample with probability `rate`.

    Args:
        rate: probability of dropping the branch for one sample.
        seed: seed of the layer's random generator.
    """

    def __init__(self, rate: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        mask = ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator, dtype=inputs.dtype))
        return inputs / keep * mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def apply_block(x, dim: int, drop_path_rate: float, name: str):
    """One ConvNeXt V2 block on a channels-last feature map with `dim` channels."""
    shortcut = x
    x = layers.DepthwiseConv2D(
        7, padding="same", depthwise_initializer=_kernel_initializer(), name=f"{name}_depthwise_conv"
    )(x)
    x = layers.LayerNormalization(epsilon=_EPSILON, name=f"{name}_layernorm")(x)
    x = layers.Dense(4 * dim, kernel_initializer=_kernel_initializer(), name=f"{name}_pointwise_conv_1")(x)
    # Keras' "gelu" is the exact (erf) GELU of the reference's torch.nn.GELU, not the tanh approximation.
    x = layers.Activation("gelu", name=f"{name}_gelu")(x)
    x = GlobalResponseNormalization(name=f"{name}_grn")(x)
    x = layers.Dense(dim, kernel_initializer=_kernel_initializer(), name=f"{name}_pointwise_conv_2")(x)
    x = DropPath(drop_path_rate, name=f"{name}_drop_path")(x)
    return layers.Add(name=f"{name}_add")([shortcut, x])


def apply_stem(x, dim: int, name: str):
    """Patchify stem: non-overlapping 4x4 conv, then LayerNorm."""
    x = layers.Conv2D(dim, 4, strides=4, kernel_initializer=_kernel_initializer(), name=f"{name}_conv")(x)
    return layers.LayerNormalization(epsilon=_EPSILON, name=f"{name}_layernorm")(x)


def apply_downsample(x, dim: int, name: str):
    """Between stages: LayerNorm, then a 2x2 conv with stride 2."""
    x = layers.LayerNormalization(epsilon=_EPSILON, name=f"{name}_layernorm")(x)
    return layers.Conv2D(dim, 2, strides=2, kernel_initializer=_kernel_initializer(), name=f"{name}_conv")(x)


def feature_layer_name(depths: tuple[int, ...]) -> str:
    """Name of the layer that outputs the last stage's feature map (the backbone's output)."""
    return f"stage_{len(depths) - 1}_block_{depths[-1] - 1}_add"


@keras.saving.register_keras_serializable(package="keras_medimg")
class ConvNeXtV2Backbone(keras.Model):
    """Headless ConvNeXt V2: image (B, H, W, C) -> last stage feature map (B, H/32, W/32, dims[-1]).

    Args:
        depths: number of blocks in each of the four stages.
        dims: channels of each stage.
        drop_path_rate: stochastic depth rate of the last block; it grows linearly from 0 over the blocks.
        image_shape: input shape without the batch axis; height and width may be None.

    Example:
    ```python
    backbone = ConvNeXtV2Backbone(**VARIANTS["atto"], image_shape=(64, 64, 1))
    features = backbone(np.zeros((2, 64, 64, 1), "float32"))  # (2, 2, 2, 320)
    ```
    """

    def __init__(
        self,
        depths: tuple[int, ...],
        dims: tuple[int, ...],
        drop_path_rate: float = 0.0,
        image_shape: tuple[int | None, ...] = (None, None, 3),
        **kwargs,
    ):
        if len(depths) != len(dims):
            raise ValueError(f"depths {depths} and dims {dims} must have one entry per stage.")
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]

        # === Functional Model ===
        inputs = keras.Input(shape=tuple(image_shape), name="images")
        x = apply_stem(inputs, dims[0], name="stem")
        block_index = 0
        for stage, (depth, dim) in enumerate(zip(depths, dims)):
            if stage > 0:
                x = apply_downsample(x, dim, name=f"stage_{stage}_downsample")
            for block in range(depth):
                x = apply_block(x, dim, rates[block_index], name=f"stage_{stage}_block_{block}")
                block_index += 1
        super().__init__(inputs=inputs, outputs=x, **kwargs)

        # === Config ===
        self.depths = tuple(depths)
        self.dims = tuple(dims)
        self.drop_path_rate = drop_path_rate
        self.image_shape = tuple(image_shape)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "depths": self.depths,
            "dims": self.dims,
            "drop_path_rate": self.drop_path_rate,
            "image_shape": self.image_shape,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        # The inner layers take the global policy when they are made: build under the saved one, so that a
        # mixed-precision backbone reloads mixed (and a float32 one float32 under a mixed global policy).
        with global_dtype_policy(config.get("dtype")):
            return cls(**config)


@contextlib.contextmanager
def global_dtype_policy(policy: Any) -> Iterator[None]:
    """The global dtype policy set to `policy` (a name, a policy or its serialized dict; None keeps it) inside,
    the caller's afterwards: what `from_config` of a model that makes its layers in `__init__` needs."""
    previous = keras.config.dtype_policy()
    if policy is not None:
        keras.config.set_dtype_policy(keras.dtype_policies.deserialize(policy) if isinstance(policy, dict) else policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def convnextv2(variant: str, *, image_shape: tuple[int | None, ...], drop_path_rate: float = 0.0,
               name: str | None = None) -> ConvNeXtV2Backbone:
    """Build a published ConvNeXt V2 variant (atto, femto, pico, nano, tiny, base) with random weights.

    Args:
        variant: a key of `VARIANTS`.
        image_shape: (H, W, C) of the input.
        drop_path_rate: stochastic depth rate of the deepest block.
        name: model name; defaults to `convnextv2_<variant>`.
    """
    spec = VARIANTS[variant]
    return ConvNeXtV2Backbone(
        depths=spec["depths"], dims=spec["dims"], drop_path_rate=drop_path_rate, image_shape=image_shape,
        name=name or f"convnextv2_{variant}",
    )


def _official_names(depths: tuple[int, ...]) -> dict[str, list[str]]:
    """Our layer name -> the official state-dict keys of its weights, in Keras weight order."""
    names = {"stem_conv": ["downsample_layers.0.0.weight", "downsample_layers.0.0.bias"],
             "stem_layernorm": ["downsample_layers.0.1.weight", "downsample_layers.0.1.bias"]}
    for stage, depth in enumerate(depths):
        if stage > 0:
            prefix = f"downsample_layers.{stage}"
            names[f"stage_{stage}_downsample_layernorm"] = [f"{prefix}.0.weight", f"{prefix}.0.bias"]
            names[f"stage_{stage}_downsample_conv"] = [f"{prefix}.1.weight", f"{prefix}.1.bias"]
        for block in range(depth):
            ours, theirs = f"stage_{stage}_block_{block}", f"stages.{stage}.{block}"
            names[f"{ours}_depthwise_conv"] = [f"{theirs}.dwconv.weight", f"{theirs}.dwconv.bias"]
            names[f"{ours}_layernorm"] = [f"{theirs}.norm.weight", f"{theirs}.norm.bias"]
            names[f"{ours}_pointwise_conv_1"] = [f"{theirs}.pwconv1.weight", f"{theirs}.pwconv1.bias"]
            names[f"{ours}_grn"] = [f"{theirs}.grn.gamma", f"{theirs}.grn.beta"]
            names[f"{ours}_pointwise_conv_2"] = [f"{theirs}.pwconv2.weight", f"{theirs}.pwconv2.bias"]
    return names


def load_torch_checkpoint(backbone: ConvNeXtV2Backbone, path: str | Path) -> None:
    """Load an official ConvNeXt V2 PyTorch checkpoint (`.pt`, `{"model": state_dict}`) into `backbone`.

    The classification head (`norm`, `head`) of the checkpoint is not used: the backbone is headless.

    Args:
        backbone: a ConvNeXtV2Backbone with the checkpoint's depths and dims and 3 input channels.
        path: the checkpoint file.

    Raises:
        InvalidInputError: the file cannot be read or does not match the architecture.
    """
    from keras_medimg.models.torch_weights import read_state_dict, to_keras

    path = Path(path)
    state = read_state_dict(path)
    for layer_name, keys in _official_names(backbone.depths).items():
        layer = backbone.get_layer(layer_name)
        missing = [k for k in keys if k not in state]
        if missing:
            raise InvalidInputError(path, f"has no '{missing[0]}' weight, so it is not a ConvNeXt V2 checkpoint "
                                          f"with depths {backbone.depths}; pick the checkpoint of this variant (the official "
                                          "files are convnextv2_<variant>_1k_224_ema.pt, _22k_..._ema.pt or "
                                          "_1k_224_fcmae.pt).")
        expected = [tuple(w.shape) for w in layer.weights]
        arrays = [to_keras(state[k], shape) for k, shape in zip(keys, expected)]
        if [a.shape for a in arrays] != expected:
            raise InvalidInputError(path, f"weights of '{keys[0]}' have shapes {[a.shape for a in arrays]} but "
                                          f"layer '{layer_name}' needs {expected}; pick the checkpoint of this "
                                          "variant (and use 3 input channels).")
        layer.set_weights(arrays)
