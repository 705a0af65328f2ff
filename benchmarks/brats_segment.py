"""Dice of the weight-free lesion outlines (GrabCut, Otsu + component) and of the filled box, per tumour class.

Usage:
    python benchmarks/brats_segment.py [--data DIR] [--limit 200] [--out FILE.json]

Without --data it uses the brats demo set (made on first use). Every image with a ground-truth mask
(`<data>/masks/<id>.png`) is prompted with its mask's bounding box, so the numbers compare the outlines, not the
detector; this is how brats chose GrabCut as `segment.fallback` (the `segment` record of a train run holds the
same numbers for its own data).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="Kaggle-layout folder with masks/ (default: the demo set)")
    parser.add_argument("--limit", type=int, default=200, help="at most this many masked images per class")
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = parser.parse_args(argv)

    from keras_medimg.apps.brats import pipeline
    from keras_medimg.apps.brats.config import BratsConfig
    from keras_medimg.detection.lesions import mask_index
    from keras_medimg.detection.segment_fallback import dice_report

    cfg = BratsConfig()
    root = Path(args.data) if args.data else pipeline.data_root(cfg)
    masks = mask_index(root / "masks")
    results: dict = {"data": str(root), "classes": {}}
    for split in ("Training", "Testing"):
        for sample in pipeline.classification_samples(root, split, cfg.data.classes):
            if sample.path.stem in masks:
                results["classes"].setdefault(sample.label, []).append((sample.path, masks[sample.path.stem]))
    started = time.perf_counter()
    for label, pairs in sorted(results["classes"].items()):
        report = dice_report(pairs[: args.limit])
        results["classes"][label] = report
        print(f"{label:12s} {report['images']:4d} images  " + "  ".join(f"{k} {v:.3f}" for k, v in report["dice"].items()))
    results["seconds"] = time.perf_counter() - started
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
