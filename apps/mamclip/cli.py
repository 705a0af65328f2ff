"""`medimg mamclip`: Click commands only; the study lives in `pipeline.py`."""

from __future__ import annotations

import logging
from typing import Any

import click

from keras_medimg.apps.mamclip.atlas import atlas
from keras_medimg.apps.options import (
    backend_option,
    common_options,
    config_options,
    print_run_summary,
    resolve_config,
    resume_option,
    run_options,
)
from keras_medimg.config import read_yaml

log = logging.getLogger(__name__)
DATASETS = ["teknofest", "vindr", "embed", "csv"]
TASKS = ["birads5", "birads3", "density"]


@click.group()
def mamclip() -> None:
    """MAM-CLIP: mammography vision-language pretraining from atlas image-caption pairs.

    Image-caption pairs are extracted from mammography atlas PDFs (`atlas extract`); a ConvNeXt image encoder and
    a BERT text encoder are pretrained with InfoNCE plus masked-language modelling through a fusion transformer
    (`pretrain`), then the image encoder is fine-tuned for BI-RADS (5-class, 3-class) and density with
    patient-grouped k-fold CV and a label-count curve (`finetune`). `train` runs the whole study on the demo.
    """


mamclip.add_command(atlas)


STUDY_HELP = ("The paper's settings: ImageNet ConvNeXt-small, 1024x768, embedding 768, text 100 ([CLS]), batch 8 x 8 "
              "accumulation, AdamW 1e-4, 25 epochs, flips + downscale + grid distortion; fine-tuning at 1K-30K and "
              "all labels, VLM vs ImageNet, 4 folds (README). Pretraining needs --text-encoder (PubMedBERT). Keys "
              "in --config, options given and --set win over it.")


def _config(config_file: str | None, overrides: tuple[str, ...], options: dict[str, Any], *, study: bool = False,
            needs_text_encoder: bool = False):
    """Defaults, then `STUDY` with --study, then the keys of a --config file, then the options given, then --set."""
    from keras_medimg.apps.mamclip.config import STUDY, MamclipConfig

    if study:
        in_file = _dotted_keys(read_yaml(config_file)) if config_file else set()
        study_keys = {k: v for k, v in STUDY.items() if k not in in_file}
        options = {**study_keys, **{k: v for k, v in options.items() if v is not None}}
    cfg = resolve_config(MamclipConfig, "mamclip", config_file, overrides, options)
    if study and needs_text_encoder and cfg.model.text_encoder is None:
        raise click.UsageError("--study pretrains from PubMedBERT, as the paper does: pass --text-encoder with its "
                               "folder (Hugging Face: config.json, vocab.txt, pytorch_model.bin or model.safetensors).")
    return cfg


def _dotted_keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in data.items():
        keys.add(prefix + str(key))
        if isinstance(value, dict):
            keys |= _dotted_keys(value, f"{prefix}{key}.")
    return keys


def _place(project: str | None, name: str | None, exist_ok: bool):
    from keras_medimg.runs import RunPlace

    return RunPlace(project, name, exist_ok)


def _samples(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _classification_options(func):
    func = click.option("--task", type=click.Choice(TASKS), default=None, help="finetune.task (default birads3).")(func)
    return click.option("--dataset", type=click.Choice(DATASETS), default=None,
                        help="Layout of --data (data.dataset; default teknofest).")(func)


@mamclip.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=None, help="Random seed of the generators.")
@config_options
def demo_data(out_dir: str, seed: int | None, config_file: str | None, overrides: tuple[str, ...]) -> None:
    """Write the demo atlases (atlas/: text-layer and burned-in captions) and the TEKNOFEST-layout
    classification set (classification/) to OUT_DIR."""
    from keras_medimg.apps.mamclip import pipeline

    cfg = _config(config_file, overrides, {"seed": seed})
    written = pipeline.demo_data(out_dir, cfg)
    click.echo(f"Demo atlases: {written['atlas_text']}, {written['atlas_ocr']}\n"
               f"Classification set: {written['classification']}\n"
               f"Next: medimg mamclip atlas extract {written['atlas_text']} {written['atlas_ocr']} --out PAIRS_DIR")


@mamclip.command()
@click.option("--pairs", type=click.Path(dir_okay=False), default=None,
              help="pairs.jsonl (or the study's JSON, or a CSV image,caption) (data.pairs).")
@click.option("--image-root", type=click.Path(file_okay=False), default=None,
              help="Folder the pairs' image paths are relative to (data.image_root).")
