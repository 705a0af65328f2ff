"""Samples through the library's `prepare` (windowing, breast/body crop, CLAHE, resize) and back as samples.

`prepare_samples` writes the samples' image paths to a temporary listing, runs `datasets.prepare.prepare_images`
(parallel, resumable: outputs newer than their source are kept) and returns the samples pointing at the prepared
16-bit PNGs, each with its original path in `meta["source"]` and its crop offset and scale in
`meta["prepared"]`, so that boxes in original pixels can be mapped into the prepared image (`prepared_boxes`).
"""

from __future__ import annotations

import csv
import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from keras_medimg.datasets.records import Sample, Skipped

log = logging.getLogger(__name__)


def prepare_samples(samples: Sequence[Sample], out_dir: str | Path, skipped: Skipped, **settings: Any) -> list[Sample]:
    """Prepare every sample's image into `out_dir` (`settings`: `prepare_images`' keywords: window, crop, margin,
    clahe, clip_limit, size, workers, strict); samples that could not be prepared are left out and in `skipped`."""
    from keras_medimg.datasets.prepare import prepare_images

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The listing goes to a temporary folder: prepare refuses a manifest inside its output folder, and a file
    # beside it could be the user's.
    with tempfile.TemporaryDirectory(prefix="medimg-prepare-") as scratch:
        listing = Path(scratch) / "inputs.csv"
        with open(listing, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "path"])
            writer.writerows([[s.id, str(Path(s.path).resolve())] for s in samples])
        result = prepare_images(listing, out_dir, **settings)
    for item in result.skipped:
        skipped.add(item.path, item.reason, line=item.line)
    rows = {row["id"]: row for row in result.rows}
    prepared = []
    for sample in samples:
        row = rows.get(sample.id)
        if row is None:
            continue
        geometry = {k: float(row[k]) for k in ("crop_y0", "crop_x0", "scale") if str(row.get(k, "")) != ""}
        prepared.append(replace(sample, path=out_dir / row["output"],
                                meta={**sample.meta, "source": str(sample.path), "prepared": geometry}))
    log.info("[prepare] %d images ready in %s (%d converted, %d reused)", len(prepared), out_dir, result.converted,
             result.reused)
    return prepared


def cache_folder(prefix: str, key: Any) -> Path:
    """`$MEDIMG_HOME/prepared/<prefix>-<hash of key>`: one folder per distinct (JSON-able) `key`, e.g. the data
    root and the preparation settings, so prepared images are reused only for the same inputs and settings."""
    import hashlib
    import json

    from keras_medimg.backend import medimg_home

    text = json.dumps(key, sort_keys=True, default=str)
    return medimg_home() / "prepared" / f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def prepared_boxes(sample: Sample) -> list[tuple[float, float, float, float]]:
    """The sample's boxes (x1, y1, x2, y2) in the pixels of its prepared image (crop offset, then scale)."""
    geometry = sample.meta.get("prepared") or {}
    y0, x0, scale = geometry.get("crop_y0", 0.0), geometry.get("crop_x0", 0.0), geometry.get("scale", 1.0)
    return [((b.x1 - x0) * scale, (b.y1 - y0) * scale, (b.x2 - x0) * scale, (b.y2 - y0) * scale) for b in sample.boxes]


def write_box_yolo_set(folder: str | Path, splits: dict[str, Sequence[Sample]], class_name: str = "lesion") -> Path:
    """A one-class YOLO set of prepared samples (`splits`: "train"/"val" -> samples) with their boxes mapped by
    `prepared_boxes` and clipped to the image; returns its data.yaml."""
    from keras_medimg.io.annotations import Box, write_yolo, write_yolo_data_yaml
    from keras_medimg.io.images import read_image, to_float, write_image

    folder = Path(folder)
    for split, samples in splits.items():
        for sample in samples:
            image = to_float(read_image(sample.path))
            height, width = image.shape[:2]
            write_image(folder / "images" / split / f"{sample.id}.png", image, bits=8)
            boxes = [Box(max(0.0, x1), max(0.0, y1), min(width, x2), min(height, y2), label=0)
                     for x1, y1, x2, y2 in prepared_boxes(sample)]
            write_yolo(folder / "labels" / split / f"{sample.id}.txt", [b for b in boxes if b.x2 > b.x1 and b.y2 > b.y1],
                       (width, height), [class_name])
    return write_yolo_data_yaml(folder / "data.yaml", folder, "images/train", "images/val", [class_name])
