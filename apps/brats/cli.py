"""`medimg brats`: Click commands only; the study lives in `pipeline.py`."""

from __future__ import annotations

from typing import Any

import click

from keras_medimg.apps.options import (
    AppCommands,
    common_options,
    print_run_summary,
    resume_option,
    run_place,
    trained_run_options,
)


@click.group()
def brats() -> None:
    """Brain-tumour MRI: YOLOv8 detection -> SAM segmentation -> CNN classification.

    YOLOv8 finds the tumour, the Segment Anything Model outlines it from that box, and a CNN (the study's
    InceptionV3, DenseNet121, Xception, VGG16 or EfficientNetV2B3; the offline demo: a small ConvNeXt V2 from
    random weights, network.widths) classifies the lesion cropped with its background removed into glioma,
    meningioma, pituitary or no tumour. Data: the Kaggle brain-tumour MRI layout plus a
    YOLO box set; grey-scale, median-filter denoising, 224x224, rotation/zoom/brightness augmentation.
    """


STUDY_HELP = ("The paper's settings in one switch: 224 px, grey-scale + median filter before every stage (detector, "
              "SAM, crops), rotation 0-45, zoom 0.5-2, brightness, contrast and flip augmentation, ImageNet weights "
              "from a local file (--weights, or Keras' cache) for EfficientNetV2B3 at its published size (or the "
              "--backbone given), SAM fine-tuning on (needs --sam-checkpoint). "
              "Options and --set still win; config.yaml records the result.")

APP = AppCommands("brats", "keras_medimg.apps.brats.config:BratsConfig")
APP.add_demo_data(brats, "keras_medimg.apps.brats.pipeline:demo_data",
                  "Write the synthetic brain-MRI set to OUT_DIR: Training/Testing class folders, a YOLO box set, masks.")


@brats.command()
@common_options
@click.option("--stage", type=click.Choice(["detect", "segment", "classify", "all"]), default="all", show_default=True,
              help="Which stage(s) to train.")
@click.option("--backbone", default=None,
              help="Classifier backbone (model.backbone), e.g. efficientnetv2b3; network.widths sizes a ConvNeXtV2 "
                   "or Swin one (default convnextv2_atto at widths 16-128).")
@click.option("--epochs", type=int, default=None, help="Classifier epochs (train.epochs).")
@click.option("--detect-epochs", type=int, default=None, help="Detector epochs (detect.epochs).")
@click.option("--study", is_flag=True, default=False, help=STUDY_HELP)
@click.option("--weights", default=None,
              help="Classifier backbone weights (model.weights): a local .h5/.keras file, or a folder of each "
                   "backbone's published ImageNet file; with --study, the ImageNet weights it needs.")
@click.option("--sam-checkpoint", default=None, help="Local SAM checkpoint (segment.checkpoint), e.g. sam_vit_b_01ec64.pth.")
@resume_option
def train(stage: str, backbone: str | None, epochs: int | None, detect_epochs: int | None, study: bool,
          weights: str | None, sam_checkpoint: str | None, resume: str | None, data: str | None, seed: int | None,
          strict: bool | None, config_file: str | None, overrides: tuple[str, ...], project: str | None,
          name: str | None, exist_ok: bool) -> None:
    """Train detect -> segment -> classify (default: all stages, on the demo data when --data is not given).

    Prints the detector's test line, the classifier's per-class table, and the classifier trained on each crop
    source (detected crops, ground-truth crops, whole images: classify.compare_sources).
    """
    from keras_medimg.apps.brats import pipeline, stages
    from keras_medimg.apps.brats.study import study_options

    options = study_options([backbone or _study_backbone(config_file, overrides)], weights) if study else {}
    options.update({"data.root": data, "seed": seed, "strict": strict, "model.backbone": backbone,
                    "model.weights": weights if not study else None, "segment.checkpoint": sam_checkpoint,
                    "train.epochs": epochs, "detect.epochs": detect_epochs})
    cfg, run = APP.resolve_train(resume=resume, config_file=config_file, overrides=overrides,
                             options=options, project=project, name=name, exist_ok=exist_ok)
    result = pipeline.train(cfg, stage, run=run, resume=bool(resume))
    classify = result.metrics.get("classify")
    if classify:
        report = classify["test"]
        click.echo(f"\nClassifier ({classify['backbone']}) on the test split: accuracy {report['accuracy']:.4f}, "
                   f"macro F1 {report['macro']['f1']:.4f}")
        click.echo(result.table)
        click.echo(stages.sources_table(result.metrics))
    print_run_summary(result.run.dir)


