"""The one backbone registry: every feature extractor the studies use, with its input normalisation as data.

`build_backbone(name, input_shape=..., weights=...)` returns a headless Keras model whose output is the last
feature map (B, h, w, C); pooling and the head are the classifier's job. `weights` is None (random), "imagenet"
(downloaded the way keras / keras-hub normally do; offline this raises `WeightsUnavailableError` naming the file
to fetch elsewhere) or a local path: a `.keras` model, a `.weights.h5` file saved from the same architecture,
the original `.h5` file of keras.applications, an official ConvNeXt V2 `.pt` checkpoint, or a keras-hub preset
folder for Swin.

Entries that were trained with a built-in preprocessing layer are built without it
(`include_preprocessing=False`), so that every entry takes the same kind of input: the [0, 1] image after
`spec.normalization`, which the tf.data pipeline applies.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from keras_medimg.errors import ConfigError, InvalidInputError, WeightsUnavailableError
from keras_medimg.models import convnextv2, torch_kernels, torch_weights
from keras_medimg.preprocessing.normalize import CAFFE, IMAGENET, MINUS_ONE_TO_ONE, Normalization

_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
# keras.applications ConvNeXts that also load PyTorch ConvNeXt files (timm, official, MAM-CLIP): `torch_weights`.
TORCH_CONVNEXT = ("convnext_tiny", "convnext_small")
_SWIN_URL = "https://www.kaggle.com/models/keras/swin-transformer/keras/{preset}"
_SWIN_WINDOW = 7  # the published Swin-T/S window; pretrained weights only fit this window size


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry.

    Args:
        name: registry name (`densenet121`, `swin_tiny`, `convnextv2_atto`, ...).
        family: where the architecture comes from: "keras.applications", "keras_hub" or "convnextv2".
        builder: `builder(input_shape) -> keras.Model`, the headless model with random weights.
        normalization: what the input pipeline applies to [0, 1] RGB images for this backbone.
        default_size: the input size the ImageNet weights were trained at.
        min_size: the smallest height/width the architecture accepts.
        feature_layer: the layer whose output is the last convolutional feature map (Grad-CAM's default).
        weights_file: file name of the ImageNet weights (what to download elsewhere when offline).
        weights_url: where keras / keras-hub download it from.
        size_multiple: height and width must be multiples of this.
    """

    name: str
    family: str
    builder: Callable[[tuple[int, int, int]], keras.Model]
    normalization: Normalization
    default_size: int
    min_size: int
    feature_layer: str
    weights_file: str
    weights_url: str
    size_multiple: int = 1

    def input_normalization(self, channels: int) -> Normalization:
        """The normalisation for `channels`-channel input: for grey images, the mean of the RGB statistics."""
        if channels == 3:
            return self.normalization
        norm = self.normalization
        return Normalization(
            scale=norm.scale, mean=(sum(norm.mean) / 3,) * channels, std=(sum(norm.std) / 3,) * channels, bgr=False
        )


# === keras.applications ===


@dataclass(frozen=True)
class _ApplicationsBuilder:
    """Builds a keras.applications model headless; `saved_layout=True` builds it as its weights file was saved."""

    constructor: str
    has_preprocessing: bool = False  # the constructor takes include_preprocessing (EfficientNetV2, ConvNeXt)

    def __call__(self, input_shape: tuple[int, int, int], weights: str | None = None, *,
                 saved_layout: bool = False) -> keras.Model:
        factory = getattr(keras.applications, self.constructor)
        extra = {"include_preprocessing": saved_layout} if self.has_preprocessing else {}
        return factory(include_top=False, weights=weights, input_shape=tuple(input_shape), **extra)


def _applications_spec(name: str, constructor: str, normalization: Normalization, *, default_size: int,
                       min_size: int, feature_layer: str, url_path: str, has_preprocessing: bool = False
                       ) -> BackboneSpec:
    return BackboneSpec(
        name=name, family="keras.applications", builder=_ApplicationsBuilder(constructor, has_preprocessing),
        normalization=normalization, default_size=default_size, min_size=min_size, feature_layer=feature_layer,
        weights_file=url_path.rsplit("/", 1)[-1], weights_url=_APPLICATIONS_URL + url_path,
    )


# === keras-hub Swin Transformer ===

_SWIN_ARCHITECTURES = {
    "swin_tiny": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)},
    "swin_small": {"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24)},
}
_SWIN_PRESETS = {"swin_tiny": "swin_tiny_patch4_window7_224", "swin_small": "swin_small_patch4_window7_224"}


