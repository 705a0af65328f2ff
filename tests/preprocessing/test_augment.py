"""Augmentations: seeded and deterministic, inside tf.data, boxes follow the pixels."""

import numpy as np
import pytest
import tensorflow as tf

from keras_medimg.errors import ConfigError
from keras_medimg.preprocessing.augment import Augment, GridAugment, augment

ALL = Augment(probability=1.0, rotation=45, zoom_min=0.5, zoom_max=2.0, hflip=True, brightness=0.1, contrast=0.3, blur=1.5, noise=0.05)


def _image(size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.random((size, size, 3)).astype(np.float32)


def _run(config: Augment, seed: int, size: int = 48) -> np.ndarray:
    dataset = tf.data.Dataset.from_tensors(_image(size)).repeat(4)
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    dataset = tf.data.Dataset.zip((dataset, seeds)).map(lambda x, s: augment(x, s, config), num_parallel_calls=4)
    return np.stack(list(dataset.as_numpy_iterator()))


def test_same_seed_same_result_and_different_elements_differ():
    first, again, other = _run(ALL, 3), _run(ALL, 3), _run(ALL, 4)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert not np.allclose(first[0], first[1])
    assert first.dtype == np.float32 and first.shape == (4, 48, 48, 3)
    assert first.min() >= 0.0 and first.max() <= 1.0


@pytest.mark.parametrize(
    "config",
    [Augment(probability=1, brightness=0.2), Augment(probability=1, contrast=0.5), Augment(probability=1, blur=2.0),
     Augment(probability=1, noise=0.1), Augment(probability=1, rotation=30), Augment(probability=1, zoom_min=0.5, zoom_max=2),
     GridAugment(probability=1, grid_distortion=0.3)],
)
def test_each_augmentation_changes_the_image(config):
    out = augment(_image(), tf.constant([1, 2]), config)
    assert out.shape == (48, 48, 3)
    assert not np.allclose(out.numpy(), _image())


def test_probability_zero_is_identity():
    config = Augment(probability=0.0, rotation=45, brightness=0.5, noise=0.2)
    np.testing.assert_array_equal(augment(_image(), tf.constant([5, 6]), config).numpy(), _image())
    assert not config.enabled and ALL.enabled


def test_boxes_follow_flip_rotation_and_zoom():
    image = np.zeros((64, 64, 1), np.float32)
    image[10:26, 8:20] = 1.0
    boxes = tf.constant([[8.0, 10.0, 20.0, 26.0]])
    config = Augment(probability=1.0, rotation=40, zoom_min=0.7, zoom_max=1.4, hflip=True)
    for seed in range(8):
        out, moved = augment(image, tf.constant([seed, 0]), config, boxes=boxes)
        ys, xs = np.nonzero(out.numpy()[..., 0] > 0.5)
        x1, y1, x2, y2 = moved.numpy()[0]
        # The moved box holds every pixel of the moved object (bilinear edges give up to a pixel).
        assert xs.min() >= x1 - 1 and xs.max() + 1 <= x2 + 1 and ys.min() >= y1 - 1 and ys.max() + 1 <= y2 + 1


def test_flip_alone_mirrors_boxes_exactly():
    image = np.zeros((8, 10, 1), np.float32)
    image[:, 1:3] = 1.0
    flipped = [augment(image, tf.constant([s, 1]), Augment(hflip=True), boxes=tf.constant([[1.0, 0.0, 3.0, 8.0]])) for s in range(6)]
    boxes = {tuple(b.numpy()[0]) for _, b in flipped}
    assert boxes == {(1.0, 0.0, 3.0, 8.0), (7.0, 0.0, 9.0, 8.0)}
    for out, box in flipped:
        x1, x2 = int(box.numpy()[0, 0]), int(box.numpy()[0, 2])
        assert out.numpy()[:, x1:x2].min() == 1.0


def test_config_from_yaml_values_is_checked():
    assert Augment.from_dict({"rotation": 15, "hflip": True}).rotation == 15
    with pytest.raises(ConfigError, match="rotaton"):
        Augment.from_dict({"rotaton": 15})
    with pytest.raises(ConfigError, match="zoom_min"):
        Augment(zoom_min=2.0, zoom_max=1.0)


def test_grid_distortion_moves_columns_and_rows_and_boxes_follow_exactly():
    # The study's grid distortion: cells resized along each axis, the border fixed, the object's box moved.
    image = np.zeros((64, 48, 1), np.float32)
    image[20:40, 10:30] = 1.0
    config = GridAugment(probability=1.0, grid_distortion=0.5, grid_steps=4)
    extents = set()
    for seed in range(6):
        out, moved = augment(image, tf.constant([seed, 3]), config, boxes=tf.constant([[10.0, 20.0, 30.0, 40.0]]))
        out = out.numpy()[..., 0]
        ys, xs = np.nonzero(out > 0.5)
        x1, y1, x2, y2 = moved.numpy()[0]
        # Separable and monotonic: the block stays a block, and the box edges land within a pixel of its edges.
        assert np.all(out[ys.min():ys.max() + 1, xs.min():xs.max() + 1] > 0.5)
        np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], [x1, y1, x2, y2], atol=1.0)
        extents.add((xs.min(), ys.min(), xs.max(), ys.max()))
    assert len(extents) > 3  # the distortion differs from seed to seed
    # Nothing comes in from outside the image: a constant image stays constant.
    flat = np.full((32, 32, 3), 0.7, np.float32)
    np.testing.assert_allclose(augment(flat, tf.constant([1, 2]), config).numpy(), flat, atol=1e-6)


def test_grid_distortion_leaves_the_other_augmentations_draws_alone():
    # Switching grid distortion on must not change what a seed gives every other augmentation: with no cell
    # resized (steps of 1 resize the whole side, which is then rescaled to fill the image) the result is unchanged.
    base = Augment(probability=1.0, brightness=0.2, noise=0.05, hflip=True)
    with_grid = GridAugment(probability=1.0, brightness=0.2, noise=0.05, hflip=True, grid_distortion=0.5, grid_steps=1)
    for seed in range(3):
        np.testing.assert_allclose(augment(_image(), tf.constant([seed, 9]), with_grid).numpy(),
                                   augment(_image(), tf.constant([seed, 9]), base).numpy(), atol=1e-5)


def test_grid_distortion_settings_are_checked():
    assert GridAugment.from_dict({"grid_distortion": 0.3, "grid_steps": 5}).enabled
    assert not GridAugment().enabled and not GridAugment(probability=0.0, grid_distortion=0.3).enabled
    with pytest.raises(ConfigError, match="grid_distortion"):
        GridAugment(grid_distortion=1.5)
    with pytest.raises(ConfigError, match="grid_steps"):
        GridAugment(grid_distortion=0.3, grid_steps=0)
    with pytest.raises(ConfigError, match="grid_steps"):  # a plain Augment has no grid
        Augment.from_dict({"grid_steps": 5})
