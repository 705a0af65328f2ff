"""The fast torch convolution and batch normalisation give Keras' own outputs, gradients and moving statistics."""

import itertools

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from keras_medimg.models import torch_kernels

on_torch = pytest.mark.skipif(keras.backend.backend() != "torch", reason="the fast kernels are for the torch backend")


@pytest.fixture
def original():
    """Keras' own functions, with the fast ones installed for the test and left as they were afterwards."""
    was_installed = torch_kernels.installed()
    torch_kernels.install()
    yield dict(torch_kernels._ORIGINAL)
    if not was_installed:
        torch_kernels.uninstall()


def _grads(fn, *tensors):
    import torch

    leaves = [torch.tensor(t, requires_grad=True) for t in tensors]
    out = fn(*leaves)
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)  # a loss that weighs every output differently
    (out * weights).sum().backward()
    return out.detach().numpy(), [leaf.grad.numpy() for leaf in leaves]


CONV_CASES = [
    # (input size, kernel, stride, padding, dilation, depthwise)
    *itertools.product((9, 12), (1, 3, 4, 7), (1, 2), ("same", "valid"), (1,), (False,)),
    (13, 3, 1, "same", 2, False),
    (12, 3, 2, "same", 1, True),
    (11, 5, 1, "same", 1, True),
]


@on_torch
@pytest.mark.parametrize("size,kernel,stride,padding,dilation,depthwise", CONV_CASES)
def test_conv_matches_keras(original, rng, size, kernel, stride, padding, dilation, depthwise):
    channels = 4
    inputs = rng.standard_normal((2, size, size + 1, channels)).astype("float32")
    weights = rng.standard_normal((kernel, kernel, 1 if depthwise else channels, 8 if not depthwise else channels))
    weights = weights.astype("float32")

    def run(conv):
        return lambda x, w: conv(x, w, stride, padding, "channels_last", dilation)

    expected, expected_grads = _grads(run(original["conv"]), inputs, weights)
    got, got_grads = _grads(run(torch_kernels._conv), inputs, weights)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    for g, e in zip(got_grads, expected_grads):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-3)


@on_torch
def test_conv_layers_use_the_fast_path_and_channels_first_falls_back(original, rng, monkeypatch):
    calls = []
    monkeypatch.setitem(torch_kernels._ORIGINAL, "conv", lambda *a: calls.append(a[4]) or original["conv"](*a))
    inputs = rng.standard_normal((2, 8, 8, 3)).astype("float32")
    keras.layers.Conv2D(4, 3, padding="same")(inputs)
    keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(inputs)
    assert calls == []  # both went through the fast path
    keras.layers.Conv2D(4, 3, data_format="channels_first")(inputs.transpose(0, 3, 1, 2))
    keras.layers.Conv1D(4, 3)(inputs[:, 0])
    assert calls == ["channels_first", "channels_last"]


def _bn_pair(**config):
    """Two identically initialised BatchNormalization layers."""
    layers = [keras.layers.BatchNormalization(momentum=0.9, **config) for _ in range(2)]
    for layer in layers:
        layer.build((None, 5, 6, 3))
    rng = np.random.default_rng(3)
    values = [rng.uniform(0.5, 2.0, w.shape).astype("float32") for w in layers[0].weights]
    for layer in layers:
        layer.set_weights(values)
    return layers


@on_torch
@pytest.mark.parametrize("config", [{}, {"center": False}, {"scale": False}, {"epsilon": 1.001e-5}])
def test_batch_norm_training_matches_keras(original, rng, config):
    import torch

    fast, stock = _bn_pair(**config)
    inputs = (rng.standard_normal((4, 5, 6, 3)) * 3 + 2).astype("float32")
    results = []
    for layer, call in ((fast, fast.call), (stock, lambda x, training: original["batch_norm_call"](stock, x, training))):
        x = torch.tensor(inputs, requires_grad=True)
        out = call(x, training=True)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        grads = [x.grad.numpy()] + [w.value.grad.numpy() for w in layer.trainable_weights]
        results.append((out.detach().numpy(), grads, [w.numpy() for w in layer.non_trainable_weights]))
    (out_f, grads_f, stats_f), (out_s, grads_s, stats_s) = results
    np.testing.assert_allclose(out_f, out_s, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads_f, grads_s):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)
    for got, expected in zip(stats_f, stats_s):  # moving mean and variance, updated from the batch
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(stats_f[0], 1.0)  # the update did happen


