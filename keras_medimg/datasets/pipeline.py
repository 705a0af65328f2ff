"""From `Sample` records to batches for `model.fit`, with tf.data, on every Keras backend.

    check files (header and trailer) -> [shuffle paths] -> decode (NumPy for PNG, tf.io for JPEG, NumPy bridge
    for DICOM and TIFF) -> resize (plain or letterbox) -> grey/RGB to `channels` -> [median] -> [cache]
    -> [shuffle] -> [augment, training only, seeded per element] -> batch -> [grey to RGB] -> normalise -> prefetch

PNG files, the format `prepare` writes, are read, decoded and resized in one `tf.numpy_function` call per file
(`_PngReader`): libdeflate and a vectorised row filter decode the files keras-medimg writes 2-3x faster than
libpng, OpenCV resizes 3x faster than TensorFlow, and the GIL is released while they run, so the tf.data threads
decode in parallel.

Grey PNGs (known from their header) stay one channel until they are batched, which makes decoding, the cache
and augmentation three times cheaper for the usual radiology input.

Keras 3 fits a `tf.data.Dataset` on the TensorFlow, PyTorch and JAX backends alike, so one input pipeline
serves them all. The cache holds the decoded, resized images before augmentation, so augmentation stays random
epoch after epoch while the expensive decoding runs once.

Bad files are found cheaply before the pipeline starts (missing, empty, not an image, truncated, a header that
claims more than `io.images.MAX_PIXELS` pixels); they are added to `skipped` (a `records.Skipped`, the run's
`skipped.csv`), or raise `InvalidInputError` with `strict`. A file that passes that check but fails to decode later (corrupt data inside) is skipped too and added
to `skipped` while the pipeline runs (a strict run stops naming it).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import tensorflow as tf

from keras_medimg.config import image_hw
from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.io.dicom import DICOM_SUFFIXES
from keras_medimg.io.images import BIGTIFF_MAGIC, check_pixel_count, decode_png_rows, image_shape
from keras_medimg.preprocessing.augment import Augment
from keras_medimg.preprocessing.normalize import Normalization, per_image_minmax

log = logging.getLogger(__name__)

LabelMode = Literal["int", "multi_hot"] | None
# The end of a file searched for its end marker (PNG IEND, JPEG EOI): writers pad (zeros to a block size) or
# append (camera trailers) after it, and a file cut short has no marker anywhere near its end.
_TAIL = 8192
_PNG, _JPEG, _BRIDGE = 0, 1, 2  # how a file is decoded: NumPy PNG reader, tf.io.decode_jpeg, NumPy bridge
_SHUFFLE_BUFFER = 1024  # images held for shuffling after a cache; before a cache the whole path list is shuffled
_CACHE_VERSION = 3  # bump when the decoded images would change, so old disk caches are not reused
_CORRUPT = ("The image data is corrupt: it could not be decoded, although the file's start and end look intact. "
            "Re-export the image or remove it.")
_GREY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)  # tf.image.rgb_to_grayscale's
_JPEG_HEADER = 65536  # bytes read to find a JPEG's size; its frame header follows EXIF data, rarely larger


# === Checking files before the pipeline ===


class FileCheck(NamedTuple):
    """What `check_image_file` found: how to decode the file (None if it cannot be), why not, and whether it is
    known to be grey (a grey PNG; other files may hold colour)."""

    decoder: int | None
    reason: str | None = None
    grey: bool = False


def check_image_file(path: str | Path) -> FileCheck:
    """Find how to decode a file from its first and last bytes, without decoding it.

    Args:
        path: an image file.

    Returns:
        A `FileCheck`: the decoder of a usable file, or the reason it is unusable (missing, empty, not a
        PNG/JPEG/TIFF/BMP/DICOM file, truncated, a PNG or JPEG header claiming more than `MAX_PIXELS` pixels;
        the NumPy bridge checks TIFF and BMP sizes when it reads them).
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
            if head.startswith(b"\xff\xd8\xff"):
                fh.seek(0)
                head = fh.read(_JPEG_HEADER)
            size = fh.seek(0, 2)
            fh.seek(max(0, size - _TAIL))
            tail = fh.read()
    except FileNotFoundError:
        return FileCheck(None, "The file does not exist.")
    except OSError as exc:
        return FileCheck(None, f"The file cannot be read ({exc.strerror}).")
    if size == 0:
        return FileCheck(None, "The file is empty.")
    try:
        check_pixel_count(path, image_shape(head))
    except InvalidInputError as exc:
        return FileCheck(None, exc.reason)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        if b"IEND" not in tail:
            return FileCheck(None, "The PNG file is truncated (it has no IEND chunk at its end).")
        # IHDR's colour type: 0 grey, 4 grey + alpha.
        return FileCheck(_PNG, grey=len(head) > 25 and head[25] in (0, 4))
    if head.startswith(b"\xff\xd8\xff"):
        if b"\xff\xd9" not in tail:
            return FileCheck(None, "The JPEG file is truncated (it has no end-of-image marker).")
        return FileCheck(_JPEG)
    if (head[128:132] == b"DICM" or head[:4] in (b"II*\x00", b"MM\x00*", *BIGTIFF_MAGIC) or head[:2] == b"BM"
            or path.suffix.lower() in DICOM_SUFFIXES):
        return FileCheck(_BRIDGE)
    return FileCheck(None, "The file is not a PNG, JPEG, TIFF, BMP or DICOM image.")


