"""Speed of `medimg brats predict`: milliseconds per image for each stage and end-to-end images per second.

Usage:
    python benchmarks/brats_predict.py --weights runs/brats/train [--images DIR] [--repeat 1] [--out FILE.json]

Without --images it predicts the Testing images of the demo set the run was trained on. Stages: detect (YOLO),
segment (SAM, 0 with the box fallback), crop, classify (decode + resize + CNN, one image at a time as predict
does). The first image is predicted once more before timing, so model warm-up is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="a `medimg brats train` run folder")
    parser.add_argument("--images", default=None, help="image folder (default: the run's Testing images)")
    parser.add_argument("--limit", type=int, default=40, help="at most this many images")
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from keras_medimg.apps.brats import pipeline
    from keras_medimg.apps.brats.config import BratsConfig
    from keras_medimg.config import load_config
    from keras_medimg.io.images import IMAGE_SUFFIXES
    from keras_medimg.runs import create_run

    folder = Path(args.weights)
    trained = load_config(BratsConfig, file=folder / "config.yaml")
    source = Path(args.images) if args.images else pipeline.data_root(trained) / "Testing"
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[: args.limit]
    if not files:
        sys.exit(f"No images under {source}.")
    with tempfile.TemporaryDirectory() as scratch:
        picked = Path(scratch) / "images"
        picked.mkdir()
        for path in files:
            (picked / f"{path.parent.name}_{path.name}").symlink_to(path.resolve())
        warm = Path(scratch) / "warm"
        warm.mkdir()
        (warm / files[0].name).symlink_to(files[0].resolve())
        base = load_config(BratsConfig, overrides=[f"predict.weights={folder}"])
        from dataclasses import replace

        pipeline.predict(replace(base, predict=replace(base.predict, source=str(warm))),
                         run=create_run("brats", "bench", project=Path(scratch) / "runs"))
        started = time.perf_counter()
        result = pipeline.predict(replace(base, predict=replace(base.predict, source=str(picked))),
                                  run=create_run("brats", "bench", project=Path(scratch) / "runs"))
        wall = time.perf_counter() - started
    import keras

    m = result.metrics
    report = {
        "backend": keras.backend.backend(),
        "images": m["images"],
        "segment": m["segment"]["mode"],
        "ms_per_image": m["ms_per_image"],
        "images_per_second_predict": m["images_per_second"],
        "images_per_second_including_model_loading": m["images"] / wall,
        "backbone": trained.model.backbone,
        "image_size": trained.model.image_size,
        "detect_imgsz": trained.detect.imgsz,
    }
    print(f"brats predict on {report['images']} images ({report['backend']}, {report['backbone']} "
          f"{report['image_size']} px, YOLO {report['detect_imgsz']} px, segment: {report['segment']})")
    print(f"{'stage':<10} {'ms/image':>10}")
    for stage, ms in report["ms_per_image"].items():
        print(f"{stage:<10} {ms:>10.1f}")
    print(f"end-to-end: {report['images_per_second_predict']:.2f} images/s "
          f"({report['images_per_second_including_model_loading']:.2f} with model loading)")
    if args.out:
        from keras_medimg.runs import write_json

        write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
