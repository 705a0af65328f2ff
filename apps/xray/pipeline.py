"""The X-ray contraband study as plain functions: 16-bit scans -> positive tiles -> YOLOv5u -> fixed grid -> merge.

`train(cfg)` writes one run folder:

    runs/xray/train[N]/
        config.yaml              resolved config (rerun with --config)
        splits.csv               id, split, path of every scan (the seeded stratified 60/20/20 split)
        class_map.json           original class -> detector class, and the detector's class names
        detector/                Ultralytics' own run (results.csv, args.yaml, weights/) and the YOLO view of the data
                                 (`--resume` continues an unfinished detector training from its weights/last.pt)
        weights/detector.pt      the detector every later command uses
        metrics.json             test P/R/F1/mAP50 with fixed tiling, per class; per_class.csv, plots/pr_curve.png
        skipped.csv              bad files that were left out (unless --strict)

The detector is evaluated the way the study tested it: the whole test scan tiled at the training tile size (with
`tiling.overlap`), every tile through the detector, boxes mapped back and merged (`detection.tiled`).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from keras_medimg.apps.xray.config import XrayConfig
from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.datasets.voc import VocDataset, read_voc_dataset, split_dataset
from keras_medimg.detection import evaluation, remap, tiled
from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.io.annotations import Box
from keras_medimg.preprocessing.bit_depth import Conversion
from keras_medimg.runs import Run, RunPlace, RunResult, atomic_path, finish_run, open_trained, start_run, write_json

log = logging.getLogger("keras_medimg.xray")

APP = "xray"
DETECTOR_FILE = "detector.pt"
REMAPS = remap.REMAPS
AUGMENT_ROWS = ("none", "flip", "blur", "rbc", "noise", "combined")
TILING_ROWS = ("none", "1x512", "2x384", "4x256", "8x128")


# === Data ===


def demo_data(out_dir: str | Path | None, cfg: XrayConfig) -> Path:
    """Make (or reuse) the synthetic 16-bit body-scan set in the standard VOC layout."""
    from keras_medimg.datasets.synthetic.xray import generate_xray

    params = {"n_images": cfg.data.demo_images, "width": cfg.data.demo_width, "height": cfg.data.demo_height,
              "seed": cfg.seed}
    if out_dir is None:
        from keras_medimg.datasets.synthetic import ensure_demo_data

        return Path(ensure_demo_data("xray", generate_xray, **params))
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"'{out}' is not empty; demo-data never writes over files. Give a new or empty folder.")
    return generate_xray(out, **params)


def data_root(cfg: XrayConfig) -> Path:
    """The VOC folder: `data.root`, or the demo set (made on first use)."""
    if cfg.data.root:
        root = Path(cfg.data.root)
        if not root.is_dir():
            raise InvalidInputError(root, "the dataset folder does not exist; pass a PASCAL VOC folder with --data, or "
                                    "leave --data out to use the demo data.")
        return root
    log.info("No --data given: using the built-in synthetic body-scan demo set.")
    return demo_data(None, cfg)


def load_data(cfg: XrayConfig, skipped: Skipped) -> tuple[VocDataset, dict[str, list[Sample]]]:
    """Read the VOC set and split it (split files, else seeded and stratified by rarest class)."""
    dataset = read_voc_dataset(data_root(cfg), class_names=cfg.data.classes or None, strict=cfg.strict, skipped=skipped)
    splits = split_dataset(dataset, val=cfg.data.val_fraction, test=cfg.data.test_fraction, seed=cfg.seed,
                           use_split_files=cfg.data.use_split_files)
    for name in ("train", "val"):
        if not any(s.boxes for s in splits[name]):
            raise InvalidInputError(dataset.root, f"the {name} split has no annotated object; the detector needs boxes "
                                    "to learn from and to be checked on. Add annotated scans.")
    return dataset, splits


def conversion(cfg: XrayConfig) -> Conversion:
    return Conversion(cfg.convert.method, cfg.convert.low, cfg.convert.high)


def tile_plan(cfg: XrayConfig) -> tiled.TilePlan:
    """The tiling (`tiling` is a `detection.tiled.TilePlan`, checked when the config is read)."""
    return cfg.tiling


def merge_rule(cfg: XrayConfig, conf: float | None = None) -> tiled.MergeRule:
    p = cfg.predict
    return tiled.MergeRule(p.conf if conf is None else conf, p.nms_iou, p.merge_iou, p.class_agnostic_merge, p.max_det,
                           p.flat_sigmas)


def box_augment(cfg: XrayConfig) -> tiled.BoxAugment:
    a = cfg.augment
    if len(a.blur_sigma) != 2 or not 0 < a.blur_sigma[0] <= a.blur_sigma[1]:
        raise ConfigError(f"augment.blur_sigma must be [low, high] with 0 < low <= high, not {a.blur_sigma}.")
    return tiled.BoxAugment(a.flip, a.blur, a.rbc, a.noise, tuple(a.blur_sigma), a.brightness, a.contrast, a.noise_std)


# === Class remapping ===


def class_mapping(cfg: XrayConfig, class_names: Sequence[str], train: Sequence[Sample]) -> dict[str, str]:
    """Original class -> the class the detector learns, for `cfg.class_remap` (the study's remappings,
    `detection.remap`: binary groups, size bins and score bins from `cfg.remap`)."""
    r = cfg.remap
    return remap.class_mapping(cfg.class_remap, class_names, train, binary=r.binary, size_bins=r.size_bins,
                               score_run=r.score_run, score_bins=r.score_bins, app=APP)


# === Training ===


def _write_splits(run: Run, splits: Mapping[str, Sequence[Sample]]) -> None:
    rows = [{"id": s.id, "split": name, "path": str(s.path)} for name, samples in splits.items() for s in samples]
    run.write_csv("splits.csv", rows, ["id", "split", "path"])


def fit_detector(cfg: XrayConfig, splits: Mapping[str, Sequence[Sample]], mapping: Mapping[str, str],
                 out_dir: Path, *, resume: bool = False) -> tuple[Path, list[str], float]:
    """Train YOLOv5u on tiles of the remapped train split (validated on the val split's grid); with `resume`, an
    unfinished training in `out_dir` continues from its last checkpoint (`detection.yolo.train_detector`).

    Returns:
        (the checkpoint `detector.keep` names, detector class names, seconds).
    """
    from keras_medimg.detection.yolo import train_detector

    names = list(dict.fromkeys(mapping.values()))
    train, val = remap.remapped(splits["train"], mapping), remap.remapped(splits["val"], mapping)
    plan, convert = tile_plan(cfg), conversion(cfg)
    cache = tiled.ScanCache(convert)
    train_set = tiled.TileDataset(train, names, plan, convert, training=True, augment=box_augment(cfg),
                                  seed=cfg.seed, cache=cache)
    val_set = tiled.TileDataset(val, names, plan, convert, training=False, cache=cache)
    data_yaml = tiled.write_yolo_set({"train": train, "val": val}, names, out_dir / "data")
    d = cfg.detector
    result = train_detector(
        data_yaml, out_dir, model=f"yolov5{d.size}u", weights=d.weights, epochs=d.epochs, imgsz=plan.imgsz,
        batch=d.batch, seed=cfg.seed, device=d.device, workers=d.workers, patience=d.patience,
        trainer=tiled.tile_trainer(train_set, val_set, best_by="fitness" if d.keep == "last" else d.keep),
        resume=resume,
        # Ultralytics' own augmentations never reach TileDataset; these keep its other defaults from acting.
        # nbs = batch: one optimizer step per batch of tiles, as the study's batch of 8 (Ultralytics otherwise
        # accumulates to 64 images, i.e. a step every 8 batches, which from scratch on a small set barely learns).
        hyperparameters={"optimizer": d.optimizer, "lr0": d.learning_rate, "warmup_epochs": d.warmup_epochs,
                         "warmup_bias_lr": d.learning_rate, "nbs": d.batch, "mosaic": 0.0, "close_mosaic": 0},
    )
    # The study keeps the epoch of lowest validation loss (`keep: val_loss`, the TileTrainer's best.pt).
    return (result.last if d.keep == "last" else result.best), names, result.seconds


def train(cfg: XrayConfig, *, run: Run | RunPlace | None = None, resume: bool = False) -> RunResult:
    """Read and split the VOC set, train YOLOv5u on positive tiles (or whole scans), test with fixed tiling.

    Args:
        cfg: the resolved config.
        run: where the run folder goes (default: a new runs/xray/train[N]), or the run to resume.
        resume: continue `run`: a finished detector (weights/detector.pt) is kept; an unfinished one continues
            from Ultralytics' last checkpoint in detector/train/weights/last.pt when that can be resumed, else it
            is trained again (the reason is logged).
    """
    skipped = Skipped()
    dataset, splits = load_data(cfg, skipped)
    mapping = class_mapping(cfg, dataset.class_names, splits["train"])
    run = start_run(APP, "train", cfg, run)
    _write_splits(run, splits)
    weights = run.path("weights", DETECTOR_FILE)
    if resume and weights.is_file():
        log.info("Resuming: keeping the detector this run already trained (%s).", weights)
        names, seconds = list(dict.fromkeys(mapping.values())), 0.0
    else:
        kept, names, seconds = fit_detector(cfg, splits, mapping, run.dir / "detector", resume=resume)
        with atomic_path(weights) as tmp:  # a kill mid-copy must not leave a detector.pt a resume would keep
            shutil.copyfile(kept, tmp)
    write_json(run.path("class_map.json"), {"mapping": mapping, "detector_classes": names})
    report, seconds_eval = score(cfg, weights, splits["test"], mapping, names)
    evaluation.write_evaluation(run, report, "test")
    metrics = {"test": report, "train_seconds": seconds, "evaluate_seconds": seconds_eval, "kept": cfg.detector.keep,
               "resumed": resume,
               "images": {k: len(v) for k, v in splits.items()}, "class_remap": cfg.class_remap,
               "tiling": cfg.tiling.mode, "detector_classes": names}
    return finish_run(run, metrics, skipped, evaluation.per_class_table(report))


# === Evaluation ===


def detector_runner(cfg: XrayConfig, weights: Path) -> tuple[tiled.Runner, dict[int, str]]:
    """The trained detector on `predict.runtime` (PyTorch, or onnxruntime on a CPU) and its class names."""
    runner, names, runtime = tiled.detector_runner(weights, runtime=cfg.predict.runtime, device=cfg.detector.device,
                                                   imgsz=tile_plan(cfg).imgsz)
    log.debug("Detector %s runs on %s.", weights, runtime)
    return runner, names


def predict_all(cfg: XrayConfig, weights: Path, samples: Sequence[Sample],
                conf: float) -> tuple[list[list[Box]], float, dict[str, int]]:
    """Every scan's merged boxes (down to `conf`), the seconds it took, and the tiles counted (`tiles_run`)."""
    runner, names = detector_runner(cfg, weights)
    plan, rule, cache = tile_plan(cfg), merge_rule(cfg, conf), tiled.ScanCache(conversion(cfg))
    started, stats = time.perf_counter(), {}
    found = [tiled.predict_scan(runner, cache(s.path), plan, rule, names, stats) for s in samples]
    return found, time.perf_counter() - started, stats


def score(cfg: XrayConfig, weights: Path, samples: Sequence[Sample], mapping: Mapping[str, str],
          names: Sequence[str]) -> tuple[dict[str, Any], float]:
    """P/R/F1 at `predict.conf` and IoU `evaluate.iou`, mAP50 (every box down to 0.001), per class, PR curve."""
    predicted, seconds, stats = predict_all(cfg, weights, samples, conf=0.001)
    truth = [s.boxes for s in remap.remapped(samples, mapping)]
    report = evaluation.score_detections(predicted, truth, conf=cfg.predict.conf, iou=cfg.evaluate.iou,
                                         class_names=names)
    report["tiles_run"] = stats.get("tiles_run", 0)  # after `predict.flat_sigmas` left out the air tiles
    return report, seconds


def open_detector_run(cfg: XrayConfig) -> tuple[Any, Path, dict[str, Any]]:
    """The trained run named by `predict.weights`: (run, weights/detector.pt, class_map.json)."""
    import json

    trained = open_trained(cfg.predict.weights, APP, XrayConfig)
    weights = trained.require("weights", DETECTOR_FILE, how="Train it with `medimg xray train`.")
    class_map = json.loads(trained.require("class_map.json", how="Train it again with `medimg xray train`.")
                           .read_text(encoding="utf-8"))
    return trained, weights, class_map


def with_trained(cfg: XrayConfig, trained_cfg: XrayConfig) -> XrayConfig:
    """What a later command takes from the trained run: how scans were converted and tiled (the detector only
    knows those), its seed and split settings, and the data it was trained on unless --data says otherwise."""
    # The run's split settings and seed, so `evaluate` scores the very scans the run was tested on.
    data = replace(trained_cfg.data, root=cfg.data.root or trained_cfg.data.root)
    tiling = replace(cfg.tiling, mode=trained_cfg.tiling.mode, size=trained_cfg.tiling.size,
                     whole_size=trained_cfg.tiling.whole_size)
    return replace(cfg, seed=trained_cfg.seed, data=data, convert=trained_cfg.convert, tiling=tiling,
                   detector=replace(cfg.detector, size=trained_cfg.detector.size), class_remap=trained_cfg.class_remap)


def evaluate(cfg: XrayConfig, *, run: Run | RunPlace | None = None) -> RunResult:
    """Score a trained run on one split of its data (or of --data) with fixed tiling: tables and a PR curve."""
    trained, weights, class_map = open_detector_run(cfg)
    cfg = with_trained(cfg, trained.config)
    skipped = Skipped()
    dataset, splits = load_data(cfg, skipped)
    mapping = class_map["mapping"]
    unknown = sorted(set(dataset.class_names) - set(mapping))
    if unknown:
        raise ConfigError(f"The data has classes the trained run never saw ({', '.join(unknown)}); evaluate on data "
                          "with the run's classes (see its class_map.json).")
    run = start_run(APP, "evaluate", cfg, run)
    report, seconds = score(cfg, weights, splits[cfg.evaluate.split], mapping, class_map["detector_classes"])
    evaluation.write_evaluation(run, report, cfg.evaluate.split)
    metrics = {cfg.evaluate.split: report, "test": report, "seconds": seconds, "weights": str(weights)}
    return finish_run(run, metrics, skipped, evaluation.per_class_table(report))


# === Prediction ===


def predict(cfg: XrayConfig, *, run: Run | RunPlace | None = None) -> RunResult:
    """Detect objects in new scans: VOC XML, YOLO txt, a predictions.csv row per box, an 8-bit overlay."""
    from keras_medimg.datasets.sources import list_images
    from keras_medimg.preprocessing.bit_depth import read_scan

    trained, weights, class_map = open_detector_run(cfg)
    cfg = with_trained(cfg, trained.config)
    if not cfg.predict.source:
        raise ConfigError("No scans given. Pass an image or a folder: medimg xray predict --weights RUN SOURCE.")
    skipped = Skipped()
    run = start_run(APP, "predict", cfg, run)
    sources = list_images(cfg.predict.source, exclude=[run.dir], skipped=skipped)
    runner, names = detector_runner(cfg, weights)
    plan, rule, convert = tile_plan(cfg), merge_rule(cfg), conversion(cfg)
    rows, done, started, stats = [], 0, time.perf_counter(), {}
    for sample in sources:
        try:
            image = read_scan(sample.path, convert)
        except InvalidInputError as exc:
            if cfg.strict:
                raise
            skipped.add_error(exc)
            continue
        boxes = tiled.predict_scan(runner, image, plan, rule, names, stats)
        rows += evaluation.write_detections(run, sample.id, sample.path, image, boxes, class_map["detector_classes"],
                                            overlay=cfg.predict.overlays)
        done += 1
    seconds = time.perf_counter() - started
    run.write_csv("predictions.csv", rows, evaluation.PREDICTION_COLUMNS)
    metrics = {"images": done, "boxes": len(rows), "seconds": seconds,
               "images_per_second": done / seconds if seconds else 0.0, "weights": str(weights),
               "tiles_run": stats.get("tiles_run", 0)}
    return finish_run(run, metrics, skipped)


# === Ablations ===


def ablation_rows(experiment: str, grid: Sequence[str]) -> list[str]:
    defaults = {"tiling": TILING_ROWS, "augment": AUGMENT_ROWS, "remap": REMAPS}
    if experiment not in defaults:
        raise ConfigError(f"Unknown ablation '{experiment}'; choose tiling, augment or remap.")
    rows = list(grid) or list(defaults[experiment])
    for row in rows:
        _row_config(XrayConfig(), experiment, row)  # refuse a bad row before anything is trained
    return rows


def _row_config(cfg: XrayConfig, experiment: str, row: str) -> XrayConfig:
    """The config of one ablation row (everything else as given)."""
    if experiment == "tiling":
        if row == "none":
            return replace(cfg, tiling=replace(cfg.tiling, mode="none"))
        try:
            tiles, size = (int(v) for v in row.lower().split("x"))
        except ValueError:
            raise ConfigError(f"Tiling row '{row}' is neither 'none' nor TILESxSIZE (e.g. 4x256).") from None
        overlap = min(cfg.tiling.overlap, size // 4)
        return replace(cfg, tiling=replace(cfg.tiling, mode="positive", tiles=tiles, size=size, overlap=overlap))
    if experiment == "augment":
        p = 0.5
        probabilities = {"none": {}, "flip": {"flip": p}, "blur": {"blur": p}, "rbc": {"rbc": p},
                         "noise": {"noise": p}, "combined": {"flip": p, "blur": p, "rbc": p}}
        if row not in probabilities:
            raise ConfigError(f"Augment row '{row}' is none of {', '.join(probabilities)}.")
        off = {"flip": 0.0, "blur": 0.0, "rbc": 0.0, "noise": 0.0}
        return replace(cfg, augment=replace(cfg.augment, **{**off, **probabilities[row]}))
    if row not in REMAPS and not Path(row).is_file():
        raise ConfigError(f"Remap row '{row}' is none of {', '.join(REMAPS)} nor a YAML file.")
    return replace(cfg, class_remap=row)


def ablate(cfg: XrayConfig, experiment: str, *, run: Run | RunPlace | None = None) -> RunResult:
    """Train and test one detector per row (and seed) on the same split; a table of mean +/- std P/R/F1."""
    rows = ablation_rows(experiment, cfg.ablate.grid)
    if cfg.ablate.seeds < 1:
        raise ConfigError(f"ablate.seeds must be at least 1, not {cfg.ablate.seeds}.")
    skipped = Skipped()
    dataset, splits = load_data(cfg, skipped)
    run = start_run(APP, f"ablate-{experiment}", cfg, run)
    _write_splits(run, splits)

    def run_row(row: str, k: int) -> dict[str, Any]:
        row_cfg = replace(_row_config(cfg, experiment, row), seed=cfg.seed + k)
        if row == "score" and not row_cfg.remap.score_run:
            # The study binned classes by the F1 of its original-class model: use this ablation's own.
            original = run.dir / "rows" / "original" / f"seed{k}"
            if not (original / "metrics.json").is_file():
                raise ConfigError("The score row needs the original row first (or remap.score_run); put "
                                  "'original' before 'score' in --grid.")
            row_cfg = replace(row_cfg, remap=replace(row_cfg.remap, score_run=str(original)))
        out = run.dir / "rows" / row / f"seed{k}"
        mapping = class_mapping(row_cfg, dataset.class_names, splits["train"])
        kept, names, seconds = fit_detector(row_cfg, splits, mapping, out / "detector")
        report, _ = score(row_cfg, kept, splits["test"], mapping, names)
        write_json(out / "metrics.json", {"test": report, "train_seconds": seconds})
        return report

    results, table_rows = evaluation.run_seeded_grid(rows, cfg.ablate.seeds, run_row, label=experiment)
    table = evaluation.write_grid_table(run, experiment, table_rows)
    return finish_run(run, {"experiment": experiment, "rows": results}, skipped, table)


# === Export ===


def export(cfg: XrayConfig, *, run: Run | RunPlace | None = None) -> RunResult:
    """The detector as ONNX (dynamic batch: all tiles of a scan in one call) and metadata.json, checked by running
    `predict`'s tiling and merging on a scan with both the ONNX and the PyTorch detector."""
    from keras_medimg.detection.yolo import export_detector_onnx

    trained, weights, class_map = open_detector_run(cfg)
    cfg = with_trained(cfg, trained.config)
    plan, rule = tile_plan(cfg), merge_rule(cfg)
    run = start_run(APP, "export", cfg, run)
    onnx_path = export_detector_onnx(weights, run.path("export", "detector.onnx"), imgsz=plan.imgsz,
                                     atol=cfg.export.atol, dynamic=True)
    check = _check_export(cfg, weights, onnx_path, plan, rule)
    metadata = {
        "format": "onnx", "file": onnx_path.name,
        "input": {"shape": ["tiles", 3, plan.imgsz, plan.imgsz], "dtype": "float32", "range": [0, 1],
                  "channels": "grey repeated into 3"},
        "output": "raw YOLOv5u head (tiles, 4 + classes, anchors): cx cy w h in input pixels, then class scores",
        "conversion_16bit": conversion(cfg).describe(),
        "tiling": {"mode": plan.mode, "tile_size": plan.size, "overlap": plan.overlap, "whole_size": plan.whole_size,
                   "grid": "tiles start every size-overlap px; the last tile of a row/column ends at the border; "
                           "a scan smaller than a tile is zero-padded bottom/right",
                   "none_mode": "longer side resized (INTER_AREA) to whole_size, zero-padded bottom/right"},
        "merge": {"per_tile": f"score >= conf, class-aware NMS IoU {rule.nms_iou}, at most {rule.max_det} boxes",
                  "across_tiles": f"boxes moved to scan pixels, clipped, torchvision batched_nms IoU {rule.merge_iou}, "
                                  + ("across classes" if rule.class_agnostic else "per class"),
                  "conf": rule.conf, "nms_iou": rule.nms_iou, "merge_iou": rule.merge_iou,
                  "class_agnostic": rule.class_agnostic, "max_det": rule.max_det},
        "classes": class_map["detector_classes"], "class_map": class_map["mapping"],
        "check": check,
    }
    write_json(run.path("export", "metadata.json"), metadata)
    return finish_run(run, {"files": [str(onnx_path), str(run.path("export", "metadata.json"))], "check": check})


def _check_export(cfg: XrayConfig, weights: Path, onnx_path: Path, plan: tiled.TilePlan,
                  rule: tiled.MergeRule) -> dict[str, Any]:
    from keras_medimg.datasets.synthetic.xray import make_scan
    from keras_medimg.preprocessing.bit_depth import to_uint8

    scan, _ = make_scan(np.random.default_rng(cfg.seed), cfg.data.demo_width, cfg.data.demo_height)
    image = to_uint8(scan, conversion(cfg)) if cfg.convert.method != "dicom" else to_uint8(scan, Conversion("minmax"))
    torch_run, names = tiled.torch_runner(weights)
    onnx_run = tiled.onnx_runner(onnx_path)
    batch, _, _ = tiled.scan_inputs(image, plan)
    error = float(np.max(np.abs(torch_run(batch) - onnx_run(batch))))
    low = replace(rule, conf=0.01)
    a = tiled.predict_scan(torch_run, image, plan, low, names)
    b = tiled.predict_scan(onnx_run, image, plan, low, names)
    same = len(a) == len(b) and all(np.allclose(x[:4], y[:4], atol=0.05) and x.label == y.label for x, y in zip(a, b))
    if error > cfg.export.atol or not same:
        raise RuntimeError(f"The ONNX detector differs from the PyTorch one on a batch of {len(batch)} tiles (largest "
                           f"raw difference {error:.3g}, boxes equal: {same}); the export is not trustworthy.")
    return {"tiles": int(len(batch)), "max_abs_difference": error, "boxes": len(a), "boxes_equal": same}
