"""make_dataset: decoding every format, labels, bad files, determinism, caches, and model.fit on this backend."""

import shutil
from pathlib import Path

import keras
import numpy as np
import pydicom.data
import pytest

from keras_medimg.datasets.pipeline import check_image_file, encode_labels, load_images_numpy, make_dataset, predict_samples
from keras_medimg.training.trainer import balanced_class_weight
from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.io.images import write_image
from keras_medimg.preprocessing.augment import Augment
from keras_medimg.preprocessing.normalize import CAFFE, IMAGENET, Normalization

CLASSES = ["benign", "malignant"]


@pytest.fixture
def samples(tmp_path, make_image) -> list[Sample]:
    """Eight images in every format the pipeline decodes natively, grey and colour."""
    formats = [(".png", 16, 1), (".png", 8, 3), (".jpg", 8, 1), (".jpg", 8, 3), (".tif", 16, 1), (".png", 16, 3), (".jpg", 8, 1), (".png", 8, 1)]
    result = []
    for i, (suffix, bits, channels) in enumerate(formats):
        path = make_image(tmp_path / f"img{i}{suffix}", (24 + 4 * i, 30), bits=bits, channels=channels, seed=i)
        result.append(Sample(id=f"img{i}", path=path, label=CLASSES[i % 2], labels=["C1"] if i % 2 else ["C1", "C2", "C9"]))
    return result


def _batches(dataset):
    """Every batch as a tuple of arrays: (images, labels), or (images,) for a dataset without labels."""
    return [batch if isinstance(batch, tuple) else (batch,) for batch in dataset.as_numpy_iterator()]


