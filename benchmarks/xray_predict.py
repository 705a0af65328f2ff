"""Tiled inference on 1500x1216 16-bit scans: keras-medimg (every tile of a scan in one detector call, merged with
torchvision's batched_nms) side by side with SAHI's sliced prediction, same detector, same tiles and overlap.
keras-medimg runs as by default (PyTorch, air tiles left out: `predict.flat_sigmas`), with every tile run
(`flat_sigmas: 0`, batching alone) and on onnxruntime (`predict.runtime: onnx`: the checkpoint exported once).

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


def _ours(weights, plan, rule, runtime, tiles_run):
    from keras_medimg.detection.tiled import detector_runner, predict_scan

    runner, names, used = detector_runner(weights, runtime=runtime, imgsz=plan.imgsz)
    assert used == runtime, f"asked for {runtime}, got {used}"
    return lambda image: predict_scan(runner, image, plan, rule, names, tiles_run)


def _sahi(weights, plan, rule, batch_size):
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

    return run


def _timed(methods, images):
    """Each method on each scan, interleaved (scan by scan), so a busy machine slows them alike."""
    for run in methods.values():
        run(images[0])  # warm-up
    found = {name: [] for name in methods}
    seconds = dict.fromkeys(methods, 0.0)
    for image in images:
        for name, run in methods.items():
            started = time.perf_counter()
            found[name].append(run(image))
            seconds[name] += time.perf_counter() - started
    return found, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="a `medimg xray train` run folder")
    parser.add_argument("--images", type=int, default=8, help="number of 1500x1216 scans")
    parser.add_argument("--object-scale", type=float, default=1.0,
                        help="object and limb size relative to the 800 px demo scans the detector learned from")
    parser.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args()

    import torch

    from keras_medimg.apps.xray import pipeline
    from keras_medimg.apps.xray.config import XrayConfig
    from keras_medimg.datasets.synthetic.xray import make_scan
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
    # Objects at the size the demo detector was trained on (an 800 px tall demo scan), on a scan of the study's size.
    scans = [make_scan(rng, width=1216, height=1500, scale=args.object_scale) for _ in range(args.images)]
    images = [to_uint8(scan, pipeline.conversion(cfg)) for scan, _ in scans]
    truth = [remap_boxes(boxes, class_map["mapping"]) for _, boxes in scans]
    tiles = len(pipeline.tiled.tile_positions(1500, 1216, plan.size, plan.overlap))
    every = replace(rule, flat_sigmas=0.0)
    counts = {name: {} for name in ("default", "every", "onnx")}
    methods = {
        "keras-medimg (default: PyTorch, air left out)": _ours(weights, plan, rule, "torch", counts["default"]),
        "keras-medimg (PyTorch, every tile)": _ours(weights, plan, every, "torch", counts["every"]),
        "keras-medimg (onnxruntime, air left out)": _ours(weights, plan, rule, "onnx", counts["onnx"]),
        "SAHI sliced (batch 1, default)": _sahi(weights, plan, rule, 1),
        "SAHI sliced (all tiles in one batch)": _sahi(weights, plan, rule, 64),
    }
    found, seconds = _timed(methods, images)
    rows = []
    for name, count in zip(methods, [*counts.values(), None, None]):
        report = detection_report(found[name], truth, conf=rule.conf)
        run_share = count["tiles_run"] / (count["scans"] * tiles) if count else 1.0
        rows.append({"method": name, "images_per_s": len(images) / seconds[name], "recall": report.recall,
                     "precision": report.precision, "boxes": sum(len(f) for f in found[name]),
                     "tiles_run_share": run_share})
    sahi = next(row for row in rows if row["method"].startswith("SAHI sliced (batch 1"))
    ratio, ratio_every, ratio_onnx = (row["images_per_s"] / sahi["images_per_s"] for row in rows[:3])
    print(f"\n{len(images)} scans 1500x1216, {tiles} tiles of {plan.size} px (overlap {plan.overlap}), "
          f"detector {weights}, conf {rule.conf}, merge IoU {rule.merge_iou}, flat_sigmas {rule.flat_sigmas}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'method':46s} {'scans/s':>8s} {'tiles run':>9s} {'recall':>7s} {'precision':>9s} {'boxes':>6s}")
    for row in rows:
        print(f"{row['method']:46s} {row['images_per_s']:8.2f} {row['tiles_run_share']:9.0%} {row['recall']:7.3f} "
              f"{row['precision']:9.3f} {row['boxes']:6d}")
    print(f"throughput ratio keras-medimg (default) / SAHI default: {ratio:.2f}x (goal >= 1.5x at equal or better "
          f"recall); batching alone (every tile): {ratio_every:.2f}x; onnxruntime: {ratio_onnx:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "ratio_vs_sahi_default": ratio,
                                              "ratio_every_tile_vs_sahi_default": ratio_every,
                                              "ratio_onnx_vs_sahi_default": ratio_onnx, "tiles": tiles}, indent=2))


if __name__ == "__main__":
    main()