def _check_files(samples: Sequence[Sample]) -> list[FileCheck]:
    # The checks are two small reads per file; threads overlap the disk waits on large datasets.
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(check_image_file, [s.path for s in samples]))


def _report(problems: list[tuple[Path, str]], skipped: Skipped | None, strict: bool) -> None:
    if not problems:
        return
    if strict:
        path, reason = problems[0]
        more = f" ({len(problems) - 1} more bad file(s), e.g. {problems[1][0]})" if len(problems) > 1 else ""
        raise InvalidInputError(path, f"{reason} Replace or remove it, or run without --strict to skip bad files.{more}")
    if skipped is not None:
        for path, reason in problems:
            skipped.add(path, reason)


# === Labels ===


def _class_names(samples: Sequence[Sample], label_mode: LabelMode) -> list[str]:
    names = {s.label for s in samples if s.label is not None} if label_mode == "int" else {n for s in samples for n in s.labels}
    return sorted(names)


def encode_labels(samples: Sequence[Sample], label_mode: LabelMode, class_names: Sequence[str]) -> np.ndarray | None:
    """The targets of `samples`: int32 class indices, or a float32 multi-hot matrix (labels outside
    `class_names` are ignored, as the ImageCLEF vocabulary needs); None for `label_mode=None`."""
    if label_mode is None:
        return None
    if label_mode == "int":
        index = {name: i for i, name in enumerate(class_names)}
        for sample in samples:
            if sample.label not in index:
                what = "has no label" if sample.label is None else f"has the label '{sample.label}'"
                raise InvalidInputError(
                    sample.path, f"The image {what}, which is not one of the classes {', '.join(class_names)}. Fix the dataset's labels."
                )
        return np.array([index[s.label] for s in samples], dtype=np.int32)
    if label_mode == "multi_hot":
        from sklearn.preprocessing import MultiLabelBinarizer

        binarizer = MultiLabelBinarizer(classes=list(class_names))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="unknown class", category=UserWarning)
            return binarizer.fit_transform([s.labels for s in samples]).astype(np.float32)
    raise ConfigError(f"label_mode must be 'int', 'multi_hot' or None, not {label_mode!r}.")


# === Decoding, inside tf.data ===


class _Bridge:
    """Decodes files TensorFlow cannot (DICOM, TIFF, BMP) in Python, and records the ones that fail."""

    def __init__(self, skipped: Skipped | None, strict: bool):
        self.skipped = skipped
        self.strict = strict
        self.recorded: set[str] = set()
        self.lock = threading.Lock()
        self.strict_error: InvalidInputError | None = None

    def __call__(self, path: bytes) -> tuple[np.ndarray, bool]:
        from keras_medimg.io.images import read_pixels

        name = path.decode()
        try:
            # DICOM (by suffix or content) through the DICOM reader; a multi-frame file (tomosynthesis, cine)
            # contributes its first frame to a 2D pipeline, `prepare` writes every frame as an image of its own.
            pixels = read_pixels(name)
        except InvalidInputError as exc:
            self.fail(name, exc.reason)
            return np.zeros((1, 1, 1), np.float32), False
        return (pixels[:, :, None] if pixels.ndim == 2 else pixels).astype(np.float32), True

    def undecodable(self, name: str) -> None:
        """Record an image whose data could not be decoded, or stop a strict run."""
        self.fail(name, _CORRUPT)

    def fail(self, name: str, reason: str) -> None:
        """Record a file that could not be decoded, or stop a strict run (now, and again at the end of the pass
        if tf.data's `ignore_errors` swallowed the first error)."""
        if self.strict:
            self.strict_error = InvalidInputError(name, f"{reason} Or run without --strict to skip bad files.")
            raise self.strict_error
        self._record(name, reason)

    def _record(self, name: str, reason: str) -> None:
        with self.lock:
            if name not in self.recorded and self.skipped is not None:
                self.recorded.add(name)
                self.skipped.add(name, reason)