def test_batches_have_the_model_input_shape_and_int_labels(samples):
    batches = _batches(make_dataset(samples, image_size=16, training=False, batch_size=3))
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    assert [len(b[0]) for b in batches] == [3, 3, 2]
    assert images.shape == (8, 16, 16, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.std() > 0.05
    assert labels.tolist() == [0, 1] * 4 and labels.dtype == np.int32
    # Grey files are copied to three equal channels.
    np.testing.assert_array_equal(images[0, ..., 0], images[0, ..., 2])


def test_sixteen_bit_png_keeps_its_precision(tmp_path):
    value = 40001
    path = write_image(tmp_path / "flat.png", np.full((8, 8), value, np.uint16), bits=16)
    (image,) = _batches(make_dataset([Sample("flat", path)], image_size=8, training=False, batch_size=1, label_mode=None, channels=1))
    np.testing.assert_allclose(image[0], value / 65535, rtol=1e-6)


def test_multi_hot_labels_and_images_only(samples):
    dataset = make_dataset(samples, image_size=8, training=False, batch_size=8, label_mode="multi_hot", class_names=["C1", "C2"])
    ((_, targets),) = _batches(dataset)
    assert targets.dtype == np.float32 and targets[:2].tolist() == [[1, 1], [1, 0]]  # C9 is outside the vocabulary
    (only,) = _batches(make_dataset(samples, image_size=8, training=False, batch_size=8, label_mode=None))
    assert only[0].shape == (8, 8, 8, 3)


@pytest.mark.parametrize("normalization", [IMAGENET, CAFFE])  # CAFFE also reverses colour images to BGR
def test_normalization_is_applied_last(samples, normalization):
    plain = _batches(make_dataset(samples, image_size=8, training=False, batch_size=8))[0][0]
    normed = _batches(make_dataset(samples, image_size=8, training=False, batch_size=8, normalization=normalization))[0][0]
    np.testing.assert_allclose(normed, normalization.apply(plain), rtol=1e-5, atol=1e-4)
    with pytest.raises(Exception, match="channel"):
        make_dataset(samples, image_size=8, training=False, batch_size=8, channels=1, normalization=IMAGENET)


def test_minmax_normalization_gives_an_8_bit_print_and_a_12_bit_detector_image_the_same_input(tmp_path):
    # The same picture stored two ways: an atlas print (8-bit, 20..240) and 12-bit detector values in a 16-bit PNG
    # (0..4095 of 65535). Scaled by their dtype they reach the model at different levels; per-image min-max
    # (MAM-CLIP's preprocessing) gives both the same input, and it is applied before augmentation.
    picture = np.random.default_rng(0).random((16, 16))
    printed = write_image(tmp_path / "print.png", np.round(20 + 220 * picture).astype(np.uint8), bits=8)
    detector = write_image(tmp_path / "detector.png", np.round(4095 * picture).astype(np.uint16), bits=16)
    samples = [Sample("print", printed), Sample("detector", detector)]
    minmax = Normalization(mean=IMAGENET.mean, std=IMAGENET.std, minmax=True)
    (plain,) = _batches(make_dataset(samples, image_size=16, training=False, batch_size=2, label_mode=None, normalization=IMAGENET))
    assert np.abs(plain[0][0] - plain[0][1]).max() > 1.0  # without min-max they differ by much more than rounding
    (same,) = _batches(make_dataset(samples, image_size=16, training=False, batch_size=2, label_mode=None, normalization=minmax))
    np.testing.assert_allclose(same[0][0], same[0][1], atol=0.03)  # 8-bit rounding only
    np.testing.assert_allclose(same[0][0][..., 0].min(), (0 - IMAGENET.mean[0]) / IMAGENET.std[0], atol=1e-5)
    np.testing.assert_allclose(same[0][0][..., 0].max(), (1 - IMAGENET.mean[0]) / IMAGENET.std[0], atol=1e-5)
    # Applied when decoded, before augmentation: a brightness shift survives it.
    bright = Augment(probability=1.0, brightness=0.3)
    (shifted,) = _batches(make_dataset(samples[:1], image_size=16, training=True, batch_size=1, label_mode=None,
                                       normalization=Normalization(minmax=True), augment=bright, seed=3))
    assert abs(float(shifted[0].mean()) - float(picture.mean())) > 0.02
    # Normalization.apply does the same on arrays, and a flat image becomes zeros instead of NaN.
    assert np.all(Normalization(minmax=True).apply(np.full((1, 4, 4, 1), 0.7, np.float32)) == 0)


@pytest.mark.parametrize("normalization", [None, IMAGENET, CAFFE])
def test_grey_pngs_stay_one_channel_until_batched_with_the_same_result(samples, normalization):
    grey = [s for s in samples if s.path.suffix == ".png" and check_image_file(s.path).grey]
    assert len(grey) == 2
    (batch,) = _batches(make_dataset(grey, image_size=8, training=False, batch_size=8, channels=1, label_mode=None))
    expected = np.repeat(batch[0], 3, axis=-1)
    if normalization is not None:
        expected = normalization.apply(expected)
    (rgb,) = _batches(make_dataset(grey, image_size=8, training=False, batch_size=8, label_mode=None, normalization=normalization))
    np.testing.assert_allclose(rgb[0], expected, rtol=1e-5, atol=1e-4)


def test_bad_files_are_skipped_and_listed_or_stop_a_strict_run(samples, tmp_path):
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(samples[0].path.read_bytes()[:100])
    (tmp_path / "notes.png").write_text("not an image")
    bad = [Sample("t", truncated, label="benign"), Sample("n", tmp_path / "notes.png", label="benign"), Sample("m", tmp_path / "missing.jpg", label="benign")]
    skipped = Skipped()
    batches = _batches(make_dataset(samples + bad, image_size=8, training=False, batch_size=16, skipped=skipped))
    assert len(batches[0][0]) == 8
    assert [Path(s.path).name for s in skipped] == ["truncated.png", "notes.png", "missing.jpg"]
    assert "truncated" in skipped.rows()[0]["reason"] and "not a PNG" in skipped.rows()[1]["reason"] and "does not exist" in skipped.rows()[2]["reason"]
    with pytest.raises(InvalidInputError, match="truncated.png.*--strict"):
        make_dataset(samples + bad, image_size=8, training=False, batch_size=4, strict=True)


def _corrupt_inside(path: Path, out: Path) -> Path:
    """A copy of an image whose start and end are intact but whose compressed data in the middle is garbage."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle - 40 : middle + 40] = bytes(range(80))
    out.write_bytes(bytes(data))
    return out


def test_files_corrupt_inside_are_listed_when_decoding_fails_or_stop_a_strict_run(samples, tmp_path):
    # (libjpeg decodes most damaged JPEG data into a damaged picture without an error; broken zlib data in a
    # PNG always fails, so a PNG is the file that must be caught.)
    bad = Sample("png", _corrupt_inside(samples[0].path, tmp_path / "inside.png"), label="benign")
    assert check_image_file(bad.path).decoder is not None  # the cheap check before the pipeline cannot see it
    for deterministic in (False, True):
        skipped = Skipped()
        dataset = make_dataset([*samples[:4], bad, *samples[4:]], image_size=8, training=False, batch_size=16,
                               skipped=skipped, deterministic=deterministic, label_mode=None)
        (images,) = _batches(dataset)[0]
        assert len(images) == 8  # every good image arrives, in order, and the bad one does not
        reference = _batches(make_dataset(samples, image_size=8, training=False, batch_size=16, label_mode=None))[0][0]
        np.testing.assert_array_equal(images, reference)
        assert [Path(s.path).name for s in skipped] == ["inside.png"]
        assert "corrupt" in skipped.rows()[0]["reason"]
    with pytest.raises(Exception, match="inside.png.*--strict"):
        _batches(make_dataset([*samples, bad], image_size=8, training=False, batch_size=16, strict=True))


def test_unknown_label_names_the_file(samples):
    samples[3].label = "cyst"
    with pytest.raises(InvalidInputError, match="img3.jpg.*'cyst'"):
        make_dataset(samples, image_size=8, training=True, batch_size=4, class_names=CLASSES)


def test_dicom_goes_through_the_numpy_bridge_and_broken_ones_are_recorded(tmp_path):
    source = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    good = shutil.copy(source, tmp_path / "ct.dcm")
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(source.read_bytes()[:1000])  # valid header, pixel data cut off
    skipped = Skipped()
    dataset = make_dataset([Sample("ct", good), Sample("broken", broken)], image_size=16, training=False, batch_size=2, label_mode=None, skipped=skipped)
    (images,) = _batches(dataset)
    assert images[0].shape == (1, 16, 16, 3) and 0 <= images[0].min() and images[0].max() <= 1 and images[0].std() > 0
    assert [Path(s.path).name for s in skipped] == ["broken.dcm"]
    _batches(dataset)
    assert len(skipped) == 1  # a second epoch does not list it again


AUGMENT = Augment(probability=0.8, rotation=30, zoom_min=0.8, zoom_max=1.25, hflip=True, brightness=0.1, noise=0.05)


def test_deterministic_mode_repeats_batches_and_epochs_differ(samples):
    def build():
        return make_dataset(samples, image_size=16, training=True, batch_size=4, augment=AUGMENT, seed=7, deterministic=True)

    first, second = build(), build()
    epoch1 = _batches(first)
    for (x1, y1), (x2, y2) in zip(epoch1, _batches(second)):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    epoch2 = _batches(first)
    assert not np.allclose(epoch1[0][0], epoch2[0][0])


def test_caches_replay_decoded_images_and_keep_augmenting(samples, tmp_path):
    folder = tmp_path / "cache"
    plain = _batches(make_dataset(samples, image_size=16, training=False, batch_size=8))
    cached = make_dataset(samples, image_size=16, training=False, batch_size=8, cache=folder)
    for _ in range(2):
        np.testing.assert_array_equal(_batches(cached)[0][0], plain[0][0])
    assert any(folder.iterdir())
    in_memory = make_dataset(samples, image_size=16, training=True, batch_size=8, augment=AUGMENT, cache="memory", seed=1)
    one, two = _batches(in_memory), _batches(in_memory)
    assert sorted(one[0][1].tolist()) == sorted(two[0][1].tolist())
    assert not np.allclose(np.sort(one[0][0].ravel()), np.sort(two[0][0].ravel()))


def test_letterbox_and_median(tmp_path):
    path = write_image(tmp_path / "wide.png", np.ones((10, 40), np.float32), bits=16)
    kwargs = dict(image_size=20, training=False, batch_size=1, label_mode=None, channels=1)
    (letterboxed,) = _batches(make_dataset([Sample("w", path)], resize="letterbox", **kwargs))
    rows = letterboxed[0][0, :, :, 0].mean(axis=1)
    assert rows[0] == 0 and rows[-1] == 0 and rows[10] > 0.9
    speckled = np.ones((20, 20), np.float32)
    speckled[5, 12] = speckled[0, 0] = 0.0  # dark specks the median removes, also at the border
    path = write_image(tmp_path / "speckled.png", speckled, bits=16)
    (denoised,) = _batches(make_dataset([Sample("s", path)], denoise_median=3, **kwargs))
    assert denoised[0].min() == 1.0


def test_load_images_numpy_keeps_sample_order(samples, tmp_path):
    bad = Sample("bad", tmp_path / "missing.png")
    skipped = Skipped()
    images, kept = load_images_numpy([samples[2], bad, samples[0]], image_size=8, batch_size=1, skipped=skipped)
    assert images.shape == (2, 8, 8, 3) and [s.id for s in kept] == ["img2", "img0"] and len(skipped) == 1


def test_class_weights_balance_the_classes(samples):
    chosen = samples[:3] + [samples[4]]
    weights = balanced_class_weight(encode_labels(chosen, "int", CLASSES + ["normal"]), len(CLASSES) + 1)
    assert weights == {0: 4 / (2 * 3), 1: 4 / (2 * 1), 2: 1.0}


def test_check_image_file_reads_only_the_ends(samples, tmp_path):
    assert check_image_file(samples[0].path) == (0, None, True)  # a grey 16-bit PNG
    assert check_image_file(samples[2].path) == (1, None, False)
    assert check_image_file(samples[1].path).grey is False  # an RGB PNG
    assert check_image_file(tmp_path / "nothing.png")[0] is None


def test_a_tiny_model_trains_from_the_pipeline(samples):
    dataset = make_dataset(samples, image_size=16, training=True, batch_size=4, augment=AUGMENT, normalization=Normalization())
    model = keras.Sequential(
        [keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="softmax")]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    history = model.fit(dataset, epochs=2, verbose=0, class_weight=balanced_class_weight(encode_labels(samples, "int", CLASSES), len(CLASSES)))
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    multi = make_dataset(samples, image_size=16, training=True, batch_size=4, label_mode="multi_hot", class_names=["C1", "C2", "C9"])
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    assert np.isfinite(model.fit(multi, epochs=1, verbose=0).history["loss"]).all()


@pytest.mark.parametrize("size", [(512, 512), (300, 410), (150, 120)])  # shrinking, mixed, enlarging
def test_numpy_png_decoding_matches_tensorflows_decode_and_resize(tmp_path, size):
    import cv2
    import tensorflow as tf

    rng = np.random.default_rng(0)
    pixels = (rng.random(size) * 65535).astype(np.uint16)
    up = write_image(tmp_path / "up.png", pixels, bits=16)  # "up" rows: the fast decoder
    paeth = tmp_path / "paeth.png"  # libpng's own row filters: the OpenCV fallback
    cv2.imwrite(str(paeth), pixels, [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_PAETH])
    ((batch,),) = _batches(make_dataset([Sample("up", up), Sample("paeth", paeth)], image_size=224, training=False,
                                     batch_size=2, channels=1, label_mode=None))
    np.testing.assert_array_equal(batch[0], batch[1])
    method = "area" if max(size) > 224 else "bilinear"
    expected = tf.image.resize(pixels[..., None].astype(np.float32) / 65535, [224, 224], method=method).numpy()
    np.testing.assert_allclose(batch[0], expected, atol=1e-4)


def test_jpegs_tensorflow_cannot_decode_are_named_or_stop_a_strict_run(samples, tmp_path):
    # JPEGs are decoded by TensorFlow, whose errors tf.data can only drop; the arrivals tracker names the file.
    jpeg = next(s for s in samples if s.path.suffix == ".jpg")
    data = jpeg.path.read_bytes()
    bad = tmp_path / "garbled.jpg"
    bad.write_bytes(data[:3] + bytes(range(200)) + data[-2:])  # intact start and end markers, no JPEG inside
    assert check_image_file(bad).decoder is not None
    skipped = Skipped()
    (images,) = _batches(make_dataset([*samples, Sample("g", bad)], image_size=8, training=False, batch_size=16,
                                      skipped=skipped, label_mode=None))[0]
    assert len(images) == 8
    assert [Path(s.path).name for s in skipped] == ["garbled.jpg"] and "corrupt" in skipped.rows()[0]["reason"]
    with pytest.raises(Exception, match="garbled.jpg.*--strict"):
        _batches(make_dataset([*samples, Sample("g", bad)], image_size=8, training=False, batch_size=16, label_mode=None, strict=True))


def _flat_pngs(tmp_path, count):
    """PNGs of constant grey levels 0.1, 0.2, ...: a model that averages pixels returns each image's level."""
    return [Sample(f"flat{i}", write_image(tmp_path / f"flat{i}.png", np.full((12, 10), (i + 1) / 10, np.float32), bits=16))
            for i in range(count)]  # fmt: skip


def _mean_model(channels=1):
    return keras.Sequential([keras.Input((8, 8, channels)), keras.layers.GlobalAveragePooling2D()])


def test_predict_samples_keeps_every_output_on_its_image_and_names_the_unreadable(tmp_path):
    flat = _flat_pngs(tmp_path, 5)
    inside = Sample("inside", _corrupt_inside(flat[0].path, tmp_path / "inside.png"))  # fails inside tf.data
    missing = Sample("missing", tmp_path / "missing.png")  # fails the check before it
    samples = [flat[0], flat[1], inside, flat[2], missing, flat[3], flat[4]]
    skipped = Skipped()
    outputs, kept = predict_samples(_mean_model(), samples, image_size=8, channels=1, batch_size=2, skipped=skipped)
    assert [s.id for s in kept] == ["flat0", "flat1", "flat2", "flat3", "flat4"]
    np.testing.assert_allclose(outputs[:, 0], [0.1, 0.2, 0.3, 0.4, 0.5], atol=1e-4)
    assert sorted(Path(f.path).name for f in skipped) == ["inside.png", "missing.png"]
    with pytest.raises(InvalidInputError, match="inside.png.*--strict"):
        predict_samples(_mean_model(), [flat[0], inside, flat[1]], image_size=8, channels=1, batch_size=1, skipped=Skipped(), strict=True)


def test_predict_samples_with_nothing_readable_returns_no_rows(tmp_path):
    skipped = Skipped()
    outputs, kept = predict_samples(_mean_model(3), [Sample("m", tmp_path / "m.png")], image_size=8, skipped=skipped)
    assert outputs.shape == (0, 3) and kept == [] and len(skipped) == 1


def test_pipeline_median_is_the_library_median_filter(tmp_path):
    from keras_medimg.preprocessing.intensity import median_filter

    pixels = np.random.default_rng(3).random((16, 16)).astype(np.float32)
    path = write_image(tmp_path / "noisy.png", pixels, bits=16)
    kwargs = dict(image_size=16, training=False, batch_size=1, label_mode=None, channels=1)
    (plain,) = _batches(make_dataset([Sample("n", path)], **kwargs))[0]
    (denoised,) = _batches(make_dataset([Sample("n", path)], denoise_median=3, **kwargs))[0]
    np.testing.assert_array_equal(denoised[0], median_filter(plain[0], 3))  # borders replicated, as everywhere


def test_a_header_claiming_too_many_pixels_is_refused_before_decoding(tmp_path):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))  # fmt: skip
    check = check_image_file(bomb)
    assert check.decoder is None and "100000 x 100000" in check.reason
    skipped = Skipped()
    outputs, kept = predict_samples(_mean_model(), [Sample("b", bomb), *_flat_pngs(tmp_path, 1)], image_size=8, channels=1, skipped=skipped)
    assert [s.id for s in kept] == ["flat0"] and skipped.paths() == {str(bomb)}


