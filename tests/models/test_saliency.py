"""Grad-CAM puts its peak on the region that decides the label, on the current backend; overlays are RGB."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from keras_medimg.errors import ConfigError  # noqa: E402
from keras_medimg.models.backbones import get_spec  # noqa: E402
from keras_medimg.models.classifier import build_classifier  # noqa: E402
from keras_medimg.models.saliency import grad_cam, overlay  # noqa: E402

SIZE, SQUARE = 32, 8
CORNERS = ((4, 4), (20, 20))  # class 0: square near the top left, class 1: near the bottom right


def squares(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Dark noisy images with one bright square whose position decides the label.

    Global pooling forgets where things are, so channels 1 and 2 are the square's intensity times the row and
    column coordinate: a position the convolutions can read locally, present only where the square is.
    """
    rows, cols = np.meshgrid(np.linspace(0, 1, SIZE), np.linspace(0, 1, SIZE), indexing="ij")
    labels = rng.integers(0, 2, count)
    images = np.zeros((count, SIZE, SIZE, 3), "float32")
    images[..., 0] = rng.normal(0.1, 0.03, (count, SIZE, SIZE))
    corners = []
    for image, label in zip(images, labels):
        top, left = (np.array(CORNERS[label]) + rng.integers(-2, 3, 2)).tolist()
        image[top:top + SQUARE, left:left + SQUARE, 0] = 1.0
        corners.append((top, left))
    images[..., 1] = images[..., 0] * rows
    images[..., 2] = images[..., 0] * cols
    return images, labels, corners


def small_cnn() -> keras.Model:
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool_1")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_2")(x)
    return keras.Model(inputs, x, name="small_cnn")


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    model = build_classifier(small_cnn(), 2)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    images, labels, _ = squares(192, rng)
    model.fit(images, labels, epochs=10, batch_size=32, verbose=0)
    return model, squares(16, rng)


def test_grad_cam_peak_lies_on_the_deciding_square(trained):
    model, (images, labels, corners) = trained
    assert model.evaluate(images, labels, verbose=0)[1] == 1.0
    heatmaps = grad_cam(model, images)
    assert heatmaps.shape == (16, SIZE, SIZE) and heatmaps.dtype == np.float32
    assert heatmaps.min() >= 0.0 and np.allclose(heatmaps.max(axis=(1, 2)), 1.0)
    for heatmap, (top, left) in zip(heatmaps, corners):
        row, col = np.unravel_index(heatmap.argmax(), heatmap.shape)
        assert top <= row < top + SQUARE and left <= col < left + SQUARE


def test_grad_cam_at_a_named_inner_layer_and_for_a_given_class(trained):
    model, (images, labels, corners) = trained
    heatmaps = grad_cam(model, images[:4], class_index=labels[:4].tolist(), layer="conv_1")
    assert heatmaps.shape == (4, SIZE, SIZE)
    for heatmap, (top, left) in zip(heatmaps, corners[:4]):
        inside = heatmap[top:top + SQUARE, left:left + SQUARE].mean()
        assert inside > heatmap.mean()


def test_grad_cam_errors_name_the_problem(trained):
    model, (images, _, _) = trained
    with pytest.raises(ConfigError, match="Did you mean 'conv_1'"):
        grad_cam(model, images[:1], layer="conv1")
    with pytest.raises(ConfigError, match="outside the model's 2 classes"):
        grad_cam(model, images[:1], class_index=2)


def test_grad_cam_on_a_registry_backbone_at_its_feature_layer(rng):
    model = build_classifier("vgg16", 2, input_shape=(32, 32, 3))
    heatmaps = grad_cam(model, rng.random((2, 32, 32, 3), dtype="float32"), layer=get_spec("vgg16").feature_layer)
    assert heatmaps.shape == (2, 32, 32) and np.isfinite(heatmaps).all()
    assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0


def test_overlay_is_uint8_rgb_at_image_size():
    grey = np.linspace(0, 1, 48 * 40, dtype="float32").reshape(48, 40)
    heatmap = np.zeros((12, 10), "float32")
    heatmap[0, 0] = 1.0
    blended = overlay(grey, heatmap, alpha=0.5)
    assert blended.shape == (48, 40, 3) and blended.dtype == np.uint8
    assert overlay(grey, heatmap, alpha=0.0)[..., 0].tolist() == (grey * 255).round().astype(np.uint8).tolist()
    assert blended[0, 0, 0] > blended[0, 0, 2]  # jet's hot end is red