@click.option("--epochs", type=int, default=None, help="pretrain.epochs.")
@click.option("--batch-size", type=int, default=None, help="pretrain.batch_size.")
@click.option("--accumulation-steps", type=int, default=None, help="pretrain.accumulation_steps.")
@click.option("--text-encoder", type=click.Path(file_okay=False), default=None,
              help="BERT folder: a keras-hub preset or a Hugging Face folder such as PubMedBERT's (model.text_encoder).")
@click.option("--backbone", default=None, help="Image encoder from the registry (model.backbone).")
@click.option("--study", is_flag=True, default=False, help=STUDY_HELP)
@click.option("--strict", is_flag=True, default=None, help="Stop at the first bad pair instead of skipping it.")
@click.option("--seed", type=int, default=None, help="Random seed.")
@backend_option
@config_options
@run_options
@resume_option
def pretrain(pairs: str | None, image_root: str | None, epochs: int | None, batch_size: int | None,
             accumulation_steps: int | None, text_encoder: str | None, backbone: str | None, study: bool,
             strict: bool | None, seed: int | None, config_file: str | None, overrides: tuple[str, ...],
             project: str | None, name: str | None, exist_ok: bool, resume: str | None) -> None:
    """Pretrain the dual encoder (InfoNCE + lambda * MLM) on image-caption pairs; reports retrieval recall."""
    from keras_medimg.apps.mamclip import pipeline
    from keras_medimg.runs import open_run

    options = {"data.pairs": pairs, "data.image_root": image_root, "pretrain.epochs": epochs,
               "pretrain.batch_size": batch_size, "pretrain.accumulation_steps": accumulation_steps,
               "model.text_encoder": text_encoder, "model.backbone": backbone, "strict": strict, "seed": seed}
    if resume:
        run = open_run(resume, "mamclip", "pretrain")
        if study:
            log.warning("--study is left out on --resume: the run continues with its saved config.yaml.")
        cfg = _config(config_file or str(run.dir / "config.yaml"), overrides, options)
    else:
        run = _place(project, name, exist_ok)
        cfg = _config(config_file, overrides, options, study=study, needs_text_encoder=True)
    result = pipeline.pretrain(cfg, run=run, resume=bool(resume))
    click.echo(result.table)
    print_run_summary(result.run.dir)


@mamclip.command()
@common_options
@_classification_options
@click.option("--init", "init", default=None,
              help="vlm:RUN (a pretrain run, or the study's released PyTorch checkpoint: "
                   "vlm:pretrain_convnext_tiny.ckpt with --set model.backbone=convnext_tiny) | imagenet | none "
                   "(finetune.init).")
@click.option("--inits", default=None, help="Several inits compared on the same folds, comma-separated.")
@click.option("--train-samples", default=None,
              help="Label counts or fractions for the label-count curve, e.g. 1000,3000,all or 0.25,0.5,1.0.")
@click.option("--epochs", type=int, default=None, help="finetune.epochs per fold.")
@click.option("--folds", type=int, default=None, help="finetune.folds (study: 4).")
@click.option("--study", is_flag=True, default=False, help=STUDY_HELP)
def finetune(dataset: str | None, task: str | None, init: str | None, inits: str | None, train_samples: str | None,
             epochs: int | None, folds: int | None, study: bool, data: str | None, seed: int | None,
             strict: bool | None, config_file: str | None, overrides: tuple[str, ...], project: str | None,
             name: str | None, exist_ok: bool) -> None:
    """Fine-tune the image encoder with patient-grouped k-fold CV: average F1 mean ± std, per-class F1,
    confusion matrices, and the label-count curve (CSV, Markdown, plot)."""
    from keras_medimg.apps.mamclip import pipeline

    cfg = _config(config_file, overrides, {
        "data.dataset": dataset, "data.root": data, "finetune.task": task, "finetune.init": init,
        "finetune.train_samples": _samples(train_samples), "finetune.epochs": epochs, "finetune.folds": folds,
        "seed": seed, "strict": strict}, study=study)
    if study and not init and not inits:
        raise click.UsageError("--study compares the VLM-pretrained encoder with ImageNet's on the same folds: pass "
                               "--inits vlm:RUN,imagenet (or one --init).")
    chosen = None
    if inits:
        chosen = {}
        for text in _samples(inits):
            kind, source = pipeline.parse_init(text)
            chosen[kind] = (kind, source)
    result = pipeline.finetune(cfg, run=_place(project, name, exist_ok), inits=chosen)
    click.echo(result.table)
    print_run_summary(result.run.dir)


