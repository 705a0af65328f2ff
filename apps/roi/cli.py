"""`medimg roi`: Click commands only; the study lives in `pipeline.py`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from keras_medimg.apps.options import (
    AppCommands,
    backend_option,
    config_options,
    print_run_summary,
    resume_option,
    run_options,
    run_place,
    strict_option,
    trained_run_options,
)

_FORMAT = click.Choice(["vindr", "cddcesm", "csv"])


@click.group()
def roi() -> None:
    """ROI-aware benign/malignant mammography (Yoshitsugu et al. 2025).

    Mammograms are windowed (DICOM VOI, MONOCHROME1), breast-cropped and CLAHE-enhanced, then split by whether a
    radiologist's ROI exists and by view (RCC, LCC, RMLO, LMLO); a ConvNeXtV2 or Swin Transformer is trained per
    group and the predictions are merged. The view-only baseline (4 models), a pooled model and the ROI-only rule
    ("malignant if an ROI exists") are trained and scored on the same split. Data: VinDr-Mammo, CDD-CESM or a CSV
    manifest; `medimg roi train` without --data runs on a synthetic VinDr-format demo set.
    """


APP = AppCommands("roi", "keras_medimg.apps.roi.config:RoiAppConfig")
_WEIGHTS = "The folder of a `medimg roi train` run."


def _data_options(func: Callable) -> Callable:
    func = strict_option(func)
    func = click.option("--seed", type=int, default=None, help="Random seed (split, demo data, weights).")(func)
    func = click.option("--dataset", "fmt", type=_FORMAT, default=None, help="Dataset layout (data.format).")(func)
    func = click.option("--data", type=click.Path(), default=None,
                        help="Dataset folder (vindr, cddcesm) or manifest CSV (csv); default: the demo data.")(func)
    return backend_option(config_options(func))


def _run(step: str, cfg: Any, project: str | None, name: str | None, exist_ok: bool):
    """Run the pipeline's `step` (evaluate, predict, export) of a trained run into the run folder asked for."""
    from keras_medimg.apps.roi import pipeline

    return getattr(pipeline, step)(cfg, run=run_place(project, name, exist_ok))


@roi.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["vindr", "cddcesm"]), default="vindr", show_default=True,
              help="On-disk format to write.")
@click.option("--seed", type=int, default=None, help="Random seed of the generator.")
@config_options
def demo_data(out_dir: str, fmt: str, seed: int | None, config_file: str | None, overrides: tuple[str, ...]) -> None:
    """Write a synthetic set in VinDr-Mammo (DICOM + CSVs) or CDD-CESM (JPEG + xlsx + VIA CSV) format to OUT_DIR."""
    from keras_medimg.apps.roi import pipeline

    cfg = APP.resolve(config_file, overrides, {"seed": seed})
    root = pipeline.demo_data(out_dir, cfg, fmt)
    click.echo(f"Demo data written to {root} (train with: medimg roi train --dataset {fmt} --data {root})")


@roi.command()
@_data_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: data.prepared, else a cache folder under $MEDIMG_HOME).")
@click.option("--workers", type=int, default=None, help="Worker processes (data.workers).")
def prepare(data: str | None, fmt: str | None, seed: int | None, strict: bool | None, out_dir: str | None,
            workers: int | None, config_file: str | None, overrides: tuple[str, ...]) -> None:
    """Window, breast-crop, CLAHE and resize every image of the dataset once (parallel, resumable)."""
    from keras_medimg.apps.roi import pipeline

    cfg = APP.resolve(config_file, overrides, {"data.root": data, "data.format": fmt, "seed": seed, "strict": strict,
                                              "data.workers": workers})
    out, samples, skipped = pipeline.prepare(cfg, out_dir)
    click.echo(f"{len(samples)} images prepared in {out} (manifest.csv lists them).")
    if skipped:
        click.echo(f"{len(skipped)} row(s) or image(s) skipped; see {out / 'skipped.csv'} and the reader's messages.")


@roi.command()
@_data_options
@run_options
@click.option("--model", "model", type=click.Choice(["swin", "convnextv2"]), default=None,
              help="Classifier family: swin (keras-hub Swin Transformer) or convnextv2 (ours).")
@click.option("--study", is_flag=True, help="The study's settings: 384 px, learning rate 1e-4, 100 epochs, full-size networks (patchify stem), CLAHE on.")
@click.option("--epochs", type=int, default=None, help="Epochs per group model (train.epochs).")
@click.option("--roi-source", type=click.Choice(["annotation", "detector"]), default=None,
              help="ROI presence at evaluation: the annotations, or a YOLO detector trained on the ROI boxes.")
