"""`medimg concepts`: Click commands only; the study lives in `pipeline.py`."""

from __future__ import annotations

from typing import Any

import click

from keras_medimg.apps.options import (
    backend_option,
    common_options,
    config_options,
    print_run_summary,
    resolve_config,
    resume_option,
    run_options,
)


@click.group()
def concepts() -> None:
    """ImageCLEFmedical concept detection: radiology image -> UMLS concepts (CUIs).

    A DenseNet-121 with a sigmoid head over the MultiLabelBinarizer-encoded training concepts is fine-tuned
    with its early layers frozen; concepts are chosen by thresholding the probabilities (tuned on the
    validation split), and a submission is scored by the official primary F1 (all concepts) and secondary F1
    (the manually validated modality and body-region concepts), as in ImageCLEFmedical 2024 / ROCOv2.
    """


def _config(config_file: str | None, overrides: tuple[str, ...], options: dict[str, Any]):
    from keras_medimg.apps.concepts.config import ConceptsConfig

    return resolve_config(ConceptsConfig, "concepts", config_file, overrides, options)


def _place(project: str | None, name: str | None, exist_ok: bool):
    """Where the run folder goes; the pipeline creates it once its checks have passed."""
    from keras_medimg.runs import RunPlace

    return RunPlace(project, name, exist_ok)


@concepts.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=None, help="Random seed of the generator.")
@config_options
def demo_data(out_dir: str, seed: int | None, config_file: str | None, overrides: tuple[str, ...]) -> None:
    """Write the synthetic ImageCLEF concept set (train/valid/test, concepts, manual concepts, CUI mapping) to OUT_DIR."""
    from keras_medimg.apps.concepts import pipeline

    cfg = _config(config_file, overrides, {"seed": seed})
    root = pipeline.demo_data(out_dir, cfg)
    click.echo(f"Demo data written to {root} (train with: medimg concepts train --data {root})")


@concepts.command()
@common_options
@click.option("--backbone", default=None, help="Registry backbone (model.backbone); the study uses densenet121.")
@click.option("--weights", default=None, help="Backbone weights (model.weights): imagenet or a local file; default random.")
@click.option("--epochs", type=int, default=None, help="Total epochs over both phases (train.epochs).")
@click.option("--image-size", type=int, default=None, help="Input side in pixels (model.image_size).")
@click.option("--study", is_flag=True, help="Use the study's sizes: 224x224 input, batch 32, 30 epochs, 5 head epochs.")
@resume_option
def train(backbone: str | None, weights: str | None, epochs: int | None, image_size: int | None, study: bool,
          resume: str | None, data: str | None, seed: int | None, strict: bool | None, config_file: str | None,
          overrides: tuple[str, ...], project: str | None, name: str | None, exist_ok: bool) -> None:
    """Train a concept detector and tune its thresholds (on the demo data when --data is not given)."""
    from keras_medimg.apps.concepts import pipeline
    from keras_medimg.apps.concepts.config import STUDY
    from keras_medimg.runs import open_run

    options = dict(STUDY) if study else {}
    options.update({"data.root": data, "seed": seed, "strict": strict, "model.backbone": backbone,
                    "model.weights": weights, "train.epochs": epochs, "model.image_size": image_size})
    if resume:
        run = open_run(resume, "concepts", "train")
        cfg = _config(config_file or str(run.dir / "config.yaml"), overrides, options)
    else:
        run = _place(project, name, exist_ok)
        cfg = _config(config_file, overrides, options)
    result = pipeline.train(cfg, run=run, resume=bool(resume))
    click.echo("\nThresholds on the validation split:")
    click.echo(result.table)
    print_run_summary(result.run.dir)


@concepts.command()
@click.option("--weights", required=True, type=click.Path(), help="A `concepts train` run folder, or its .keras file.")
@click.option("--images", type=click.Path(), default=None,
              help="A folder of images, or a CSV with an ID column (default: the demo test split).")
@click.option("--strict", is_flag=True, default=None, help="Stop at the first unreadable image instead of skipping it.")
@backend_option
@config_options
@run_options
def predict(weights: str, images: str | None, strict: bool | None, config_file: str | None,
            overrides: tuple[str, ...], project: str | None, name: str | None, exist_ok: bool) -> None:
    """Predict concepts and write submission.csv (official format) and predictions.csv."""
    from keras_medimg.apps.concepts import pipeline

    cfg = _config(config_file, overrides, {"predict.weights": weights, "predict.images": images, "strict": strict})
    result = pipeline.predict(cfg, run=_place(project, name, exist_ok))
    m = result.metrics
    click.echo(f"{m['predicted']} of {m['images']} images predicted ({m['concepts_per_image']:.2f} concepts per image, "
               f"{m['images_per_second']:.1f} images/s). Submission: {m['submission']}")
    print_run_summary(result.run.dir)


@concepts.command()
@click.option("--submission", required=True, type=click.Path(), help="The run file to score (ID,CUI;CUI;...).")
@click.option("--truth", type=click.Path(), default=None,
              help="Ground truth: {split}_concepts.csv or a split folder (default: the demo test split).")
@click.option("--manual", type=click.Path(), default=None,
              help="Manual concepts for the secondary F1 (default: <truth>_manual.csv when it exists).")
@click.option("--mapping", type=click.Path(), default=None, help="cui_mapping.csv for concept names (default: beside the truth).")
@config_options
@run_options
def evaluate(submission: str, truth: str | None, manual: str | None, mapping: str | None, config_file: str | None,
             overrides: tuple[str, ...], project: str | None, name: str | None, exist_ok: bool) -> None:
    """Validate a submission as the official evaluator does and print its primary and secondary F1."""
    from keras_medimg.apps.concepts import pipeline

    cfg = _config(config_file, overrides, {"evaluate.submission": submission, "evaluate.truth": truth,
                                           "evaluate.manual": manual, "evaluate.mapping": mapping})
    result = pipeline.evaluate(cfg, run=_place(project, name, exist_ok))
    m = result.metrics
    click.echo(result.table)
    click.echo(f"\nprimary F1 {m['primary_f1']:.4f} ({m['images']} images)   secondary F1 {m['secondary_f1']:.4f} "
               f"({m['secondary_images']} images)   micro F1 {m['micro_f1']:.4f}   macro F1 {m['macro_f1']:.4f}")
    click.echo(f"baseline (top-{m['baseline']['k']} most frequent concepts for every image): primary F1 "
               f"{m['baseline']['primary_f1']:.4f}")
    print_run_summary(result.run.dir)


@concepts.command()
@click.option("--weights", required=True, type=click.Path(), help="A `concepts train` run folder, or its .keras file.")
@backend_option
@config_options
@run_options
def export(weights: str, config_file: str | None, overrides: tuple[str, ...], project: str | None, name: str | None,
           exist_ok: bool) -> None:
    """Export the trained model as SavedModel and ONNX with its concepts and thresholds in metadata.json."""
    from keras_medimg.apps.concepts import pipeline

    cfg = _config(config_file, overrides, {"predict.weights": weights})
    result = pipeline.export(cfg, run=_place(project, name, exist_ok))
    for fmt, path in result.metrics["files"].items():
        click.echo(f"{fmt}: {path} (max abs diff {result.metrics['max_abs_diff'][fmt]:.2e})")
    click.echo(f"metadata: {result.metrics['metadata']}")
    print_run_summary(result.run.dir)
