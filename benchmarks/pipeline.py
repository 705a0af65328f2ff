"""Images/s of the input pipeline, and of `prepare`, on generated files.

1. `make_dataset` from 512x512 16-bit PNGs to augmented, normalised 224x224 batches: cold (decoding every
   epoch) and warm (second epoch from the in-memory cache of decoded, resized images), against Keras' own
   `image_dataset_from_directory` + augmentation layers on the same files.
2. `prepare_images` on generated 16-bit DICOM files (window + foreground crop + CLAHE) with 1 and 2 worker
   processes.

Runs on the TensorFlow backend (the pipeline is tf.data on every backend). Prints a table and writes JSON:

    python benchmarks/pipeline.py                              # 512 PNGs of each kind, 96 DICOMs
    python benchmarks/pipeline.py --images 256 --dicoms 32 --out runs/bench/pipeline.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CLASSES = ("benign", "malignant")
SOURCE_SIZE = 512
IMAGE_SIZE = 224
BATCH = 32


KINDS = {
    # name: (per-pixel noise std of the full range, PNG row filters). PNG decoding time grows with the noise, and
    # with the filters: keras-medimg writes "up" rows (write_image, prepare); most other tools let libpng choose
    # per row ("adaptive"), which picks Paeth for noisy 16-bit images and decodes 1.4-1.6x slower.
    "noisy": (0.02, "up"),  # a raw detector image: the low byte of every pixel is noise, the PNG barely compresses
    "smooth": (0.0, "up"),  # anatomy-like texture without pixel noise (denoised or synthetic images)
    "noisy-adaptive": (0.02, "adaptive"),  # the noisy images as other tools write them
}


def _phantom(rng, size: int, noise: float = KINDS["noisy"][0]):
    """A body-like 16-bit image: smooth shape, fine anatomical texture and optional per-pixel noise."""
    import cv2
    import numpy as np

    coarse = rng.random((8, 8)).astype(np.float32)
    image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    texture = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 2.0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = ((xx - 0.5) ** 2 / 0.16 + (yy - 0.5) ** 2 / 0.2) < 1
    image = np.clip(0.3 + (0.4 * image + 0.05 * texture) * body + noise * rng.standard_normal((size, size)), 0, 1)
    return (image * 65535).astype(np.uint16)


def write_pngs(folder: Path, count: int, kind: str = "noisy") -> list:
    import cv2
    import numpy as np

    from keras_medimg.datasets.records import Sample
    from keras_medimg.io.images import write_image

    noise, filters = KINDS[kind]
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        path = folder / CLASSES[i % len(CLASSES)] / f"img{i:05d}.png"
        pixels = _phantom(rng, SOURCE_SIZE, noise)
        if filters == "up":
            write_image(path, pixels, bits=16)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), pixels)  # libpng's own per-row filter choice
        samples.append(Sample(id=path.stem, path=path, label=CLASSES[i % len(CLASSES)]))
    return samples


def write_dicoms(folder: Path, count: int) -> None:
    import numpy as np
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from pydicom import Dataset

    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # digital mammography
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.Modality = "MG"
        pixels = (_phantom(rng, 1024) >> 4).astype(np.uint16)  # 12 bits stored, as mammograms are
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"mg{i:04d}.dcm", enforce_file_format=True)


def _rate(dataset, count: int) -> dict:
    """Images per wall-clock second, and per CPU-second of this process (all its threads): the second does not
    drop when other programs share the cores, and times the core count it bounds an idle machine's rate."""
    start, cpu_start = time.perf_counter(), time.process_time()
    seen = 0
    for images, _ in dataset:
        seen += int(images.shape[0])
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    assert seen == count, f"the pipeline gave {seen} images, not {count}"
    return {"per_second": count / seconds, "per_cpu_second": count / cpu_seconds}


def bench_make_dataset(samples: list) -> dict:
    from keras_medimg.datasets.pipeline import make_dataset
    from keras_medimg.preprocessing.augment import Augment
    from keras_medimg.preprocessing.normalize import IMAGENET

    augment = Augment(probability=0.5, rotation=20, zoom_min=0.8, zoom_max=1.25, hflip=True, brightness=0.1, contrast=0.2)
    common = dict(image_size=IMAGE_SIZE, training=True, batch_size=BATCH, augment=augment, normalization=IMAGENET, seed=0)
    cold = make_dataset(samples, **common)
    _rate(cold.take(2), 2 * BATCH)  # graph tracing and thread start-up are not decoding speed
    cold_rate = _rate(cold, len(samples))
    warm = make_dataset(samples, cache="memory", **common)
    first_rate = _rate(warm, len(samples))
    return {"cold": cold_rate, "cache_fill": first_rate, "warm": _rate(warm, len(samples))}