@resume_option
def train(data: str | None, fmt: str | None, seed: int | None, strict: bool | None, model: str | None, study: bool,
          epochs: int | None, roi_source: str | None, resume: str | None, config_file: str | None,
          overrides: tuple[str, ...], project: str | None, name: str | None, exist_ok: bool) -> None:
    """Train the 8 ROI-aware group models, the 4 view-only baseline models and a pooled model on one split."""
    from keras_medimg.apps.roi import pipeline
    from keras_medimg.apps.roi.config import MODELS, STUDY

    options = {**(STUDY if study else {}), "data.root": data, "data.format": fmt, "seed": seed, "strict": strict,
               "model.backbone": MODELS.get(model), "train.epochs": epochs, "roi.source": roi_source}
    cfg, run = APP.resolve_train(resume=resume, config_file=config_file, overrides=overrides, options=options,
                                 project=project, name=name, exist_ok=exist_ok)
    result = pipeline.train(cfg, run=run, resume=bool(resume))
    _echo_groups(result.metrics["groups"])
    click.echo(result.table)
    click.echo(f"Trained in {result.metrics['train_seconds']:.0f} s.")
    print_run_summary(result.run.dir)


def _echo_groups(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        click.echo(f"  {row['scheme']:>9} {row['group']:<10} {row['train_images']:>4} images "
                   f"({row['train_malignant']} malignant): {row['rule']}" + (f" ({row['reason']})" if row["reason"] else ""))


@roi.command()
@click.option("--data", type=click.Path(), default=None, help="Dataset to evaluate on (default: the run's own data).")
@click.option("--dataset", "fmt", type=_FORMAT, default=None, help="Layout of --data (data.format).")
@click.option("--roi-source", type=click.Choice(["annotation", "detector"]), default=None, help="Where ROI presence comes from.")
@trained_run_options(_WEIGHTS)
def evaluate(weights: str, data: str | None, fmt: str | None, roi_source: str | None, strict: bool | None,
             config_file: str | None, overrides: tuple[str, ...], project: str | None, name: str | None, exist_ok: bool) -> None:
    """Sensitivity, specificity, F-score, accuracy and ROC AUC with bootstrap 95% intervals, per group and merged."""
    cfg = APP.resolve(config_file, overrides, {"predict.weights": weights, "data.root": data, "data.format": fmt,
                                              "roi.source": roi_source, "strict": strict})
    result = _run("evaluate", cfg, project, name, exist_ok)
    click.echo(result.table)
    print_run_summary(result.run.dir)


@roi.command()
@click.argument("source", type=click.Path())
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="CSV with path (or id), view, laterality, roi for images whose header lacks them.")
@click.option("--scheme", type=click.Choice(["roi_aware", "baseline", "pooled"]), default=None, help="Which model set predicts.")
@click.option("--roi-source", type=click.Choice(["annotation", "detector"]), default=None, help="Where ROI presence comes from.")
@click.option("--gradcam", is_flag=True, default=None, help="Also write a Grad-CAM overlay per image.")
@trained_run_options(_WEIGHTS)
def predict(source: str, weights: str, csv_path: str | None, scheme: str | None, roi_source: str | None,
            gradcam: bool | None, strict: bool | None, config_file: str | None, overrides: tuple[str, ...],
            project: str | None, name: str | None, exist_ok: bool) -> None:
    """Route every image of SOURCE (DICOM/PNG/JPEG, file or folder) to its group's model: group, probability, label."""
    cfg = APP.resolve(config_file, overrides, {"predict.weights": weights, "predict.source": source, "predict.csv": csv_path,
                                              "predict.scheme": scheme, "roi.source": roi_source,
                                              "predict.gradcam": gradcam, "strict": strict})
    result = _run("predict", cfg, project, name, exist_ok)
    m = result.metrics
    click.echo(f"Predicted {m['images']} image(s): {m['malignant']} malignant, {m['benign']} benign.")
    print_run_summary(result.run.dir)


@roi.command()
@trained_run_options(_WEIGHTS, strict=False)
def export(weights: str, config_file: str | None, overrides: tuple[str, ...], project: str | None, name: str | None,
           exist_ok: bool) -> None:
    """Export every group model (SavedModel, ONNX, verified) and metadata.json with the routing table."""
    cfg = APP.resolve(config_file, overrides, {"predict.weights": weights})
    result = _run("export", cfg, project, name, exist_ok)
    click.echo(f"Exported {len(result.metrics['models'])} model(s) to {result.run.dir / 'export'}.")
    print_run_summary(result.run.dir)