class _Arrivals:
    """Finds the JPEG files TensorFlow dropped on a decoding error, which tf.data does not name.

    tf.data has no try/except: an op error while decoding (corrupt data inside a file that passed the header and
    trailer check) can only be dropped with `ignore_errors`. So each decoded JPEG reports its path as it
    arrives, and a marker after the last element of a pass compares arrivals with the files expected. Files
    missing at the end are decoded again here, and only the ones that fail again are recorded (or stop a strict
    run), so iterators that overlap or stop early never cause a false report.
    """

    def __init__(self, paths: Sequence[str], decoders: Sequence[int], bridge: _Bridge):
        self.expected = [path for path, decoder in zip(paths, decoders) if decoder == _JPEG]
        self.bridge = bridge
        self.arrived: set[bytes] = set()
        self.lock = threading.Lock()

    def arrive(self, path: bytes) -> bool:
        with self.lock:
            self.arrived.add(path)
        return True

    def end_of_pass(self) -> bool:
        with self.lock:
            missing = [path for path in self.expected if path.encode() not in self.arrived]
            self.arrived = set()
        if self.bridge.strict_error is not None:
            raise self.bridge.strict_error
        for path in missing:
            if path not in self.bridge.recorded and not _jpeg_decodes(path):
                self.bridge.undecodable(path)
        return False  # the marker is not an image


def _jpeg_decodes(path: str) -> bool:
    try:
        tf.io.decode_jpeg(tf.io.read_file(path)).numpy()
    except (tf.errors.OpError, OSError):
        return False
    return True


class _PngReader:
    """Reads, decodes and (in "plain" resize mode) resizes PNG files in NumPy, for `tf.numpy_function`.

    `decode_png_rows` (libdeflate and a vectorised "up" filter) decodes the files `write_image` and `prepare`
    write 2-3x faster than libpng, with the GIL released; libpng (OpenCV) decodes the others. OpenCV's area
    resize is the same averaging as TensorFlow's `method="area"` (values agree within 3e-5) at a third of the
    cost. Doing it all in one call, with no TensorFlow control flow per element, took the pipeline over
    TensorFlow's own `decode_png` + resize by 1.3x. A file that cannot be decoded is recorded by the bridge
    (or stops a strict run).
    """

    def __init__(self, bridge: _Bridge, size: tuple[int, int] | None, channels: int):
        self.bridge, self.size, self.channels = bridge, size, channels
        self._empty = (*(size or (1, 1)), channels)  # a placeholder of the size the plain branch promises

    def __call__(self, path: bytes) -> tuple[np.ndarray, bool]:
        name = path.decode()
        try:
            with open(name, "rb") as fh:
                pixels = _decode_png(fh.read())
        except OSError as exc:
            self.bridge.fail(name, f"The file cannot be read ({exc.strerror}).")
            return np.zeros(self._empty, np.float32), False
        if pixels is None:
            self.bridge.fail(name, _CORRUPT)
            return np.zeros(self._empty, np.float32), False  # not resized again; dropped later
        if self.size:
            pixels = _resize_array(pixels, self.size)
        image = pixels.astype(np.float32) / np.float32(np.iinfo(pixels.dtype).max)
        return _channels_array(image, self.channels), True


def _decode_png(data: bytes) -> np.ndarray | None:
    """`(H, W, C)` uint8/uint16 pixels in RGB(A) order, or None when the data is corrupt."""
    pixels = decode_png_rows(data)
    if pixels is not None:
        return pixels
    import cv2

    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        return None
    if pixels.ndim == 2:
        return pixels[:, :, None]
    return pixels[:, :, [2, 1, 0, 3][: pixels.shape[2]]] if pixels.shape[2] in (3, 4) else pixels