@on_torch
def test_batch_norm_inference_and_half_precision_match_keras(original, rng):
    import torch

    fast, stock = _bn_pair()
    inputs = rng.standard_normal((2, 5, 6, 3)).astype("float32")
    for training in (False, None):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(fast(inputs, training=training)),
            keras.ops.convert_to_numpy(original["batch_norm_call"](stock, torch.tensor(inputs), training)),
            rtol=1e-5, atol=1e-5,
        )
    half = keras.layers.BatchNormalization(dtype="mixed_float16")
    half.build((None, 5, 6, 3))
    out = half(torch.tensor(inputs).half(), training=True)
    assert out.dtype == torch.float16
    assert half.moving_mean.dtype == "float32"


@on_torch
def test_batch_norm_unusual_configurations_fall_back(original, rng, monkeypatch):
    calls = []
    monkeypatch.setitem(torch_kernels._ORIGINAL, "batch_norm_call",
                        lambda layer, *a, **k: calls.append(layer.name) or original["batch_norm_call"](layer, *a, **k))
    inputs = rng.standard_normal((2, 3, 5, 6)).astype("float32")
    keras.layers.BatchNormalization(name="fast")(inputs, training=True)
    keras.layers.BatchNormalization(axis=1, name="channels_first")(inputs, training=True)
    keras.layers.BatchNormalization(name="rank3")(inputs[0], training=True)
    assert calls == ["channels_first", "rank3"]


@on_torch
def test_a_model_trains_the_same_with_and_without_fast_kernels(rng):
    inputs = rng.random((8, 16, 16, 3), dtype="float32")
    labels = np.arange(8) % 2

    def train() -> list:
        keras.utils.set_random_seed(0)
        x = keras.Input((16, 16, 3))
        # no bias before batch norm: its true gradient is zero, so Adam would amplify round-off into real steps
        y = keras.layers.Conv2D(6, 3, strides=2, padding="same", use_bias=False)(x)
        y = keras.layers.BatchNormalization()(y)
        y = keras.layers.ReLU()(y)
        y = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(y)
        y = keras.layers.GlobalAveragePooling2D()(keras.layers.BatchNormalization()(y))
        model = keras.Model(x, keras.layers.Dense(2, activation="softmax")(y))
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
        model.fit(inputs, labels, epochs=3, batch_size=4, shuffle=False, verbose=0)
        return [w.numpy() for w in model.weights]

    was_installed = torch_kernels.installed()
    torch_kernels.uninstall()
    stock = train()
    torch_kernels.install()
    try:
        fast = train()
    finally:
        if not was_installed:
            torch_kernels.uninstall()
    for f, s in zip(fast, stock):
        np.testing.assert_allclose(f, s, rtol=1e-3, atol=1e-4)


def test_install_is_a_no_op_off_torch_or_when_switched_off(monkeypatch):
    if keras.backend.backend() == "torch":
        monkeypatch.setenv("MEDIMG_TORCH_KERNELS", "0")
        was_installed = torch_kernels.installed()
        torch_kernels.uninstall()
        try:
            assert torch_kernels.install() is False
            assert not torch_kernels.installed()
        finally:
            monkeypatch.delenv("MEDIMG_TORCH_KERNELS")
            if was_installed:
                torch_kernels.install()
    else:
        call = keras.layers.BatchNormalization.call
        assert torch_kernels.install() is False
        assert keras.layers.BatchNormalization.call is call


def test_registry_models_get_the_fast_kernels_on_torch():
    from keras_medimg.models.backbones import build_backbone

    build_backbone("vgg16", input_shape=(32, 32, 3))
    assert torch_kernels.installed() == (keras.backend.backend() == "torch")