def test_a_png_only_set_with_a_png_corrupt_inside_skips_it(samples, tmp_path):
    # With PNGs only, the PNG branch is the whole loader and its placeholder for the bad file is not resized:
    # it must already have the model's size, or the run dies on a shape error instead of skipping the file.
    pngs = [s for s in samples if s.path.suffix == ".png"]
    bad = Sample("bad", _corrupt_inside(pngs[0].path, tmp_path / "inside.png"), label="benign")
    skipped = Skipped()
    images, kept = load_images_numpy([*pngs, bad], image_size=8, skipped=skipped)
    assert images.shape == (len(pngs), 8, 8, 3) and [s.id for s in kept] == [s.id for s in pngs]
    assert [Path(s.path).name for s in skipped] == ["inside.png"]


def test_jpegs_decode_in_training_as_read_image_decodes_them(tmp_path, make_image):
    # tf.io.decode_jpeg's fast DCT differed from OpenCV's by up to 5 grey levels: a train/predict skew.
    from keras_medimg.io.images import read_pixels

    path = make_image(tmp_path / "photo.jpg", (32, 32), bits=8, channels=3, seed=3)
    images, _ = load_images_numpy([Sample("photo", path)], image_size=32, channels=3)
    np.testing.assert_array_equal(images[0], read_pixels(path))


