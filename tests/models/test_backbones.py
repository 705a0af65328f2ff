"""The backbone registry: every entry builds and runs, normalisation equals keras' own, weights fail helpfully."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from keras_medimg.errors import ConfigError, InvalidInputError, WeightsUnavailableError  # noqa: E402
from keras_medimg.models.backbones import build_backbone, get_spec, list_backbones  # noqa: E402

# Each build costs 2-30 s on a shared 2-core CPU; the default suite builds one entry per family.
FAST = {"densenet121", "vgg16", "convnext_tiny", "swin_tiny", "convnextv2_atto"}


def _size(name: str) -> int:
    return max(64, get_spec(name).min_size + (-get_spec(name).min_size) % get_spec(name).size_multiple)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in list_backbones()]
)
def test_every_entry_builds_grey_and_runs_forward(name):
    size = _size(name)
    backbone = build_backbone(name, input_shape=(size, size, 1))
    features = keras.ops.convert_to_numpy(backbone(np.random.default_rng(0).random((2, size, size, 1), "float32")))
    assert features.ndim == 4 and features.shape[0] == 2 and np.isfinite(features).all()
    assert len(backbone.get_layer(get_spec(name).feature_layer).output.shape) == 4


def test_registry_lists_every_study_backbone():
    assert set(list_backbones()) == {
        "densenet121", "inceptionv3", "xception", "vgg16", "efficientnetv2b3", "convnext_tiny", "convnext_small",
        "swin_tiny", "swin_small", "convnextv2_atto", "convnextv2_femto", "convnextv2_pico", "convnextv2_nano",
        "convnextv2_tiny", "convnextv2_base",
    }


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match="Did you mean 'densenet121'"):
        get_spec("densenet12")


@pytest.mark.parametrize(
    "name,shape,message",
    [
        ("inceptionv3", (64, 64, 3), "at least 75x75"),
        ("swin_tiny", (80, 80, 3), "multiples of 32"),
        ("vgg16", (64, 64, 4), "1 \\(grey\\) or 3"),
        ("vgg16", (64, 64, 1), "expect 3-channel input"),
        ("swin_tiny", (64, 64, 3), "at least 224x224"),
    ],
)
def test_unsupported_input_shapes_are_config_errors(name, shape, message):
    weights = "imagenet" if message in ("expect 3-channel input", "at least 224x224") else None
    with pytest.raises(ConfigError, match=message):
        build_backbone(name, input_shape=shape, weights=weights)


def _keras_preprocessing(name: str, images_255: np.ndarray) -> np.ndarray:
    """What keras.applications feeds the network for 0-255 images: preprocess_input or the built-in layers."""
    spec = get_spec(name)
    modules = {"densenet121": "densenet", "inceptionv3": "inception_v3", "xception": "xception", "vgg16": "vgg16"}
    if name in modules:
        return getattr(keras.applications, modules[name]).preprocess_input(images_255.copy())
    model = spec.builder((32, 32, 3), saved_layout=True)
    x = images_255
    for layer in model.layers[1:]:
        if not isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)):
            break
        x = layer(x)
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize(
    "name",
    ["densenet121", "inceptionv3", "xception", "vgg16", "convnext_tiny",
     pytest.param("efficientnetv2b3", marks=pytest.mark.slow)],
)
def test_normalization_equals_keras_preprocessing(name):
    images = np.random.default_rng(1).random((2, 32, 32, 3)).astype("float32")
    ours = get_spec(name).normalization.apply(images)
    np.testing.assert_allclose(ours, _keras_preprocessing(name, images * 255.0), rtol=1e-4, atol=1e-4)


def test_grey_normalization_keeps_one_channel():
    norm = get_spec("densenet121").input_normalization(1)
    assert norm.apply(np.zeros((4, 4, 1), "float32")).shape == (4, 4, 1)
    assert get_spec("vgg16").input_normalization(3) == get_spec("vgg16").normalization


def test_imagenet_offline_names_the_file_to_fetch(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("vgg16", input_shape=(64, 64, 3), weights="imagenet")
    message = str(info.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" in message


def test_missing_weights_path_is_named(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="nothere.weights.h5"):
        build_backbone("vgg16", input_shape=(32, 32, 3), weights=tmp_path / "nothere.weights.h5")


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "atto.weights.h5"
    build_backbone("convnextv2_atto", input_shape=(32, 32, 3)).save_weights(path)
    with pytest.raises(InvalidInputError, match="atto.weights.h5"):
        build_backbone("vgg16", input_shape=(32, 32, 3), weights=path)


def _same_weights(a: keras.Model, b: keras.Model) -> bool:
    return all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.weights, b.weights))


def test_weights_from_a_saved_keras_model_and_weights_file(tmp_path):
    source = build_backbone("vgg16", input_shape=(32, 32, 3))
    source.save(tmp_path / "vgg.keras")
    source.save_weights(tmp_path / "vgg.weights.h5")
    assert _same_weights(source, build_backbone("vgg16", input_shape=(32, 32, 3), weights=tmp_path / "vgg.keras"))
    assert _same_weights(source, build_backbone("vgg16", input_shape=(32, 32, 3),
                                                weights=tmp_path / "vgg.weights.h5"))


@pytest.mark.parametrize("name", ["vgg16", pytest.param("convnext_tiny", marks=pytest.mark.slow)])
def test_original_keras_applications_h5_file_loads(tmp_path, name):
    """The file users download by hand is keras' legacy .h5, saved with the built-in preprocessing layers."""
    from keras.src.legacy.saving import legacy_h5_format
    import h5py

    reference = get_spec(name).builder((32, 32, 3), saved_layout=True)
    path = tmp_path / get_spec(name).weights_file
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, reference)
    loaded = build_backbone(name, input_shape=(32, 32, 3), weights=path)
    images = np.random.default_rng(2).random((1, 32, 32, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(reference(images * 255.0 if name == "convnext_tiny" else images))
    ours = get_spec(name).normalization.apply(images) if name == "convnext_tiny" else images
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(ours)), expected, rtol=1e-4, atol=1e-4)
