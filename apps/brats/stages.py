"""The brats stages that sit beside the main chain in `pipeline.py`: the segment stage (SAM fine-tuning, Dice of
SAM / GrabCut / Otsu / box against the ground-truth masks), the median-filtered box set of `data.denoise_median`,
the classify stage with its crop-source comparison and test grid, and the exported pipeline's metadata."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from keras_medimg.apps.brats import pipeline
from keras_medimg.apps.brats.config import BratsConfig
from keras_medimg.datasets.records import Skipped
from keras_medimg.detection.lesions import mask_index
from keras_medimg.errors import InvalidInputError
from keras_medimg.metrics.detection import format_detection_line
from keras_medimg.runs import Run, start_run

log = logging.getLogger("keras_medimg.brats")


def box_set(cfg: BratsConfig, root: Path, folder: Path) -> Path:
    """The detector's data.yaml: the box set, or (data.denoise_median) its median-filtered copy in `folder`."""
    from keras_medimg.detection.lesions import denoised_box_set

    source = pipeline.detection_yaml(cfg, root)
    if not cfg.data.denoise_median:
        return source
    target = folder / "detect" / f"box_set_median{cfg.data.denoise_median}" / "data.yaml"
    return target if target.is_file() else denoised_box_set(source, target.parent, cfg.data.denoise_median)


def train_segment_stage(cfg: BratsConfig, run: Run, root: Path) -> dict[str, Any]:
    """SAM: fine-tune the mask decoder on ground-truth masks (segment.finetune) or state the fallback; then Dice of
    the box, GrabCut, Otsu and SAM against those masks (when the dataset has masks)."""
    from keras_medimg.detection.segment_fallback import dice_report

    chain, record = pipeline._chain_for(cfg, None)
    predictor = chain.sam_predictor
    masks = mask_index(cfg.data.masks or root / "masks")
    samples = [s for s in pipeline.classification_samples(root, "Training", cfg.data.classes) if s.path.stem in masks]
    pairs = [(s.path, masks[s.path.stem]) for s in samples[: cfg.segment.max_images]]
    if predictor is not None and cfg.segment.finetune:
        from keras_medimg.detection.sam import finetune_on_masks

        if not pairs:
            raise InvalidInputError(root / "masks", "no ground-truth masks match the Training images (masks/<id>.png); "
                                    "SAM fine-tuning needs them.")
        seg = cfg.segment
        record.update(finetune_on_masks(predictor, pairs, run.path("weights", pipeline.DECODER_FILE), epochs=seg.finetune_epochs,
                                        learning_rate=seg.finetune_learning_rate, seed=cfg.seed,
                                        denoise_median=cfg.data.denoise_median, log=log.info))
        chain, _ = pipeline._chain_for(cfg, None, run.path("weights", pipeline.DECODER_FILE), announce=False)
    elif cfg.segment.finetune:
        record["finetune"] = "skipped: fine-tuning needs segment.checkpoint"
        log.info("[segment] segment.finetune is set but there is no SAM checkpoint, so nothing is fine-tuned.")
    if pairs:
        record["dice"] = dice_report(pairs, sam_predictor=chain.sam_predictor, denoise_median=cfg.data.denoise_median)
        log.info(f"[segment] Dice on {record['dice']['images']} Training masks (ground-truth box as prompt): "
                 + ", ".join(f"{k} {v:.3f}" for k, v in record["dice"]["dice"].items() if v is not None))
    return record


