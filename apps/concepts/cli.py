"""`medimg concepts`: Click commands only; the study lives in `pipeline.py`."""

from __future__ import annotations

import click

from keras_medimg.apps.options import (
    AppCommands,
    common_options,
    config_options,
    print_run_summary,
    resume_option,
    run_options,
    run_place,
    trained_run_options,
)


@click.group()
def concepts() -> None:
    """ImageCLEFmedical concept detection: radiology image -> UMLS concepts (CUIs).

    A DenseNet-121 with a sigmoid head over the MultiLabelBinarizer-encoded training concepts is fine-tuned
    with its early layers frozen; concepts are chosen by thresholding the probabilities (tuned on the
    validation split), and a submission is scored by the official primary F1 (all concepts) and secondary F1
    (the manually validated modality and body-region concepts), as in ImageCLEFmedical 2024 / ROCOv2.
    """


APP = AppCommands("concepts", "keras_medimg.apps.concepts.config:ConceptsConfig")
APP.add_demo_data(concepts, "keras_medimg.apps.concepts.pipeline:demo_data",
                  "Write the synthetic ImageCLEF concept set (train/valid/test, concepts, manual concepts, CUI mapping) to OUT_DIR.")


@concepts.command()
@common_options
@click.option("--backbone", default=None, help="Registry backbone (model.backbone); the study uses densenet121.")
@click.option("--weights", default=None, help="Backbone weights (model.weights): imagenet or a local file; default random.")
@click.option("--epochs", type=int, default=None, help="Total epochs over both phases (train.epochs).")
@click.option("--image-size", type=int, default=None, help="Input side in pixels (model.image_size).")
@click.option("--study", type=click.Choice(["model1", "model2"]), default=None, is_flag=False, flag_value="model2",
              help="The paper's settings (Table 5): model1 = run 421 (DenseNet-121, first 276 layers frozen, 255 px, "
                   "lr 0.001 x0.9 every 100 steps, softmax head), model2 = runs 422/425 (MultiLabelBinarizer + "
                   "sigmoid, 224 px, head then fine-tuning); both with ImageNet weights, batch 32 and fixed "
                   "thresholds 0.3 and 0.5 next to the tuned one. --study alone is model2. Options and --set win.")
@click.option("--train-with-valid", is_flag=True, default=None,
              help="Train on train + valid together (the paper's final models; data.train_with_valid). Thresholds "
                   "then come from thresholds.from_run, else thresholds.fixed[0].")
@resume_option
def train(backbone: str | None, weights: str | None, epochs: int | None, image_size: int | None, study: str | None,
          train_with_valid: bool | None, resume: str | None, data: str | None, seed: int | None, strict: bool | None,
          config_file: str | None, overrides: tuple[str, ...], project: str | None, name: str | None, exist_ok: bool) -> None:
    """Train a concept detector and choose its thresholds (on the demo data when --data is not given).

    Prints the run table: F1 and secondary F1 on the validation split at each fixed threshold and at the saved
    thresholds, beside the paper's Table 5 (also in runs.csv).
    """
    from keras_medimg.apps.concepts import pipeline
    from keras_medimg.apps.concepts.config import STUDIES

    options = dict(STUDIES[study]) if study else {}
    options.update({"data.root": data, "seed": seed, "strict": strict, "model.backbone": backbone,
                    "model.weights": weights, "train.epochs": epochs, "model.image_size": image_size,
                    "data.train_with_valid": train_with_valid})
    cfg, run = APP.resolve_train(resume=resume, config_file=config_file, overrides=overrides,
                             options=options, project=project, name=name, exist_ok=exist_ok)
    result = pipeline.train(cfg, run=run, resume=bool(resume))
    click.echo("\nThresholds and runs on the validation split:")
    click.echo(result.table)
    print_run_summary(result.run.dir)


@concepts.command()
@click.option("--images", type=click.Path(), default=None,
              help="A folder of images, or a CSV with an ID column (default: the demo test split).")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="One threshold for every concept instead of the saved ones (predict.threshold), e.g. 0.3 or 0.5.")
@click.option("--gradcam", is_flag=True, default=None,
              help="Also write a Grad-CAM overlay per (image, predicted concept): gradcam/<ID>_<CUI>.png.")
@trained_run_options("A `concepts train` run folder, or its .keras file.")
def predict(weights: str, images: str | None, threshold: float | None, gradcam: bool | None, strict: bool | None,
            config_file: str | None, overrides: tuple[str, ...], project: str | None, name: str | None,
            exist_ok: bool) -> None:
    """Predict concepts and write submission.csv (official format) and predictions.csv."""
    from keras_medimg.apps.concepts import pipeline

    cfg = APP.resolve(config_file, overrides, {"predict.weights": weights, "predict.images": images, "strict": strict,
                                               "predict.threshold": threshold, "predict.gradcam": gradcam})
    result = pipeline.predict(cfg, run=run_place(project, name, exist_ok))
    m = result.metrics
    click.echo(f"{m['predicted']} of {m['images']} images predicted ({m['concepts_per_image']:.2f} concepts per image, "
               f"{m['images_per_second']:.1f} images/s, threshold {m['threshold']}). Submission: {m['submission']}")
    if m["gradcam"]:
        click.echo(f"Grad-CAM: {m['gradcam']} overlays, one per predicted concept, listed in predictions.csv.")
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

    cfg = APP.resolve(config_file, overrides, {"evaluate.submission": submission, "evaluate.truth": truth,
                                           "evaluate.manual": manual, "evaluate.mapping": mapping})
    result = pipeline.evaluate(cfg, run=run_place(project, name, exist_ok))
    m = result.metrics
    click.echo(result.table)
    click.echo(f"\nprimary F1 {m['primary_f1']:.4f} ({m['images']} images)   secondary F1 {m['secondary_f1']:.4f} "
               f"({m['secondary_images']} images)   micro F1 {m['micro_f1']:.4f}   macro F1 {m['macro_f1']:.4f}")
    click.echo(f"baseline (top-{m['baseline']['k']} most frequent concepts for every image): primary F1 "
               f"{m['baseline']['primary_f1']:.4f}")
    print_run_summary(result.run.dir)


@concepts.command()
@trained_run_options("A `concepts train` run folder, or its .keras file.", strict=False)
def export(weights: str, config_file: str | None, overrides: tuple[str, ...], project: str | None, name: str | None,
           exist_ok: bool) -> None:
    """Export the trained model as SavedModel and ONNX with its concepts and thresholds in metadata.json."""
    from keras_medimg.apps.concepts import pipeline

    cfg = APP.resolve(config_file, overrides, {"predict.weights": weights})
    result = pipeline.export(cfg, run=run_place(project, name, exist_ok))
    for fmt, path in result.metrics["files"].items():
        click.echo(f"{fmt}: {path} (max abs diff {result.metrics['max_abs_diff'][fmt]:.2e})")
    click.echo(f"metadata: {result.metrics['metadata']}")
    print_run_summary(result.run.dir)