def _frozen_command(mode: str, help_text: str):
    @mamclip.command(mode, help=help_text)
    @click.option("--weights", required=True, type=click.Path(exists=True), help="A `mamclip pretrain` run folder.")
    @common_options
    @_classification_options
    def command(weights: str, dataset: str | None, task: str | None, data: str | None, seed: int | None,
                strict: bool | None, config_file: str | None, overrides: tuple[str, ...], project: str | None,
                name: str | None, exist_ok: bool) -> None:
        from keras_medimg.apps.mamclip import pipeline

        cfg = _config(config_file, overrides, {"data.dataset": dataset, "data.root": data, "finetune.task": task,
                                               "seed": seed, "strict": strict})
        result = getattr(pipeline, mode)(cfg, weights, run=_place(project, name, exist_ok))
        click.echo(result.table)
        print_run_summary(result.run.dir)

    return command


zeroshot = _frozen_command("zeroshot", "Zero-shot classification: class prompts (config `prompts`) -> text "
                                       "embeddings -> cosine scores; F1 table and confusion matrix.")
probe = _frozen_command("probe", "Linear probe: logistic regression on frozen image embeddings, k-fold on "
                                 "patient-grouped folds; average F1 mean ± std.")


@mamclip.command()
@click.option("--weights", required=True, type=click.Path(exists=True), help="A `mamclip pretrain` run folder.")
@click.option("--source", type=click.Path(exists=True), default=None, help="An image or a folder of images.")
@click.option("--texts", type=click.Path(dir_okay=False), default=None, help="A text file, one text a line.")
@click.option("--strict", is_flag=True, default=None, help="Stop at the first unreadable image.")
@backend_option
@config_options
@run_options
def embed(weights: str, source: str | None, texts: str | None, strict: bool | None, config_file: str | None,
          overrides: tuple[str, ...], project: str | None, name: str | None, exist_ok: bool) -> None:
    """Image and/or text embeddings to .npy with an index CSV (row i of the .npy is row i of the CSV)."""
    from keras_medimg.apps.mamclip import pipeline

    cfg = _config(config_file, overrides, {"strict": strict})
    result = pipeline.embed(cfg, weights, source=source, texts=texts, run=_place(project, name, exist_ok))
    click.echo(", ".join(f"{k}: {v}" for k, v in result.metrics.items()))
    print_run_summary(result.run.dir)


@mamclip.command()
@common_options
@click.option("--pretrain-epochs", type=int, default=None, help="pretrain.epochs.")
@click.option("--epochs", type=int, default=None, help="finetune.epochs per fold.")
@click.option("--train-samples", default=None, help="Label counts or fractions of the curve, e.g. 40,all.")
@click.option("--pairs", type=click.Path(dir_okay=False), default=None, help="Your pairs file instead of the demo.")
@click.option("--text-encoder", type=click.Path(file_okay=False), default=None,
              help="BERT folder: a keras-hub preset or a Hugging Face folder such as PubMedBERT's (model.text_encoder).")
@click.option("--study", is_flag=True, default=False, help=STUDY_HELP)
@_classification_options
def train(pretrain_epochs: int | None, epochs: int | None, train_samples: str | None, pairs: str | None,
          text_encoder: str | None, study: bool, dataset: str | None, task: str | None, data: str | None,
          seed: int | None, strict: bool | None, config_file: str | None, overrides: tuple[str, ...],
          project: str | None, name: str | None, exist_ok: bool) -> None:
    """The whole study: demo data -> atlas extraction -> pretraining -> fine-tuning label-count curve (VLM init
    against the other inits), ending with the study's table."""
    from keras_medimg.apps.mamclip import pipeline

    cfg = _config(config_file, overrides, {
        "pretrain.epochs": pretrain_epochs, "finetune.epochs": epochs, "finetune.train_samples": _samples(train_samples),
        "data.pairs": pairs, "model.text_encoder": text_encoder, "data.dataset": dataset, "finetune.task": task,
        "data.root": data, "seed": seed, "strict": strict}, study=study, needs_text_encoder=True)
    result = pipeline.train(cfg, run=_place(project, name, exist_ok))
    click.echo(result.table)
    click.echo(f"Total {result.metrics['seconds']:.0f} s.")
    print_run_summary(result.run.dir)


@mamclip.command()
@click.option("--weights", required=True, type=click.Path(exists=True), help="A `mamclip pretrain` run folder.")
@backend_option
@config_options
@run_options
def export(weights: str, config_file: str | None, overrides: tuple[str, ...], project: str | None, name: str | None,
           exist_ok: bool) -> None:
    """Image and text encoders as SavedModel and ONNX (verified), with metadata.json and the vocabulary."""
    from keras_medimg.apps.mamclip import pipeline

    cfg = _config(config_file, overrides, {})
    result = pipeline.export(cfg, weights, run=_place(project, name, exist_ok))
    for part, files in result.metrics["files"].items():
        click.echo(f"{part}: {files}")
    print_run_summary(result.run.dir)
