"""Tiled inference on 1500x1216 16-bit scans: keras-medimg (every tile of a scan in one detector call, merged with
torchvision's batched_nms) side by side with SAHI's sliced prediction, same detector, same tiles and overlap.

    python benchmarks/xray_predict.py --weights runs/xray/train [--images 8] [--out bench.json]

The scans are synthetic body scans (`datasets.synthetic.xray.make_scan`) at the study's size, converted to 8 bits
once with the run's conversion, so both tools see the same pixels. Reported: scans/s (wall time of detection and
merging, after one warm-up scan each) and recall/precision at IoU 0.5 at the run's `predict.conf`. SAHI runs with
its default batch size of 1 and, for reference, with every tile of a scan in one batch; its merge is set to
NMS on IoU at our merge IoU so the outputs are comparable. Needs `pip install sahi`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _ours(runner, images, plan, rule, names):
    from keras_medimg.detection.tiled import predict_scan

    predict_scan(runner, images[0], plan, rule, names)  # warm-up
    started = time.perf_counter()
    found = [predict_scan(runner, image, plan, rule, names) for image in images]
    return found, time.perf_counter() - started


def _sahi(weights, images, plan, rule, batch_size):
    from sahi import AutoDetectionModel
    from sahi.predict import get_sliced_prediction

    from keras_medimg.io.annotations import Box

    model = AutoDetectionModel.from_pretrained(model_type="ultralytics", model_path=str(weights),
                                               confidence_threshold=rule.conf, device="cpu", image_size=plan.size)

    def run(image):
        rgb = np.repeat(image[..., None], 3, axis=2)
        result = get_sliced_prediction(
            rgb, model, slice_height=plan.size, slice_width=plan.size, overlap_height_ratio=plan.overlap / plan.size,
            overlap_width_ratio=plan.overlap / plan.size, perform_standard_pred=False, postprocess_type="NMS",
            postprocess_match_metric="IOU", postprocess_match_threshold=rule.merge_iou,
            postprocess_class_agnostic=rule.class_agnostic, verbose=0, batch_size=batch_size)
        return [Box(*p.bbox.to_xyxy(), p.category.name, p.score.value) for p in result.object_prediction_list]

    run(images[0])  # warm-up
    started = time.perf_counter()
    found = [run(image) for image in images]
    return found, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="a `medimg xray train` run folder")
    parser.add_argument("--images", type=int, default=8, help="number of 1500x1216 scans")
    parser.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args()

    import torch

    from keras_medimg.apps.xray import pipeline
    from keras_medimg.apps.xray.config import XrayConfig
    from keras_medimg.datasets.synthetic.xray import make_scan
    from keras_medimg.detection.tiled import torch_runner
    from keras_medimg.metrics.detection import detection_report, remap_boxes
    from keras_medimg.preprocessing.bit_depth import to_uint8

    from dataclasses import replace

    given = replace(XrayConfig(), predict=replace(XrayConfig().predict, weights=args.weights))
    trained, weights, class_map = pipeline.open_detector_run(given)
    cfg = trained.config  # the run's tiling, conversion and merge rule
    plan, rule = pipeline.tile_plan(cfg), pipeline.merge_rule(cfg)
    if plan.mode != "positive":
        raise SystemExit("The run was trained on whole scans (tiling.mode none); pass a tiled run.")
    rng = np.random.default_rng(123)
    scans = [make_scan(rng, width=1216, height=1500) for _ in range(args.images)]
    images = [to_uint8(scan, pipeline.conversion(cfg)) for scan, _ in scans]
    truth = [remap_boxes(boxes, class_map["mapping"]) for _, boxes in scans]
    runner, names = torch_runner(weights)

    rows = []
    for name, (found, seconds) in (
        ("keras-medimg (tiles batched)", _ours(runner, images, plan, rule, names)),
        ("SAHI sliced (batch 1, default)", _sahi(weights, images, plan, rule, 1)),
        ("SAHI sliced (all tiles in one batch)", _sahi(weights, images, plan, rule, 64)),
    ):
        report = detection_report(found, truth, conf=rule.conf)
        rows.append({"method": name, "images_per_s": len(images) / seconds, "recall": report.recall,
                     "precision": report.precision, "boxes": sum(len(f) for f in found)})
    ratio = rows[0]["images_per_s"] / rows[1]["images_per_s"]
    tiles = len(pipeline.tiled.tile_positions(1500, 1216, plan.size, plan.overlap))
    print(f"\n{len(images)} scans 1500x1216, {tiles} tiles of {plan.size} px (overlap {plan.overlap}), "
          f"detector {weights}, conf {rule.conf}, merge IoU {rule.merge_iou}, {torch.get_num_threads()} threads")
    print(f"{'method':40s} {'scans/s':>8s} {'recall':>7s} {'precision':>9s} {'boxes':>6s}")
    for row in rows:
        print(f"{row['method']:40s} {row['images_per_s']:8.2f} {row['recall']:7.3f} {row['precision']:9.3f} {row['boxes']:6d}")
    print(f"throughput ratio keras-medimg / SAHI default: {ratio:.2f}x (goal >= 1.5x at equal or better recall)")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "ratio_vs_sahi_default": ratio, "tiles": tiles}, indent=2))


if __name__ == "__main__":
    main()