def test_bytes_after_the_end_marker_are_not_truncation(samples, tmp_path):
    # writers pad to a block size or append trailers after a JPEG's end marker or a PNG's IEND
    for sample in samples[:4]:
        padded = tmp_path / f"padded{sample.path.suffix}"
        padded.write_bytes(sample.path.read_bytes() + bytes(512))
        assert check_image_file(padded).decoder is not None, sample.path.suffix


def _left_bright(height, width):
    pixels = np.full((height, width), 0.1, np.float32)
    pixels[:, : width // 2] = 0.9
    return pixels


def test_height_by_width_sizes_in_every_decoder_and_letterbox(tmp_path):
    """(height, width) input (MAM-CLIP's 1024x768): each decoder gives the same (H, W) image, stretched with its
    left half still on the left; letterbox pads above and below a square picture."""
    import cv2
    import tensorflow as tf

    picture = _left_bright(120, 72)
    files = [write_image(tmp_path / "a.png", picture, bits=16), write_image(tmp_path / "b.png", picture, bits=8),
             tmp_path / "c.jpg", tmp_path / "d.tif"]
    cv2.imwrite(str(files[2]), np.round(picture * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 100])
    cv2.imwrite(str(files[3]), np.round(picture * 65535).astype(np.uint16))
    samples = [Sample(p.name, p) for p in files]
    ((batch,),) = _batches(make_dataset(samples, image_size=(40, 24), training=False, batch_size=4, channels=1,
                                        label_mode=None))
    expected = tf.image.resize(picture[..., None], [40, 24], method="area").numpy()
    assert batch.shape == (4, 40, 24, 1)
    for image, path in zip(batch, files):
        np.testing.assert_allclose(image, expected, atol=2e-3, err_msg=path.name)
    # A square picture letterboxed into 40x24: a 24x24 picture with 8 padded rows above and below.
    square = write_image(tmp_path / "sq.png", np.full((60, 60), 0.8, np.float32), bits=8)
    ((boxed,),) = _batches(make_dataset([Sample("sq", square)], image_size=[40, 24], training=False, batch_size=1,
                                        channels=1, label_mode=None, resize="letterbox"))
    rows = boxed[0, :, :, 0].mean(axis=1)
    assert np.all(rows[:8] == 0) and np.all(rows[32:] == 0) and np.allclose(rows[8:32], 0.8, atol=0.01)
    empty, kept = load_images_numpy([], image_size=(40, 24), channels=3)
    assert empty.shape == (0, 40, 24, 3) and kept == []


def test_a_height_by_width_size_gets_its_own_cache_and_a_square_keeps_its_key(samples, tmp_path):
    cache = tmp_path / "cache"
    for size in (32, (32, 32), [32, 32], (32, 24)):
        list(make_dataset(samples[:2], image_size=size, training=False, batch_size=2, cache=cache).as_numpy_iterator())
    names = {p.name.split(".")[0] for p in cache.iterdir()}
    assert len(names) == 2  # one for the square however it is written, one for 32x24
    from keras_medimg.datasets.pipeline import _cache_name

    # The square's files carry the key written before sizes could be (height, width): old caches stay valid.
    old_key = _cache_name(samples[:2], (32, 3, "plain", 0, (0, 0), False)).split(".")[0]
    assert old_key in names
    with pytest.raises(ConfigError, match=r"\[height, width\]"):
        make_dataset(samples[:2], image_size=(32, 24, 3), training=False, batch_size=2)


def test_memory_cache_only_when_the_decoded_set_fits(caplog):
    from keras_medimg.datasets.pipeline import memory_cache_for

    assert memory_cache_for(1000, 64) == "memory"  # the demo: 48 MB
    with caplog.at_level("INFO"):
        assert memory_cache_for(40000, [1024, 768], channels=1) is None  # the study's TEKNOFEST: 125 GB
    assert "1024x768" in caplog.text and "decoded every epoch" in caplog.text
    assert memory_cache_for(10, (100, 50), channels=1, budget=10 * 100 * 50 * 4) == "memory"
    assert memory_cache_for(11, (100, 50), channels=1, budget=10 * 100 * 50 * 4) is None