def _resize_array(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to `size` (height, width) as the TensorFlow branch does: area averaging when shrinking, else
    bilinear."""
    import cv2

    height, width, channels = pixels.shape
    if (height, width) == size:
        return pixels
    method = cv2.INTER_AREA if height > size[0] or width > size[1] else cv2.INTER_LINEAR
    return cv2.resize(pixels, size[::-1], interpolation=method).reshape(*size, channels)


def _channels_array(image: np.ndarray, channels: int) -> np.ndarray:
    """`_to_channels` in NumPy: drop alpha, then copy grey to three channels or turn colour into luminance."""
    image = image[:, :, :3] if image.shape[2] >= 3 else image[:, :, :1]
    if channels == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if channels == 1 and image.shape[2] == 3:
        return (image @ _GREY_WEIGHTS)[:, :, None]
    return np.ascontiguousarray(image)


def _decode_resized(path, decoder, bridge: _Bridge, resize, png: _PngReader, channels: int, kinds: Sequence[int]):
    """Decode, resize and convert to `channels`, in one branch per decoder (only the `kinds` present are built),
    so integer pixels are resized before they become floats."""

    def png_branch():
        image, ok = tf.numpy_function(png, [path], [tf.float32, tf.bool], stateful=False)
        image = tf.ensure_shape(image, [None, None, channels])
        return (image if png.size else resize(image)), tf.ensure_shape(ok, [])

    def jpeg():
        # the accurate DCT, as OpenCV (read_image: prediction, prepare) decodes: the fast default differs by up to
        # 5 grey levels, a train/predict skew
        image = resize(tf.io.decode_jpeg(tf.io.read_file(path), channels=0, dct_method="INTEGER_ACCURATE")) / 255.0
        return _to_channels(image, channels), tf.constant(True)

    def numpy_bridge():
        image, ok = tf.numpy_function(bridge, [path], [tf.float32, tf.bool], stateful=False)
        return _to_channels(resize(tf.ensure_shape(image, [None, None, None])), channels), tf.ensure_shape(ok, [])

    branches = [png_branch, jpeg, numpy_bridge]
    if len(kinds) == 1:
        return branches[kinds[0]]()
    return tf.switch_case(decoder, branches)


def _to_channels(image, channels: int):
    """Drop alpha, then copy grey to three channels or turn colour into luminance for one."""
    have = tf.shape(image)[-1]
    image = image[..., : tf.where(have >= 3, 3, 1)]
    if channels == 3:
        return tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]), lambda: image)
    return tf.cond(tf.shape(image)[-1] == 3, lambda: tf.image.rgb_to_grayscale(image), lambda: image)


def _median(image, size: int):
    """`preprocessing.intensity.median_filter` (borders replicated) on a `(S, S, C)` float32 image, so training,
    prediction and `prepare` denoise alike."""
    from keras_medimg.preprocessing.intensity import median_filter

    filtered = tf.numpy_function(lambda pixels: median_filter(pixels, size), [image], tf.float32, stateful=False)
    return tf.ensure_shape(filtered, image.shape)


def _loader(size: tuple[int, int], channels: int, resize: str, denoise_median: int, bridge: _Bridge,
            kinds: Sequence[int], minmax: bool = False):
    height, width = size

    def resized(image):
        # Shrinking (512 -> 224) averages over each output pixel's area, as OpenCV's INTER_AREA does, so fine
        # texture does not alias; it costs half of an antialiased bilinear resize. Enlarging is bilinear.
        shape = tf.shape(image)
        shrinking = tf.logical_or(shape[0] > height, shape[1] > width)
        if resize == "letterbox":
            return tf.cond(
                shrinking,
                lambda: tf.image.resize_with_pad(image, height, width, method="area"),
                lambda: tf.image.resize_with_pad(image, height, width),
            )
        return tf.cond(shrinking, lambda: tf.image.resize(image, size, method="area"), lambda: tf.image.resize(image, size))

    png = _PngReader(bridge, size if resize == "plain" else None, channels)

    def load(path, decoder, target):
        image, ok = _decode_resized(path, decoder, bridge, resized, png, channels, kinds)
        image = tf.ensure_shape(image, [height, width, channels])
        if denoise_median > 1:
            image = _median(image, denoise_median)
        if minmax:  # Normalization.minmax: each image's own range, before augmentation (the affine part is per batch)
            image = per_image_minmax(image)
        return image, target, ok, path

    return load


# === The pipeline ===

#: The largest decoded image set `memory_cache_for` lets a pipeline keep in memory.
MEMORY_CACHE_BYTES = 4 * 2**30


def memory_cache_for(count: int, image_size: int | Sequence[int], channels: int = 3,
                     budget: int | None = None) -> str | None:
    """`"memory"` (the `make_dataset` cache) when `count` decoded float32 images of `image_size` fit in `budget`
    bytes (default `MEMORY_CACHE_BYTES`), else None: decoded again every epoch. At the demo's 64 px a thousand images
    take 48 MB; at MAM-CLIP's 1024x768 one grey image takes 3 MB, and a cached 40K-image set would need 125 GB."""
    height, width = image_hw(image_size)
    need = count * height * width * channels * 4
    if need <= (MEMORY_CACHE_BYTES if budget is None else budget):
        return "memory"
    log.info("Not caching %d decoded %dx%d images in memory (%.1f GB); they are decoded every epoch.", count, height,
             width, need / 2**30)
    return None



def make_dataset(
    samples: Sequence[Sample],
    *,
    image_size: int | Sequence[int],
    training: bool,
    batch_size: int,
    channels: int = 3,
    normalization: Normalization | None = None,
    augment: Augment | None = None,
    label_mode: LabelMode = "int",
    class_names: Sequence[str] | None = None,
    cache: str | Path | None = None,
    shuffle: bool | None = None,
    seed: int = 0,
    deterministic: bool = False,
    denoise_median: int = 0,
    resize: Literal["plain", "letterbox"] = "plain",
    skipped: Skipped | None = None,
    strict: bool = False,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Build the input pipeline of a list of samples.

    Args:
        samples: the images (PNG 8/16-bit, JPEG, DICOM, TIFF, BMP; decided by the file's bytes, not its name).
        image_size: the size of the images the model takes: one side (a square) or (height, width).
        training: apply `augment` (and shuffle, unless `shuffle` says otherwise).
        batch_size: images per batch.
        channels: 3 (grey copied to RGB, for ImageNet backbones) or 1.
        normalization: the backbone's input normalisation, applied last; None leaves pixels in [0, 1].
        augment: augmentations for training; None or a disabled `Augment` for none.
        label_mode: "int" (class index of `Sample.label`), "multi_hot" (float vector of `Sample.labels`,
            MultiLabelBinarizer with `class_names`), or None (images only, e.g. for prediction).
        class_names: the classes in index order; None takes the sorted labels found in `samples`.
        cache: None, "memory", or a folder for an on-disk cache of the decoded, resized images (one file set
            per sample list and settings; it is complete after the first full pass).
        shuffle: shuffle every epoch; None means `training`.
        seed: seeds the shuffle and the augmentation.
        deterministic: keep element order fixed under parallel decoding (same batches every run for a seed).
            Without shuffling the order of `samples` is always kept, so predictions line up with them.
        denoise_median: odd median-filter size applied after resizing; 0 for none.
        resize: "plain" stretches to `image_size`; "letterbox" keeps the aspect ratio and pads with 0.
        skipped: receives every bad file skipped, with the reason.
        strict: raise `InvalidInputError` on the first bad file instead of skipping it.
        drop_remainder: drop the last, smaller batch.

    Returns:
        A `tf.data.Dataset` of `(images, labels)` batches, images float32 `(B, height, width, channels)`, labels int32 `(B,)` or float32 `(B, classes)`; or of images alone for `label_mode=None`.

    Raises:
        InvalidInputError: a bad file with `strict`, a label outside `class_names`, or no usable image left.
        ConfigError: an invalid setting.
    """
    _check_settings(channels, resize, denoise_median, batch_size, normalization)
    if not samples:
        raise ConfigError("make_dataset got no samples. Check the dataset folder and the split.")
    if label_mode is not None and class_names is None:
        class_names = _class_names(samples, label_mode)
    targets = encode_labels(samples, label_mode, class_names or [])
    decoders, kept, grey = _usable(samples, skipped, strict)
    if targets is not None:
        targets = targets[kept]
    return _pipeline(
        [samples[i] for i in kept], decoders, targets, grey=grey,
        image_size=image_size, training=training, batch_size=batch_size, channels=channels,
        normalization=normalization, augment=augment, cache=cache, shuffle=training if shuffle is None else shuffle,
        seed=seed, deterministic=deterministic, denoise_median=denoise_median, resize=resize,
        bridge=_Bridge(skipped, strict), drop_remainder=drop_remainder,
    )  # fmt: skip


def _check_settings(channels: int, resize: str, denoise_median: int, batch_size: int, normalization: Normalization | None) -> None:
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, not {channels}.")
    if resize not in ("plain", "letterbox"):
        raise ConfigError(f"resize must be 'plain' or 'letterbox', not {resize!r}.")
    if denoise_median < 0 or (denoise_median > 1 and denoise_median % 2 == 0):
        raise ConfigError(f"denoise_median must be 0 or an odd filter size, not {denoise_median}.")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, not {batch_size}.")
    if normalization is not None and len(normalization.mean) not in (1, channels):
        raise ConfigError(
            f"The normalisation has {len(normalization.mean)} channel means but the pipeline makes {channels}-channel images. "
            "Use channels=3 for ImageNet backbones."
        )


def _usable(
    samples: Sequence[Sample], skipped: Skipped | None, strict: bool, *, allow_none: bool = False
) -> tuple[list[int], list[int], bool]:
    """Decoders of the usable files, their indices in `samples`, and whether all are known to be grey; the
    unusable files are reported. No usable file is an error unless `allow_none`."""
    decoders, kept, problems, grey = [], [], [], True
    for index, (sample, check) in enumerate(zip(samples, _check_files(samples))):
        if check.decoder is None:
            problems.append((sample.path, check.reason))
        else:
            decoders.append(check.decoder)
            kept.append(index)
            grey = grey and check.grey
    _report(problems, skipped, strict)
    if not kept and not allow_none:
        raise InvalidInputError(samples[0].path.parent, "None of the images can be read (see skipped files). Check the dataset.")
    return decoders, kept, grey


def _batch_finisher(normalization: Normalization | None, work_channels: int, channels: int):
    """Copy grey batches to `channels` and normalise them, vectorised over the batch.

    `Normalization.apply`'s `(x[..., order] * scale - mean) / std` is one affine map per pixel from
    `work_channels` to `channels` values: `x @ M + b` with `M = diag(scale / std)` (rows reversed for BGR
    models; a single row for grey input, which makes the grey-to-RGB copy part of the same product) and
    `b = -mean / std`. As a `(pixels, work_channels) @ (work_channels, channels)` matmul plus bias it is 9x
    cheaper on CPU than the broadcast multiply-add TensorFlow would otherwise run (0.14 vs 1.25 ms per 224x224
    image), and it gives the same values: every output is one product plus one sum.
    """
    if normalization is None:
        factor, offset, reverse = np.ones(channels, np.float32), np.zeros(channels, np.float32), False
    else:
        std = np.asarray(normalization.std, np.float32)
        factor = np.broadcast_to(np.float32(normalization.scale) / std, (channels,)).astype(np.float32)
        offset = np.broadcast_to(-np.asarray(normalization.mean, np.float32) / std, (channels,)).astype(np.float32)
        reverse = normalization.bgr and work_channels > 1
    if work_channels == 1:
        matrix = factor[None, :]
    else:
        matrix = np.diag(factor)[::-1] if reverse else np.diag(factor)
    matrix = np.ascontiguousarray(matrix, np.float32)

    def finish(images):
        shape = tf.shape(images)
        pixels = tf.reshape(images, [-1, work_channels])
        out = tf.nn.bias_add(tf.matmul(pixels, matrix), offset)
        out = tf.reshape(out, tf.concat([shape[:-1], [channels]], 0))
        out.set_shape(images.shape[:-1].concatenate([channels]))
        return out

    return finish


def _decoded(image, target, ok, path):
    return ok


def _without_flag(image, target, ok, path):
    return image, target


def _images_only(images, target):
    return images


def _single_threaded_opencv() -> None:
    """Run OpenCV's calls (PNG resizing, augmentation) on the calling thread.

    tf.data already runs one decode per core; OpenCV's own worker threads inside those calls oversubscribe the
    cores (noisy 16-bit PNGs, 2 cores: 292 against 367 images/s single-threaded). This is OpenCV's process-wide
    setting, so it also holds for OpenCV calls outside the pipeline in this process.
    """
    import cv2

    if cv2.getNumThreads() > 1:
        cv2.setNumThreads(1)


def _cache_name(samples: Sequence[Sample], settings: tuple[Any, ...]) -> str:
    digest = hashlib.sha256(repr((_CACHE_VERSION, settings)).encode())
    for sample in samples:
        digest.update(str(Path(sample.path).resolve()).encode() + b"\0")
    return f"medimg-{digest.hexdigest()[:16]}"


def _pipeline(
    samples: Sequence[Sample],
    decoders: Sequence[int],
    targets: np.ndarray | None,
    *,
    grey: bool,
    image_size: int | Sequence[int],
    training: bool,
    batch_size: int,
    channels: int,
    normalization: Normalization | None,
    augment: Augment | None,
    cache: str | Path | None,
    shuffle: bool,
    seed: int,
    deterministic: bool,
    denoise_median: int,
    resize: str,
    bridge: _Bridge,
    drop_remainder: bool,
) -> tf.data.Dataset:
    from keras_medimg.training.distribute import worker

    count = len(samples)
    # Unordered parallel maps give each process its own order: the workers of a multi-worker run must all build
    # the same global batches (each keeps its share), so their order is fixed there too.
    deterministic = deterministic or not shuffle or worker().count > 1
    paths = [str(s.path) for s in samples]
    with_targets = targets is not None
    # A dummy target keeps one element structure; it is dropped again before batching.
    target_tensor = targets if with_targets else np.zeros(count, np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((paths, np.asarray(decoders, np.int32), target_tensor))
    if shuffle:
        # Ahead of a cache the order is fixed once (a cache replays its first pass); otherwise every epoch.
        dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=cache is None)

    # Grey sources stay one channel through decoding, cache and augmentation (a third of the work and memory)
    # and are copied to three channels per batch.
    work_channels = 1 if grey else channels
    kinds = sorted(set(decoders))
    _single_threaded_opencv()
    minmax = normalization is not None and normalization.minmax
    size = image_hw(image_size)
    load = _loader(size, work_channels, resize, denoise_median, bridge, kinds, minmax)
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if _JPEG in kinds:
        # TensorFlow decodes JPEGs and fails on corrupt ones with an op error, which only `ignore_errors` drops;
        # the arrivals tracker names those files. NumPy decodes the rest and records its own failures.
        arrivals = _Arrivals(paths, decoders, bridge)

        def arrived(image, target, ok, path):
            return image, target, tf.logical_and(ok, tf.numpy_function(arrivals.arrive, [path], tf.bool, stateful=True)), path

        def end_of_pass(_):
            ok = tf.ensure_shape(tf.numpy_function(arrivals.end_of_pass, [], tf.bool, stateful=True), [])
            return tf.zeros([*size, work_channels]), target_tensor[0], ok, tf.constant("")

        dataset = dataset.ignore_errors().map(arrived)
        dataset = dataset.concatenate(tf.data.Dataset.range(1).map(end_of_pass))
    dataset = dataset.filter(_decoded).map(_without_flag)

    if cache == "memory":
        dataset = dataset.cache()
    elif cache is not None:
        folder = Path(cache)
        folder.mkdir(parents=True, exist_ok=True)
        # A square keeps the key it always had: caches written before (height, width) sizes stay valid.
        key_size = size[0] if size[0] == size[1] else size
        settings = (key_size, work_channels, resize, denoise_median, tuple(decoders), minmax)
        dataset = dataset.cache(str(folder / _cache_name(samples, settings)))
    if shuffle and cache is not None:
        dataset = dataset.shuffle(min(count, _SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)

    if training and augment is not None and augment.enabled:
        # Each element takes the next seed pair of a seeded stream, so its augmentation does not depend on which
        # thread runs it; the stream is re-drawn every epoch.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

        def augment_element(item, pair):
            return augment(item[0], pair), item[1]

        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            augment_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
        )

    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if normalization is not None or work_channels != channels:
        finish = _batch_finisher(normalization, work_channels, channels)

        def finish_batch(images, target):
            return finish(images), target

        dataset = dataset.map(finish_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if not with_targets:
        dataset = dataset.map(_images_only)
    options = tf.data.Options()
    options.deterministic = deterministic
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def _in_order(
    samples: Sequence[Sample],
    *,
    image_size: int | Sequence[int],
    channels: int,
    normalization: Normalization | None,
    resize: str,
    denoise_median: int,
    batch_size: int,
    skipped: Skipped | None,
    strict: bool,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of images with the indices in `samples` they are, in order, without the files that fail.

    Each element carries its index as its target, so a file that fails to decode inside the pipeline leaves a
    gap in the indices instead of shifting every later row.
    """
    _check_settings(channels, resize, denoise_median, batch_size, normalization)
    decoders, kept, grey = _usable(samples, skipped, strict, allow_none=True) if samples else ([], [], True)
    if not kept:
        return
    bridge = _Bridge(skipped, strict)
    dataset = _pipeline(
        [samples[i] for i in kept], decoders, np.asarray(kept, np.int32), grey=grey,
        image_size=image_size, training=False, batch_size=batch_size, channels=channels,
        normalization=normalization, augment=None, cache=None, shuffle=False, seed=0, deterministic=True,
        denoise_median=denoise_median, resize=resize, bridge=bridge, drop_remainder=False,
    )  # fmt: skip
    try:
        yield from dataset.as_numpy_iterator()
    except tf.errors.OpError:
        # A strict run stops inside tf.data; raise the bridge's own error, which names the file, not TensorFlow's.
        if bridge.strict_error is not None:
            raise bridge.strict_error from None
        raise


def load_images_numpy(
    samples: Sequence[Sample],
    *,
    image_size: int | Sequence[int],
    channels: int = 3,
    normalization: Normalization | None = None,
    resize: Literal["plain", "letterbox"] = "plain",
    denoise_median: int = 0,
    batch_size: int = 32,
    skipped: Skipped | None = None,
    strict: bool = False,
) -> tuple[np.ndarray, list[Sample]]:
    """Load images as one NumPy array, through the same decoding as `make_dataset` (for a few images; to
    predict over many, `predict_samples` streams them instead).

    Args:
        samples: the images.
        image_size, channels, normalization, resize, denoise_median, skipped, strict: as for `make_dataset`.
        batch_size: images decoded per step.

    Returns:
        float32 `(N, height, width, channels)` images and the `N` samples they are (bad files are left
        out, in `skipped`), in the order of `samples`.
    """
    images, indices = [], []
    for batch, index in _in_order(
        samples, image_size=image_size, channels=channels, normalization=normalization, resize=resize,
        denoise_median=denoise_median, batch_size=batch_size, skipped=skipped, strict=strict,
    ):  # fmt: skip
        images.append(batch)
        indices += index.tolist()
    if not images:
        return np.zeros((0, *image_hw(image_size), channels), np.float32), []
    return np.concatenate(images), [samples[i] for i in indices]


def predict_samples(
    model: Any,
    samples: Sequence[Sample],
    *,
    image_size: int | Sequence[int],
    channels: int = 3,
    normalization: Normalization | None = None,
    batch_size: int = 32,
    skipped: Skipped,
    strict: bool = False,
    denoise_median: int = 0,
    resize: Literal["plain", "letterbox"] = "plain",
) -> tuple[np.ndarray, list[Sample]]:
    """Run a model over images, streamed through one tf.data pipeline, with every output on its own image.

    The images are decoded exactly as `make_dataset` decodes them for training, in parallel and ahead of the
    model, batch by batch (memory holds a few batches, not the dataset). Each batch carries the positions of its
    images in `samples`, so a file that cannot be read, whether found before the pipeline starts or while
    decoding, is left out and named in `skipped`, and never shifts the outputs of the images after it.

    Args:
        model: a Keras model with one output (any backend), e.g. a classifier.
        samples: the images, e.g. from `sources.list_images`.
        image_size, channels, normalization, denoise_median, resize: the model's input, as for `make_dataset`.
        batch_size: images per model call.
        skipped: receives every file that could not be read, with the reason.
        strict: raise `InvalidInputError` on the first unreadable file instead.

    Returns:
        The outputs `(N, ...)` of the `N` readable samples and those samples, in the order of `samples`. When no
        image can be read, `N` is 0 (the output shape then comes from `model.output_shape`).

    Raises:
        InvalidInputError: an unreadable file with `strict`.
        ConfigError: an invalid setting.
    """
    outputs, indices = [], []
    for images, index in _in_order(
        samples, image_size=image_size, channels=channels, normalization=normalization, resize=resize,
        denoise_median=denoise_median, batch_size=batch_size, skipped=skipped, strict=strict,
    ):  # fmt: skip
        outputs.append(np.asarray(model.predict_on_batch(images)))
        indices += index.tolist()
    if not outputs:
        return np.zeros((0, *model.output_shape[1:]), np.float32), []
    return np.concatenate(outputs), [samples[i] for i in indices]