def _swin_feature_map(hub_backbone: keras.Model, input_shape: tuple[int, int, int], name: str) -> keras.Model:
    """Wrap keras-hub's Swin (tokens out, (B, h*w, C)) so that it returns a (B, h, w, C) feature map."""
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    tokens = hub_backbone(inputs)
    height, width = input_shape[0] // 32, input_shape[1] // 32
    feature_map = keras.layers.Reshape((height, width, tokens.shape[-1]), name="feature_map")(tokens)
    return keras.Model(inputs, feature_map, name=name)


def _swin_builder(name: str) -> Callable[[tuple[int, int, int]], keras.Model]:
    def build(input_shape: tuple[int, int, int]) -> keras.Model:
        import keras_hub

        # keras-hub 0.32 shrinks the window of a stage smaller than it but still builds the attention bias
        # for the full window, which fails; a window no larger than the last stage avoids that. Random
        # weights do not care about the window size; pretrained ones need 7, hence min size 224 for them.
        window = min(_SWIN_WINDOW, input_shape[0] // 32, input_shape[1] // 32)
        hub_backbone = keras_hub.models.SwinTransformerBackbone(
            image_shape=tuple(input_shape), window_size=window, drop_path=0.0, name="swin_transformer",
            **_SWIN_ARCHITECTURES[name],
        )
        return _swin_feature_map(hub_backbone, input_shape, name)

    return build


def _swin_spec(name: str) -> BackboneSpec:
    preset = _SWIN_PRESETS[name]
    return BackboneSpec(
        name=name, family="keras_hub", builder=_swin_builder(name), normalization=IMAGENET, default_size=224,
        min_size=64, feature_layer="feature_map", weights_file=preset, weights_url=_SWIN_URL.format(preset=preset),
        size_multiple=32,
    )


# === ConvNeXt V2 (our own code) ===


def _convnextv2_spec(variant: str) -> BackboneSpec:
    def build(input_shape: tuple[int, int, int]) -> keras.Model:
        return convnextv2.convnextv2(variant, image_shape=tuple(input_shape))

    url = convnextv2.CHECKPOINT_URL.format(variant=variant)
    return BackboneSpec(
        name=f"convnextv2_{variant}", family="convnextv2", builder=build, normalization=IMAGENET,
        default_size=224, min_size=32, feature_layer=convnextv2.feature_layer_name(convnextv2.VARIANTS[variant]["depths"]),
        weights_file=url.rsplit("/", 1)[-1], weights_url=url, size_multiple=32,
    )


# === Config ===

_REGISTRY: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        # DenseNet's preprocess_input uses "torch" mode: ImageNet mean/std on [0, 1].
        _applications_spec("densenet121", "DenseNet121", IMAGENET, default_size=224, min_size=32,
                           feature_layer="relu",
                           url_path="densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        _applications_spec("inceptionv3", "InceptionV3", MINUS_ONE_TO_ONE, default_size=299, min_size=75,
                           feature_layer="mixed10",
                           url_path="inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        _applications_spec("xception", "Xception", MINUS_ONE_TO_ONE, default_size=299, min_size=71,
                           feature_layer="block14_sepconv2_act",
                           url_path="xception/xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        _applications_spec("vgg16", "VGG16", CAFFE, default_size=224, min_size=32, feature_layer="block5_conv3",
                           url_path="vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        # The B-variants' built-in preprocessing (used to train the ImageNet weights on 3-channel input) is
        # Rescaling(1/255) + ImageNet mean/std, not the [-1, 1] the docstring states for the V2 family.
        _applications_spec("efficientnetv2b3", "EfficientNetV2B3", IMAGENET, default_size=300, min_size=32,
                           feature_layer="top_activation", url_path="efficientnet_v2/efficientnetv2-b3_notop.h5",
                           has_preprocessing=True),
        _applications_spec("convnext_tiny", "ConvNeXtTiny", IMAGENET, default_size=224, min_size=32,
                           feature_layer="convnext_tiny_stage_3_block_2_identity",
                           url_path="convnext/convnext_tiny_notop.h5", has_preprocessing=True),
        _applications_spec("convnext_small", "ConvNeXtSmall", IMAGENET, default_size=224, min_size=32,
                           feature_layer="convnext_small_stage_3_block_2_identity",
                           url_path="convnext/convnext_small_notop.h5", has_preprocessing=True),
        _swin_spec("swin_tiny"),
        _swin_spec("swin_small"),
        *(_convnextv2_spec(variant) for variant in convnextv2.VARIANTS),
    ]
}