@on_torch
def test_code_traced_by_torch_compile_uses_keras_own_ops(original, rng, monkeypatch):
    # Inductor fails on the fast paths with dynamic shapes (DenseNet-121 with jit_compile=True), so traced code
    # must take Keras' own ops; torch.compile fuses those itself.
    import torch

    calls = []
    monkeypatch.setitem(torch_kernels._ORIGINAL, "conv", lambda *a: calls.append("conv") or original["conv"](*a))
    monkeypatch.setitem(torch_kernels._ORIGINAL, "batch_norm_call",
                        lambda layer, *a, **k: calls.append("bn") or original["batch_norm_call"](layer, *a, **k))
    conv = keras.layers.Conv2D(4, 3, padding="same")
    norm = keras.layers.BatchNormalization()
    inputs = torch.tensor(rng.standard_normal((2, 8, 8, 3)).astype("float32"))
    eager = norm(conv(inputs), training=False)
    assert calls == []
    compiled = torch.compile(lambda x: norm(conv(x), training=False), backend="eager")(inputs)
    assert "conv" in calls and "bn" in calls
    np.testing.assert_allclose(keras.ops.convert_to_numpy(compiled), keras.ops.convert_to_numpy(eager), rtol=1e-5, atol=1e-5)


def _train_dense(optimizer, *, fast: bool, epochs: int = 4) -> list:
    """Weights and optimizer variables after a few epochs of a small dense model, with or without fast kernels."""
    was_installed = torch_kernels.installed()
    torch_kernels.uninstall()
    if fast:
        torch_kernels.install()
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(3)])
        model.compile(optimizer=optimizer, loss="mse")
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(16, 6)).astype("float32"), rng.normal(size=(16, 3)).astype("float32")
        model.fit(x, y, epochs=epochs, batch_size=4, verbose=0, shuffle=False)
        return [w.numpy() for w in model.weights] + [v.numpy() for v in model.optimizer.variables]
    finally:
        torch_kernels.uninstall()
        if was_installed:
            torch_kernels.install()


ADAM_CASES = {
    "adam": lambda: keras.optimizers.Adam(0.01),
    # a large epsilon, so that adding it before or after the bias correction would show
    "adamw": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1, epsilon=1e-2),
    "accumulation": lambda: keras.optimizers.AdamW(0.01, gradient_accumulation_steps=2),
    "schedule": lambda: keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(0.05, 2, 0.5)),
}


@on_torch
@pytest.mark.parametrize("case", sorted(ADAM_CASES))
def test_adam_update_matches_keras(case, monkeypatch):
    stock = _train_dense(ADAM_CASES[case](), fast=False)
    fallbacks = []
    original = torch_kernels._adam_fallback
    monkeypatch.setattr(torch_kernels, "_adam_fallback", lambda *a: fallbacks.append(1) or original(*a))
    fast = _train_dense(ADAM_CASES[case](), fast=True)
    assert fallbacks == []  # every update went through torch's fused kernel
    assert len(fast) == len(stock)
    for f, s in zip(fast, stock):  # weights, iterations, moments
        np.testing.assert_allclose(f, s, rtol=1e-5, atol=1e-6)
    assert not np.allclose(fast[0], _train_dense(ADAM_CASES[case](), fast=True, epochs=1)[0])  # training moved


@on_torch
def test_adam_amsgrad_keeps_keras_update(monkeypatch):
    fallbacks = []
    original = torch_kernels._adam_fallback
    monkeypatch.setattr(torch_kernels, "_adam_fallback", lambda *a: fallbacks.append(1) or original(*a))
    stock = _train_dense(keras.optimizers.Adam(0.01, amsgrad=True), fast=False, epochs=1)
    fast = _train_dense(keras.optimizers.Adam(0.01, amsgrad=True), fast=True, epochs=1)
    assert len(fallbacks) == 4  # one per step
    for f, s in zip(fast, stock):
        np.testing.assert_allclose(f, s, rtol=1e-6, atol=1e-7)