def classify_stage(cfg: BratsConfig, run: Run, root: Path, skipped: Skipped, metrics: dict[str, Any],
                    resume: bool) -> tuple[dict[str, Any], str]:
    """Crop, train and test the classifier on `classify.crop_source`, then the same classifier settings on each
    source of `classify.compare_sources` (sub-runs sources/<source>/), to show where accuracy is lost; write the
    test grid. Returns the classify record and the per-class table of the main classifier."""
    from keras_medimg.detection.lesions import write_lesion_grid
    import csv

    main = cfg.classify.crop_source
    record: dict[str, Any] = {"backbone": cfg.model.backbone, "image_size": cfg.model.image_size, "crop_source": main,
                              "network": {"widths": cfg.network.widths, "depths": cfg.network.depths}
                              if pipeline.uses_network(cfg) else None,
                              "sources": {}}
    table = ""
    for source in dict.fromkeys([main, *cfg.classify.compare_sources]):
        if source == "truth" and not mask_index(cfg.data.masks or root / "masks"):
            record["sources"][source] = "skipped: the dataset has no ground-truth masks"
            continue
        tick = time.perf_counter()
        sub = run if source == main else start_run(pipeline.APP, "train", cfg, Run(dir=run.subdir(f"sources/{source}"),
                                                                          app=pipeline.APP, mode="train"))
        crops, sam_record = pipeline.make_crops(cfg, run, root, skipped, source=source, announce="segment" not in metrics)
        if source == "detector":
            metrics.setdefault("segment", sam_record)
        model = pipeline.train_classifier(cfg, sub, crops, skipped, resume=resume and source == main)
        report, source_table = pipeline.evaluate_classifier(model, cfg, sub, crops["test"], skipped)
        record["sources"][source] = {"accuracy": report["accuracy"], "macro_f1": report["macro"]["f1"],
                                     "seconds": time.perf_counter() - tick}
        log.info(f"[classify] {source} crops: test accuracy {report['accuracy']:.4f}, macro F1 {report['macro']['f1']:.4f}")
        if source == main:
            record["test"], table = report, source_table
    if main == "detector" and (run.dir / "weights" / pipeline.DETECTOR_FILE).is_file():
        chain, _ = pipeline._chain_for(cfg, run.dir / "weights" / pipeline.DETECTOR_FILE, announce=False)
        with open(run.dir / "predictions.csv", newline="") as fh:
            predicted = {row["id"]: row["predicted"] for row in csv.DictReader(fh)}
        write_lesion_grid(run.path("plots", "test_grid.png"), pipeline.classification_samples(root, "Testing", cfg.data.classes),
                          chain, predicted)
    return record, table


def sources_table(metrics: dict[str, Any]) -> str:
    """Where accuracy is lost: the detector's test F1 and the classifier's test accuracy / macro F1 per crop source."""
    from keras_medimg.reporting import markdown_table

    names = {"truth": "ground-truth crops", "whole": "whole images", "detector": "detected crops"}
    rows = [{"classifier trained and tested on": names[k], "accuracy": v["accuracy"], "macro F1": v["macro_f1"],
             "seconds": round(v["seconds"])} for k, v in metrics.get("classify", {}).get("sources", {}).items()
            if isinstance(v, dict)]
    detect = metrics.get("detect", {}).get("test")
    head = f"Detector on the test split: {format_detection_line(detect)}\n\n" if detect else ""
    return head + markdown_table(rows, ["classifier trained and tested on", "accuracy", "macro F1", "seconds"])


def pipeline_metadata(cfg: BratsConfig, folder: Path) -> dict[str, Any]:
    """How to run the exported pipeline: stage order, classes, input sizes and preprocessing."""
    from keras_medimg.detection.lesions import chain_metadata

    d, seg, c = cfg.detect, cfg.segment, cfg.classify
    chain = chain_metadata(detector_model=d.model, imgsz=d.imgsz, conf=d.conf, iou=d.iou, sam_model_type=seg.model_type,
                           sam_checkpoint=seg.checkpoint, fallback=seg.fallback, margin=c.margin,
                           mask_background=c.mask_background)
    classify = {"stage": "classify", "backbone": cfg.model.backbone,
                "network": asdict(cfg.network) if pipeline.uses_network(cfg) else None,
                "input_size": cfg.model.image_size, "classes": cfg.data.classes, "crop": chain["crop"],
                "preprocessing": {"grayscale": True, "channels": 3, "resize": "plain", "denoise_median": c.denoise_median,
                                  "scale": "[0, 1]", "normalization": pipeline._normalization(cfg).to_dict()}}
    chain["detect"]["denoise_median"] = chain["segment"]["denoise_median"] = cfg.data.denoise_median  # before each
    return {"app": pipeline.APP, "trained_run": str(folder), "classes": cfg.data.classes,
            "stages": [chain["detect"], chain["segment"], classify]}
