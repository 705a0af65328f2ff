"""`medimg xray`: Click commands only; the study lives in `pipeline.py`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from keras_medimg.apps.options import (AppCommands, common_options, print_run_summary, resume_option, run_place,
                                       trained_run_options)


@click.group()
def xray() -> None:
    """Tiled YOLOv5 anomaly (contraband) detection in 16-bit body X-rays.

    Training uses random positive tiles cut afresh every epoch from the full-resolution 16-bit scans, with the
    study's augmentations; at test time a fixed overlapping grid of tiles goes through the detector in one batch
    and the boxes are merged back into the scan. Classes can be remapped (original, score, size, binary,
    class-agnostic). Data: PASCAL VOC (standard or labelImg layout), 16/8-bit PNG/TIFF or DICOM.
    """


APP = AppCommands("xray", "keras_medimg.apps.xray.config:XrayConfig")
APP.add_demo_data(xray, "keras_medimg.apps.xray.pipeline:demo_data",
                  "Write the synthetic 16-bit body-scan set (standard VOC layout, the study's 18 classes) to OUT_DIR.")
TRAINED = "The folder of a `xray train` run."


def _run(step: str, cfg: Any, place: tuple[str | None, str | None, bool], *args: Any,
         report: Callable[[Any], list[str]]) -> None:
    """Run `pipeline.<step>(cfg, *args)` in the run folder `place` (--project, --name, --exist-ok), echo the lines
    `report(result)` makes of its result, and end with the run summary."""
    from keras_medimg.apps.xray import pipeline

    result = getattr(pipeline, step)(cfg, *args, run=run_place(*place))
    for line in report(result):
        click.echo(line)
    print_run_summary(result.run.dir)


def _line(report: dict[str, Any]) -> str:
    return (f"precision {report['precision']:.4f}, recall {report['recall']:.4f}, F1 {report['f1']:.4f}, "
            f"mAP50 {report['map50']:.4f} (conf {report['conf']}, IoU {report['iou']})")


_tiling = click.option("--tiling", type=click.Choice(["positive", "none"]), default=None,
                       help="positive = random positive tiles (tiling.mode); none = whole scans.")
_runtime = click.option("--runtime", type=click.Choice(["onnx", "torch"]), default=None,
                        help="Detector runtime (predict.runtime): torch = PyTorch (default); onnx = onnxruntime on "
                             "the detector exported once per checkpoint (cached in $MEDIMG_HOME/onnx), CPU only.")
_remap = click.option("--class-remap", "class_remap", default=None,
                      help="original | score | size | binary | agnostic | a YAML file {class: new name}.")


@xray.command()
@common_options
@_tiling
@_remap
@click.option("--size", type=click.Choice(["n", "s", "m", "l", "x"]), default=None, help="YOLOv5u size (detector.size).")
@click.option("--epochs", type=int, default=None, help="Training epochs (detector.epochs).")
@click.option("--weights", default=None, help="A local YOLOv5u .pt to start from (detector.weights); default: scratch.")
@resume_option
def train(tiling: str | None, class_remap: str | None, size: str | None, epochs: int | None, weights: str | None,
          resume: str | None, data: str | None, seed: int | None, strict: bool | None, config_file: str | None,
          overrides: tuple[str, ...], project: str | None, name: str | None, exist_ok: bool) -> None:
    """Train YOLOv5u on positive tiles (demo data without --data) and test it with fixed tiling.

    With --resume RUN_DIR a killed run continues: an unfinished detector training resumes from Ultralytics' last
    checkpoint (detector/train/weights/last.pt: weights, optimizer and epoch count) when it was trained with the
    same detector.epochs, tiling size and detector.batch, and is trained again otherwise; a finished detector
    (weights/detector.pt) is kept and only the test runs again.
    """
    from keras_medimg.apps.xray import pipeline

    options = {"data.root": data, "seed": seed, "strict": strict, "tiling.mode": tiling, "class_remap": class_remap,
               "detector.size": size, "detector.epochs": epochs, "detector.weights": weights}
    cfg, run = APP.resolve_train(resume=resume, config_file=config_file, overrides=overrides, options=options,
                                 project=project, name=name, exist_ok=exist_ok)
    result = pipeline.train(cfg, run=run, resume=bool(resume))
    click.echo(f"\nTest ({result.metrics['images']['test']} scans, fixed tiling): {_line(result.metrics['test'])}")
    click.echo(f"Training took {result.metrics['train_seconds']:.0f} s"
               + (" in this session (resumed)." if resume else "."))
    click.echo(result.table)
    print_run_summary(result.run.dir)


@xray.command()
@click.argument("source", type=click.Path())
@click.option("--conf", type=float, default=None, help="Least score of a reported box (predict.conf).")
@_runtime
@trained_run_options(TRAINED)
def predict(source: str, weights: str, conf: float | None, runtime: str | None, strict: bool | None,
            config_file: str | None, overrides: tuple[str, ...], project: str | None, name: str | None,
            exist_ok: bool) -> None:
    """Detect objects in SOURCE (a scan or a folder): VOC XML, YOLO txt, predictions.csv, overlays."""
    cfg = APP.resolve(config_file, overrides, {"predict.weights": weights, "predict.source": source,
                                               "predict.conf": conf, "predict.runtime": runtime, "strict": strict})

    def found(result: Any) -> list[str]:
        m = result.metrics
        return [f"Found {m['boxes']} box(es) in {m['images']} scan(s) at {m['images_per_second']:.2f} scans/s."]

    _run("predict", cfg, (project, name, exist_ok), report=found)


@xray.command()
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="VOC set to evaluate on (default: the data the run was trained on, same split).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default=None, help="Split (evaluate.split).")
@_runtime
@trained_run_options(TRAINED)
def evaluate(weights: str, data: str | None, split: str | None, runtime: str | None, strict: bool | None,
             config_file: str | None, overrides: tuple[str, ...], project: str | None, name: str | None,
             exist_ok: bool) -> None:
    """Precision, recall, F1 at IoU 0.5 per class and overall, mAP50, PR curve (fixed tiling)."""
    cfg = APP.resolve(config_file, overrides, {"predict.weights": weights, "data.root": data, "evaluate.split": split,
                                               "predict.runtime": runtime, "strict": strict})
    _run("evaluate", cfg, (project, name, exist_ok),
         report=lambda result: [f"{cfg.evaluate.split}: {_line(result.metrics['test'])}", result.table])


@xray.command()
@click.argument("experiment", type=click.Choice(["tiling", "augment", "remap"]))
@common_options
@click.option("--grid", default=None,
              help="Comma-separated rows, e.g. none,1x512,2x384,4x256 | none,flip,blur,rbc,noise,combined | "
                   "original,score,size,binary,agnostic.")
@click.option("--seeds", type=int, default=None, help="Repeats of each row (ablate.seeds); mean +/- std.")
@click.option("--epochs", type=int, default=None, help="Training epochs of every row (detector.epochs).")
def ablate(experiment: str, grid: str | None, seeds: int | None, epochs: int | None, data: str | None,
           seed: int | None, strict: bool | None, config_file: str | None, overrides: tuple[str, ...],
           project: str | None, name: str | None, exist_ok: bool) -> None:
    """Run one of the study's experiments on one split: a CSV, a Markdown table and a chart."""
    rows = [r.strip() for r in grid.split(",") if r.strip()] if grid else None
    cfg = APP.resolve(config_file, overrides, {"ablate.grid": rows, "ablate.seeds": seeds, "data.root": data,
                                               "seed": seed, "strict": strict, "detector.epochs": epochs})
    _run("ablate", cfg, (project, name, exist_ok), experiment, report=lambda result: [result.table])


@xray.command()
@trained_run_options(TRAINED, strict=False)
def export(weights: str, config_file: str | None, overrides: tuple[str, ...], project: str | None, name: str | None,
           exist_ok: bool) -> None:
    """Export the detector as ONNX with metadata.json (tiling, merge rule, classes, 16-bit conversion), checked."""
    cfg = APP.resolve(config_file, overrides, {"predict.weights": weights})

    def exported(result: Any) -> list[str]:
        check = result.metrics["check"]
        return [f"Exported: {', '.join(result.metrics['files'])}",
                f"Check on {check['tiles']} tiles: largest difference {check['max_abs_difference']:.2g}, "
                f"boxes equal: {check['boxes_equal']}"]

    _run("export", cfg, (project, name, exist_ok), report=exported)