def bench_keras(folder: Path, count: int) -> dict:
    import keras
    import tensorflow as tf

    augment = keras.Sequential(
        [
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomRotation(20 / 360),
            keras.layers.RandomZoom((-0.2, 0.25)),
            keras.layers.RandomBrightness(0.1, value_range=(0, 1)),
            keras.layers.RandomContrast(0.2),
        ]
    )
    dataset = keras.utils.image_dataset_from_directory(
        folder, image_size=(IMAGE_SIZE, IMAGE_SIZE), batch_size=BATCH, color_mode="rgb", shuffle=True, seed=0, verbose=False
    )
    dataset = dataset.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    _rate(dataset.take(2), 2 * BATCH)
    return {"cold": _rate(dataset, count)}


def bench_prepare(folder: Path, out: Path, workers: int, count: int) -> dict:
    from keras_medimg.datasets.prepare import prepare_images

    start = time.perf_counter()
    result = prepare_images(folder, out / f"workers{workers}", window="auto", crop=True, clahe=True, workers=workers)
    seconds = time.perf_counter() - start
    assert result.converted == count, f"prepare converted {result.converted} of {count} files"
    return {"per_second": count / seconds}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512, help="16-bit PNGs for the pipeline benchmark")
    parser.add_argument("--dicoms", type=int, default=96, help="1024x1024 DICOM files for the prepare benchmark (0 skips it)")
    parser.add_argument("--kinds", default="noisy,smooth,noisy-adaptive", help=f"PNG sets to time, from {', '.join(KINDS)}")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the generated files (a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/pipeline.json"))
    args = parser.parse_args(argv)

    from keras_medimg.runs import write_json

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        pipelines = {}
        for kind in args.kinds.split(","):
            samples = write_pngs(work / kind, args.images, kind)
            kilobytes = sum(s.path.stat().st_size for s in samples) / len(samples) / 1024
            pipelines[kind] = {"png_kilobytes": kilobytes, **bench_make_dataset(samples),
                               "keras": bench_keras(work / kind, args.images)["cold"]}
        prepare = {}
        if args.dicoms:
            write_dicoms(work / "dicom", args.dicoms)
            for workers in (1, 2):
                prepare[workers] = bench_prepare(work / "dicom", work / "prepared", workers, args.dicoms)

    rows = []
    for kind, rates in pipelines.items():
        files = f"{kind} PNGs ({rates['png_kilobytes']:.0f} KB)"
        rows += [
            (f"make_dataset, cold (decode every epoch), {files}", rates["cold"]),
            (f"make_dataset, first epoch filling the memory cache, {files}", rates["cache_fill"]),
            (f"make_dataset, warm (memory cache), {files}", rates["warm"]),
            (f"Keras image_dataset_from_directory + augmentation, {files}", rates["keras"]),
        ]
    rows += [(f"prepare_images (DICOM 1024px, crop + CLAHE), {w} worker(s)", rate) for w, rate in prepare.items()]
    print(f"\n{'pipeline (512x512 16-bit PNG -> augmented 224x224 batches of 32)':<82} {'images/s':>9} {'images/CPU-s':>13}")
    for name, rate in rows:
        per_cpu = f"{rate['per_cpu_second']:>13.1f}" if "per_cpu_second" in rate else f"{'-':>13}"
        print(f"{name:<82} {rate['per_second']:>9.1f} {per_cpu}")
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0],  # other programs on the cores lower the wall-clock rates
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "settings": {"images": args.images, "kinds": args.kinds, "dicoms": args.dicoms, "source_size": SOURCE_SIZE, "image_size": IMAGE_SIZE, "batch": BATCH},
        "images_per_second": {"make_dataset_and_keras": pipelines, "prepare_images": prepare},
    }
    if len(prepare) == 2:
        result["prepare_speedup_2_workers"] = prepare[2]["per_second"] / prepare[1]["per_second"]
        print(f"prepare speed-up with 2 workers: {result['prepare_speedup_2_workers']:.2f}x")
    write_json(args.out, result)
    print(f"Wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