def list_backbones() -> list[str]:
    """Names of every registry entry, in registry order."""
    return list(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    """The registry entry called `name`; an unknown name raises `ConfigError` with the closest names."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"Unknown backbone '{name}'.{hint} Choose one of: {', '.join(_REGISTRY)}.")


def _check_input_shape(spec: BackboneSpec, input_shape: tuple[int, ...], weights: str | None) -> tuple[int, int, int]:
    if len(input_shape) != 3 or any(not isinstance(d, int) for d in input_shape):
        raise ConfigError(f"Backbone '{spec.name}' needs input_shape (height, width, channels) with integer sizes; "
                          f"got {tuple(input_shape)}.")
    height, width, channels = input_shape
    if channels not in (1, 3):
        raise ConfigError(f"Backbone '{spec.name}' takes 1 (grey) or 3 (RGB) channels; got {channels}.")
    if min(height, width) < spec.min_size:
        raise ConfigError(f"Backbone '{spec.name}' needs images of at least {spec.min_size}x{spec.min_size} pixels; "
                          f"got {height}x{width}. Increase the image size.")
    if height % spec.size_multiple or width % spec.size_multiple:
        raise ConfigError(f"Backbone '{spec.name}' needs a height and width that are multiples of "
                          f"{spec.size_multiple}; got {height}x{width}.")
    if weights is not None and channels != 3:
        raise ConfigError(f"Pretrained weights for '{spec.name}' expect 3-channel input; got {channels} channel(s). "
                          "Repeat grey images to 3 channels, or use weights: null.")
    if weights is not None and spec.family == "keras_hub" and min(height, width) < spec.default_size:
        raise ConfigError(f"Pretrained '{spec.name}' needs images of at least {spec.default_size}x{spec.default_size} "
                          f"pixels (its attention window is {_SWIN_WINDOW} at the last stage); got {height}x{width}.")
    return height, width, channels


def build_backbone(name: str, *, input_shape: tuple[int, int, int], weights: str | Path | None = None) -> keras.Model:
    """Build a registry entry as a headless model: image -> last feature map (B, h, w, C).

    Args:
        name: a name from `list_backbones()`.
        input_shape: (height, width, channels); channels 1 (random weights only) or 3.
        weights: None for random weights, "imagenet", or a local file / keras-hub preset folder.

    Raises:
        ConfigError: unknown name or unsupported input shape.
        WeightsUnavailableError: "imagenet" cannot be downloaded, or the weights path does not exist.
        InvalidInputError: the weights file does not fit the architecture.
    """
    spec = get_spec(name)
    input_shape = _check_input_shape(spec, tuple(input_shape), None if weights is None else str(weights))
    torch_kernels.install()  # faster conv and batch norm on the torch backend; nothing on the others
    if weights is None:
        return spec.builder(input_shape)
    if str(weights) == "imagenet":
        return _imagenet(spec, input_shape)
    path = Path(weights).expanduser()
    if not path.exists():
        raise WeightsUnavailableError(
            f"Weights file '{path}' for backbone '{spec.name}' does not exist. Pass an existing file or folder, "
            "'imagenet', or null for random weights."
        )
    return _from_path(spec, input_shape, path)


def _offline_error(spec: BackboneSpec, exc: Exception) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"ImageNet weights for '{spec.name}' could not be downloaded ({type(exc).__name__}: {exc}). "
        f"Fetch '{spec.weights_file}' from {spec.weights_url} on a machine with internet access and pass its "
        f"local path as the weights instead of 'imagenet'."
    )


def _imagenet(spec: BackboneSpec, input_shape: tuple[int, int, int]) -> keras.Model:
    """Download the published weights the way keras / keras-hub normally do, then load them."""
    try:
        if spec.family == "keras.applications":
            reference = _applications_reference(spec, input_shape, "imagenet")
        elif spec.family == "keras_hub":
            import keras_hub

            hub = keras_hub.models.SwinTransformerBackbone.from_preset(spec.weights_file, image_shape=input_shape)
        else:
            checkpoint = keras.utils.get_file(spec.weights_file, spec.weights_url, cache_subdir="models")
    except (ConfigError, InvalidInputError):
        raise
    except Exception as exc:  # network failures surface as several exception types, all mean "offline"
        raise _offline_error(spec, exc) from exc
    if spec.family == "keras.applications":
        model = spec.builder(input_shape)
        _copy_weights(reference, model, Path(spec.weights_file))
        return model
    if spec.family == "keras_hub":
        return _swin_feature_map(hub, input_shape, spec.name)
    return _from_path(spec, input_shape, Path(checkpoint))


def _applications_reference(spec: BackboneSpec, input_shape: tuple[int, int, int], weights: str) -> keras.Model:
    """The keras.applications model exactly as its weights file was saved (with built-in preprocessing)."""
    return spec.builder(input_shape, weights, saved_layout=True)


def _from_path(spec: BackboneSpec, input_shape: tuple[int, int, int], path: Path) -> keras.Model:
    if path.is_dir():
        if spec.family != "keras_hub":
            raise InvalidInputError(path, f"is a folder, but '{spec.name}' weights are a single file; pass the "
                                          f"'{spec.weights_file}' file, a .keras or a .weights.h5 file.")
        return _swin_from_preset(spec, input_shape, path)
    name = path.name
    model = spec.builder(input_shape)
    try:
        if name.endswith(".weights.h5"):
            model.load_weights(path)
        elif name.endswith(".keras"):
            _copy_weights(_backbone_in(keras.saving.load_model(path, compile=False)), model, path)
        elif name.endswith(".pt") and spec.family == "convnextv2":
            convnextv2.load_torch_checkpoint(model, path)
        elif path.suffix.lower() in torch_weights.TORCH_SUFFIXES and spec.name in TORCH_CONVNEXT:
            torch_weights.load_convnext(model, path)  # timm / official / MAM-CLIP PyTorch files
        elif name.endswith(".h5") and spec.family == "keras.applications":
            _copy_weights(_applications_reference(spec, input_shape, str(path)), model, path)
        else:
            torch_files = (f", or a timm / official PyTorch ConvNeXt file ({', '.join(torch_weights.TORCH_SUFFIXES)})"
                           if spec.name in TORCH_CONVNEXT else "")
            raise InvalidInputError(path, f"is not a weights format '{spec.name}' can load; pass a .keras or "
                                          f".weights.h5 file, or the original '{spec.weights_file}'{torch_files}.")
    except InvalidInputError:
        raise
    except Exception as exc:
        raise InvalidInputError(path, f"does not fit backbone '{spec.name}' at input shape {input_shape} "
                                      f"({type(exc).__name__}: {exc}). Pass weights saved from this backbone.") from exc
    return model


def _swin_from_preset(spec: BackboneSpec, input_shape: tuple[int, int, int], path: Path) -> keras.Model:
    import keras_hub

    try:
        hub = keras_hub.models.SwinTransformerBackbone.from_preset(str(path), image_shape=input_shape)
    except Exception as exc:
        raise InvalidInputError(path, f"is not a loadable keras-hub Swin Transformer preset folder ({exc}); "
                                      f"download '{spec.weights_file}' from {spec.weights_url}.") from exc
    expected = _SWIN_ARCHITECTURES[spec.name]
    found = {key: getattr(hub, key) for key in expected}
    if {k: tuple(v) if isinstance(v, list) else v for k, v in found.items()} != expected:
        raise InvalidInputError(path, f"holds a Swin Transformer with {found}, not '{spec.name}' ({expected}); "
                                      "pick the preset of this variant.")
    return _swin_feature_map(hub, input_shape, spec.name)


def _backbone_in(model: keras.Model) -> keras.Model:
    """The backbone inside a saved classifier (its "backbone" layer), or the model itself."""
    try:
        return model.get_layer("backbone")
    except ValueError:
        return model


def _weights_in_order(model: keras.Model) -> list:
    # keras' in-model preprocessing layers carry no learned weights; skipping them lets a model saved with
    # include_preprocessing=True fill ours, built without.
    skip = (keras.layers.Normalization, keras.layers.Rescaling)
    return [w for layer in model.layers if not isinstance(layer, skip) for w in layer.weights]


def _copy_weights(source: keras.Model, target: keras.Model, path: Path) -> None:
    """Copy weights in topological order after checking that every shape matches."""
    source_weights, target_weights = _weights_in_order(source), _weights_in_order(target)
    if len(source_weights) != len(target_weights):
        raise InvalidInputError(path, f"holds {len(source_weights)} weight arrays but backbone '{target.name}' has "
                                      f"{len(target_weights)}; pass weights saved from the same architecture.")
    for src, dst in zip(source_weights, target_weights):
        if tuple(src.shape) != tuple(dst.shape):
            raise InvalidInputError(path, f"weight '{src.path}' has shape {tuple(src.shape)} where backbone "
                                          f"'{target.name}' needs {tuple(dst.shape)}; pass weights saved from the "
                                          "same architecture and number of channels.")
    for src, dst in zip(source_weights, target_weights):
        dst.assign(keras.ops.convert_to_numpy(src.value))
