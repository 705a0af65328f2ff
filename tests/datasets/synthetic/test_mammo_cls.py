"""The demo classification set: layout, labels, and images the training pipeline sees with their full contrast."""

import json

import numpy as np

from keras_medimg.datasets.pipeline import load_images_numpy
from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.datasets.synthetic.mammo_cls import write_classification_demo
from keras_medimg.datasets.teknofest import IMAGES, METADATA
from keras_medimg.io.images import read_image


def test_demo_images_use_the_full_16_bit_range_as_the_pipeline_reads_them(tmp_path):
    # Regression: the 12-bit detector values were stored raw in 16-bit PNGs, so the pipeline (which scales 16-bit
    # PNGs by 65535) fed the classifier images within [0, 0.06]: fine-tuning scored below the majority baseline.
    root = write_classification_demo(tmp_path, patients=2, height=64, width=48, seed=0)
    records = json.loads((root / METADATA).read_text())
    assert len(records) == 8
    paths = sorted((root / IMAGES).rglob("*.png"))
    assert max(int(read_image(p).max()) for p in paths) > 40000
    images, kept = load_images_numpy([Sample(id=p.stem, path=p) for p in paths], image_size=32, channels=1,
                                     normalization=None, skipped=Skipped())
    assert len(kept) == 8
    per_image_range = images.reshape(8, -1).max(axis=1) - images.reshape(8, -1).min(axis=1)
    assert per_image_range.min() > 0.3
    assert float(np.std(images)) > 0.1
