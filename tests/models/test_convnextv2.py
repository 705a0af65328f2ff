"""ConvNeXt V2: published parameter counts, GRN and drop path arithmetic, round trip, training, torch checkpoints."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from keras_medimg.errors import InvalidInputError  # noqa: E402
from keras_medimg.models.convnextv2 import (  # noqa: E402
    ConvNeXtV2Backbone,
    DropPath,
    GlobalResponseNormalization,
    convnextv2,
    load_torch_checkpoint,
)

TINY = {"depths": (1, 1, 2, 1), "dims": (8, 16, 24, 32)}

# Table of the ConvNeXt V2 paper / official repository (ImageNet-1k classifiers), in millions.
PUBLISHED_PARAMS = [
    ("atto", 3.7, 1),
    ("femto", 5.2, 1),
    ("pico", 9.1, 1),
    ("nano", 15.6, 1),
    ("tiny", 28.6, 1),
    ("base", 89, 0),
]
# Building the larger variants takes 5-30 s each on a shared CPU; the default suite keeps atto and tiny.
FAST_VARIANTS = {"atto", "tiny"}


def imagenet_classifier(variant: str) -> keras.Model:
    """The paper's ImageNet-1k classifier: backbone -> global average pool -> LayerNorm -> Dense(1000)."""
    backbone = convnextv2(variant, image_shape=(32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone.output)
    x = keras.layers.LayerNormalization(epsilon=1e-6)(x)
    return keras.Model(backbone.input, keras.layers.Dense(1000)(x))


@pytest.mark.parametrize(
    "variant,millions,digits",
    [pytest.param(*row, marks=() if row[0] in FAST_VARIANTS else pytest.mark.slow) for row in PUBLISHED_PARAMS],
)
def test_parameter_count_matches_the_paper(variant, millions, digits):
    assert round(imagenet_classifier(variant).count_params() / 1e6, digits) == millions


def test_tiny_backbone_shape_round_trip_and_training(rng, check_round_trip, check_training_step):
    backbone = ConvNeXtV2Backbone(**TINY, drop_path_rate=0.2, image_shape=(32, 32, 1), name="tiny_v2")
    images = rng.random((2, 32, 32, 1), dtype="float32")
    assert tuple(backbone(images).shape) == (2, 1, 1, 32)
    restored = ConvNeXtV2Backbone.from_config(backbone.get_config())
    assert restored.get_config() == backbone.get_config()
    check_round_trip(backbone, images)

    x = keras.layers.GlobalAveragePooling2D()(backbone.output)
    model = keras.Model(backbone.input, keras.layers.Dense(3, activation="softmax")(x))
    check_training_step(model, images, np.array([0, 2]), "sparse_categorical_crossentropy")


def test_grn_matches_the_paper_formula(rng):
    x = rng.normal(size=(2, 5, 4, 6)).astype("float32")
    layer = GlobalResponseNormalization()
    layer.build(x.shape)
    gamma, beta = rng.normal(size=6).astype("float32"), rng.normal(size=6).astype("float32")
    layer.set_weights([gamma, beta])
    norms = np.sqrt((x**2).sum(axis=(1, 2), keepdims=True))
    expected = gamma * (x * norms / (norms.mean(axis=-1, keepdims=True) + 1e-6)) + beta + x
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-5)


def test_drop_path_drops_whole_samples_in_training_only():
    x = np.ones((64, 3, 3, 2), "float32")
    layer = DropPath(0.5, seed=1)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    out = keras.ops.convert_to_numpy(layer(x, training=True))
    per_sample = out.reshape(64, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert (per_sample.min(axis=1) == per_sample.max(axis=1)).all()  # a sample is dropped whole or kept whole
    assert 10 < (per_sample[:, 0] == 0).sum() < 54


def _torch_reference(depths, dims):
    """The official ConvNeXt V2 (facebookresearch/ConvNeXt-V2, models/convnextv2.py), module names kept."""
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional

    class LayerNorm2d(nn.Module):  # the official channels_first LayerNorm
        def __init__(self, dim):
            super().__init__()
            self.weight, self.bias = nn.Parameter(torch.randn(dim)), nn.Parameter(torch.randn(dim))

        def forward(self, x):
            u = x.mean(1, keepdim=True)
            s = (x - u).pow(2).mean(1, keepdim=True)
            x = (x - u) / torch.sqrt(s + 1e-6)
            return self.weight[:, None, None] * x + self.bias[:, None, None]

    class GRN(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.gamma, self.beta = nn.Parameter(torch.randn(1, 1, 1, dim)), nn.Parameter(torch.randn(1, 1, 1, dim))

        def forward(self, x):
            gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
            nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
            return self.gamma * (x * nx) + self.beta + x

    class Block(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.pwconv1, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
            self.grn = GRN(4 * dim)

        def forward(self, x):
            y = self.dwconv(x).permute(0, 2, 3, 1)
            y = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(y)))))
            return x + y.permute(0, 3, 1, 2)

    class ConvNeXtV2(nn.Module):
        def __init__(self):
            super().__init__()
            self.downsample_layers = nn.ModuleList(
                [nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0]))]
                + [nn.Sequential(LayerNorm2d(dims[i]), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2))
                   for i in range(len(dims) - 1)]
            )
            self.stages = nn.ModuleList([nn.Sequential(*[Block(d) for _ in range(n)]) for n, d in zip(depths, dims)])

        def forward(self, x):
            for downsample, stage in zip(self.downsample_layers, self.stages):
                x = stage(downsample(x))
            return x

    torch.manual_seed(0)
    return ConvNeXtV2().eval()


def test_official_torch_checkpoint_gives_the_same_features(tmp_path, rng):
    import torch

    reference = _torch_reference(TINY["depths"], TINY["dims"])
    path = tmp_path / "convnextv2_tiny_test.pt"
    torch.save({"model": reference.state_dict()}, path)
    backbone = ConvNeXtV2Backbone(**TINY, image_shape=(64, 64, 3))
    load_torch_checkpoint(backbone, path)

    images = rng.random((2, 64, 64, 3), dtype="float32")
    with torch.no_grad():
        expected = reference(torch.from_numpy(images).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(backbone(images)), expected, rtol=1e-4, atol=1e-4)


def test_checkpoint_of_another_variant_is_refused(tmp_path):
    import torch

    path = tmp_path / "other.pt"
    torch.save({"model": _torch_reference((1, 1, 1, 1), (8, 16, 24, 32)).state_dict()}, path)
    with pytest.raises(InvalidInputError, match="other.pt"):
        load_torch_checkpoint(ConvNeXtV2Backbone(**TINY, image_shape=(32, 32, 3)), path)


def test_a_mixed_precision_backbone_reloads_mixed_and_a_float32_one_float32(tmp_path):
    """Inner layers take the global policy when made: `from_config` must build under the saved one."""
    import keras

    from keras_medimg.models.classifier import load_model

    previous = keras.config.dtype_policy()
    try:
        for saved, loaded_under in (("mixed_float16", "float32"), ("float32", "mixed_float16")):
            keras.config.set_dtype_policy(saved)
            model = convnextv2("atto", image_shape=(32, 32, 3))
            path = tmp_path / f"{saved}.keras"
            model.save(path)
            keras.config.set_dtype_policy(loaded_under)
            back = load_model(path)
            assert {layer.dtype_policy.name for layer in back._flatten_layers() if layer.weights} == {saved}
            assert keras.config.dtype_policy().name == loaded_under  # the caller's policy is left as it was
    finally:
        keras.config.set_dtype_policy(previous)
