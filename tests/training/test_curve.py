"""training.curve: label counts, stratified subsets, classifiers reset between folds."""

import keras
import numpy as np
import pytest

from keras_medimg.datasets.records import Sample
from keras_medimg.errors import ConfigError
from keras_medimg.training.curve import CurveSettings, ResettableClassifier, parse_train_samples, subsample


def test_label_counts_and_fractions():
    assert parse_train_samples(["40", "0.5", "all", "1000"], 100) == [("40", 40), ("0.5", 50), ("all", 100)]
    # The study's counts on a smaller set: every count past it is the whole set, trained once.
    assert parse_train_samples(["1000", "3000", "5000", "10000"], 4000) == [("1000", 1000), ("3000", 3000),
                                                                          ("5000", 4000)]
    assert parse_train_samples(["0.5", "50"], 100) == [("0.5", 50)]
    assert parse_train_samples([], 7) == [("all", 7)]
    with pytest.raises(ConfigError, match="not a count"):
        parse_train_samples(["many"], 10)
    with pytest.raises(ConfigError, match="at least 2"):
        parse_train_samples(["1"], 10)


def test_subsample_is_stratified_seeded_and_sized():
    samples = [Sample(id=str(i), path=f"{i}.png", label="a" if i < 80 else "b") for i in range(100)]
    subset = subsample(samples, 20, seed=3)
    assert len(subset) == 20
    assert sum(s.label == "b" for s in subset) == 4  # 20% of the set, 20% of the subset
    assert [s.id for s in subsample(samples, 20, seed=3)] == [s.id for s in subset]
    assert [s.id for s in subsample(samples, 20, seed=4)] != [s.id for s in subset]
    assert subsample(samples, 500, seed=0) == samples


def test_reset_restores_the_starting_weights_and_optimizer_after_a_fit():
    inputs = keras.Input((8, 8, 3))
    backbone = keras.Model(inputs, keras.layers.Conv2D(4, 3, padding="same")(inputs))
    trainer = ResettableClassifier(backbone, 3, CurveSettings(image_size=8, learning_rate=0.05))
    start = [w.copy() for w in trainer.model.get_weights()]
    x = np.random.default_rng(0).uniform(size=(12, 8, 8, 3)).astype("float32")
    y = np.arange(12) % 3
    trainer.model.fit(x, y, epochs=2, verbose=0)
    assert any(not np.allclose(a, b) for a, b in zip(start, trainer.model.get_weights()))
    assert int(keras.ops.convert_to_numpy(trainer.model.optimizer.iterations)) > 0
    trainer.reset()
    assert all(np.array_equal(a, b) for a, b in zip(start, trainer.model.get_weights()))
    assert int(keras.ops.convert_to_numpy(trainer.model.optimizer.iterations)) == 0


def test_a_head_saturated_on_the_wrong_class_still_learns():
    # Regression: under torch (and JAX) the k-fold loop stayed at one class. It trained the softmax output with
    # Keras' cross-entropy on probabilities, which there clips them to [1e-7, 1 - 1e-7]: the clip has no gradient,
    # so after one large step saturated the head no sample moved it again (loss stuck at 2/3 * -log(1e-7) = 10.75).
    # TensorFlow hid it by finding the logits behind the softmax. Here every image starts at class 0 with
    # probability 1 - 2e-9; the true class of the others is far below the clip.
    inputs = keras.Input((8, 8, 3))
    backbone = keras.Model(inputs, keras.layers.Conv2D(4, 3, padding="same")(inputs))
    trainer = ResettableClassifier(backbone, 3, CurveSettings(image_size=8, learning_rate=0.1, weight_decay=0.0))
    trainer.classifier.get_layer("predictions").bias.assign([20.0, 0.0, 0.0])
    y = np.arange(12) % 3
    x = np.zeros((12, 8, 8, 3), "float32")
    x[np.arange(12), :, :, y] = 1.0  # class k: channel k lit
    assert trainer.classifier.predict(x, verbose=0)[np.arange(12), y][y > 0].max() < 1e-7
    trainer.model.fit(x, y, epochs=8, batch_size=4, verbose=0, shuffle=False)
    probs = trainer.classifier.predict(x, verbose=0)
    np.testing.assert_array_equal(probs.argmax(axis=1), y)
    # The softmax classifier and the trained logits model share their variables.
    np.testing.assert_allclose(probs, keras.ops.convert_to_numpy(keras.ops.softmax(trainer.model(x))), atol=1e-5)


def test_the_curve_is_reproducible_run_to_run(tmp_path):
    # Regression: the fold datasets used an unordered parallel decode, so batches (and their augmentation seeds)
    # came in thread order and the same command gave 0.461 and 0.447 macro F1. They are ordered now.
    from keras_medimg.datasets.records import Skipped
    from keras_medimg.io.images import write_image
    from keras_medimg.preprocessing.augment import Augment
    from keras_medimg.training.curve import _fold_data, label_count_curve

    rng = np.random.default_rng(0)
    samples = []
    for i in range(24):
        pixels = rng.uniform(0.0, 1.0, (16, 16)).astype(np.float32)
        label = "bright" if i % 2 else "dark"
        pixels[4:12, 4:12] = 1.0 if label == "bright" else 0.0
        samples.append(Sample(id=f"{i}", path=write_image(tmp_path / f"{i}.png", pixels, bits=16), label=label,
                              group=f"p{i // 2}"))

    def backbone():
        inputs = keras.Input((16, 16, 3))
        return keras.Model(inputs, keras.layers.Conv2D(4, 3, activation="relu")(inputs))

    settings = CurveSettings(image_size=16, folds=2, epochs=2, batch_size=4, augment=Augment(hflip=True, noise=0.05))
    assert _fold_data(samples, ["dark", "bright"], settings, skipped=Skipped(), seed=0).options().deterministic
    runs = [label_count_curve(samples, ["dark", "bright"], {"none": backbone}, ["all"], settings, Skipped())
            for _ in range(2)]
    assert runs[0][0]["fold_macro_f1"] == runs[1][0]["fold_macro_f1"]
    assert runs[0][0]["confusion_matrix"] == runs[1][0]["confusion_matrix"]


def test_compare_at_smallest_reads_only_the_smallest_count_and_the_larger_std():
    from keras_medimg.training.curve import compare_at_smallest

    def row(init, images, mean, std):
        return {"init": init, "train_images": images, "macro_f1_mean": mean, "macro_f1_std": std}

    rows = [row("vlm", 24, 0.50, 0.02), row("none", 24, 0.44, 0.05), row("imagenet", 24, 0.46, 0.03),
            row("vlm", 144, 0.10, 0.0), row("none", 144, 0.90, 0.0)]  # a larger count never decides
    lines = compare_at_smallest(rows, "vlm", label="VLM").splitlines()
    assert lines == [
        "At 24 labels, VLM init beats none init by more than the fold std: 0.500 vs 0.440 (gap +0.060, std 0.050).",
        "At 24 labels, VLM init beats imagenet init by more than the fold std: 0.500 vs 0.460 (gap +0.040, std 0.030).",
    ]
    # the other row's larger std counts: a gap of 0.06 under a std of 0.07 is not enough
    assert "does not beat none" in compare_at_smallest([row("vlm", 24, 0.50, 0.01), row("none", 24, 0.44, 0.07)], "vlm")
    assert compare_at_smallest([row("none", 24, 0.4, 0.1)], "vlm") == "" and compare_at_smallest([], "vlm") == ""