def _study_backbone(config_file: str | None, overrides: tuple[str, ...]) -> str:
    """The backbone a --study run fine-tunes: one chosen in the config file or --set, else the study's best."""
    from keras_medimg.apps.brats.config import STUDY, BratsConfig

    chosen = APP.resolve(config_file, overrides).model.backbone
    return chosen if chosen != BratsConfig().model.backbone else str(STUDY["model.backbone"])


@brats.command()
@click.argument("source", type=click.Path(exists=False))
@click.option("--gradcam", is_flag=True, default=None, help="Also write a Grad-CAM overlay per image.")
@trained_run_options("The folder of a `brats train` run.")
def predict(source: str, weights: str, gradcam: bool | None, **given: Any) -> None:
    """Run the whole pipeline on SOURCE (an image or a folder): class, probability, box, mask, overlay."""
    from keras_medimg.apps.brats import pipeline

    cfg, place = APP.trained_step(given, {"predict.weights": weights, "predict.source": source, "predict.gradcam": gradcam})
    result = pipeline.predict(cfg, run=place)
    m = result.metrics
    click.echo(f"Predicted {m['images']} image(s) at {m['images_per_second']:.2f} images/s.")
    print_run_summary(result.run.dir)


@brats.command()
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="Dataset to evaluate on (default: the data the run was trained on).")
@trained_run_options("The folder of a `brats train` run.")
def evaluate(weights: str, data: str | None, **given: Any) -> None:
    """Detector precision/recall/F1/accuracy/mAP50 and classifier accuracy, macro P/R/F1, confusion matrix."""
    from keras_medimg.apps.brats import pipeline
    from keras_medimg.metrics.detection import format_detection_line

    cfg, place = APP.trained_step(given, {"predict.weights": weights, "data.root": data})
    result = pipeline.evaluate(cfg, run=place)
    detect = result.metrics.get("detect")
    if detect:
        click.echo("Detector: " + format_detection_line(detect))
    report = result.metrics["classify"]["test"]
    click.echo(f"Classifier: accuracy {report['accuracy']:.4f}, macro precision {report['macro']['precision']:.4f}, "
               f"recall {report['macro']['recall']:.4f}, F1 {report['macro']['f1']:.4f}")
    click.echo(result.table)
    print_run_summary(result.run.dir)


@brats.command()
@common_options
@click.option("--backbones", default=None,
              help="Comma-separated backbones, e.g. inceptionv3,densenet121,xception,vgg16,efficientnetv2b3.")
@click.option("--epochs", type=int, default=None, help="Classifier epochs for each backbone (train.epochs).")
@click.option("--study", is_flag=True, default=False, help=STUDY_HELP)
@click.option("--weights", default=None,
              help="A folder holding each backbone's published ImageNet file (model.weights; e.g. "
                   "efficientnetv2-b3_notop.h5), or one file when one backbone is compared.")
@click.option("--sam-checkpoint", default=None, help="Local SAM checkpoint (segment.checkpoint), e.g. sam_vit_b_01ec64.pth.")
def compare(backbones: str | None, epochs: int | None, study: bool, weights: str | None, sam_checkpoint: str | None,
            data: str | None, seed: int | None, strict: bool | None, config_file: str | None,
            overrides: tuple[str, ...], project: str | None, name: str | None, exist_ok: bool) -> None:
    """Train several backbones on the same crops and split; write a CSV, a Markdown table and a bar chart, and
    print the paper's Table 4 layout (accuracy, precision, recall, F1 per backbone)."""
    from keras_medimg.apps.brats import pipeline
    from keras_medimg.apps.brats.study import study_options

    names = [b.strip() for b in backbones.split(",") if b.strip()] if backbones else None
    options = study_options(names or APP.resolve(config_file, overrides).compare.backbones, weights) if study else {}
    options.update({"compare.backbones": names, "data.root": data, "seed": seed, "strict": strict,
                    "train.epochs": epochs, "model.weights": weights if not study else None,
                    "segment.checkpoint": sam_checkpoint})
    cfg = APP.resolve(config_file, overrides, options)
    result = pipeline.compare(cfg, run=run_place(project, name, exist_ok))
    click.echo(result.table)
    print_run_summary(result.run.dir)


@brats.command()
@trained_run_options("The folder of a `brats train` run.", strict=False)
def export(weights: str, **given: Any) -> None:
    """Export the classifier (SavedModel, ONNX), the detector (ONNX) and a metadata.json of the pipeline."""
    from keras_medimg.apps.brats import pipeline

    cfg, place = APP.trained_step(given, {"predict.weights": weights})
    result = pipeline.export(cfg, run=place)
    for part, files in result.metrics["files"].items():
        click.echo(f"{part}: {files}")
    print_run_summary(result.run.dir)
