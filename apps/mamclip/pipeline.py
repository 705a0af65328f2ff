"""MAM-CLIP as plain functions: pretrain the dual encoder on atlas pairs, then fine-tune its vision encoder.

`pretrain` trains `models.vlm.MamClip` (InfoNCE + lambda * MLM) and reports retrieval recall on the validation
pairs; `finetune` runs patient-grouped k-fold CV of the image encoder for BI-RADS / density, for one init or, with
several label counts, the study's label-count curve; `zeroshot`, `probe` and `embed` use the frozen encoders;
`export` writes the two encoders for serving; `train` is the whole study on the demo data.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from keras_medimg.apps.mamclip.config import MamclipConfig
from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.models import vlm_tasks
from keras_medimg.runs import Run, RunPlace, RunResult, finish_run, start_run
from keras_medimg.training.checkpoints import epoch_checkpoint
from keras_medimg.training.curve import CurveSettings, label_count_curve, write_curve

log = logging.getLogger(__name__)
APP = "mamclip"


# === Demo data ===


def demo_data(out_dir: str | Path, cfg: MamclipConfig) -> dict[str, Path]:
    """Write the demo atlases (atlas/) and the TEKNOFEST-layout classification set (classification/)."""
    from keras_medimg.datasets.synthetic.atlas import write_demo_atlases
    from keras_medimg.datasets.synthetic.mammo_cls import write_classification_demo

    out = Path(out_dir)
    atlases = write_demo_atlases(out / "atlas", seed=cfg.seed, pairs=cfg.data.demo_pairs)
    height = cfg.data.demo_height
    root = write_classification_demo(out / "classification", patients=cfg.data.demo_patients, height=height,
                                     width=height * 3 // 4, seed=cfg.seed)
    return {"atlas_text": atlases["text_pdf"], "atlas_ocr": atlases["ocr_pdf"], "classification": root}


def extract_demo_pairs(demo: dict[str, Path], out_dir: Path, cfg: MamclipConfig) -> Path:
    """The atlas stage on the demo PDFs (layout pairing + OCR): pairs.jsonl, report and contact sheet."""
    from keras_medimg.datasets.pairs import extract_books, write_outputs

    results = extract_books([demo["atlas_text"], demo["atlas_ocr"]], out_dir, cfg.atlas.settings(),
                            pages=cfg.atlas.pages, workers=cfg.atlas.workers)
    return write_outputs(results, out_dir, contact_sheet=cfg.atlas.contact_sheet,
                         per_page=cfg.atlas.contact_sheet_per_page)["pairs"]


# === Pretraining ===


def _spec(cfg: MamclipConfig):
    from keras_medimg.models import vlm

    m = cfg.model
    text = vlm.TextEncoderSpec(preset=m.text_encoder, num_layers=m.text_layers, num_heads=m.text_heads,
                               hidden_dim=m.text_width, intermediate_dim=m.text_intermediate, dropout=m.text_dropout,
                               pooling=m.text_pooling)
    return vlm.VlmSpec(backbone=m.backbone, image_size=m.image_size, embed_dim=m.embed_dim, weights=m.weights,
                       text=text, fusion_layers=m.fusion_layers, fusion_heads=m.fusion_heads,
                       fusion_mlp_ratio=m.fusion_mlp_ratio, mlm_weight=cfg.pretrain.mlm_weight,
                       logit_scale_init=cfg.pretrain.logit_scale_init)


def _tokenizer(cfg: MamclipConfig, captions: list[str]):
    from keras_medimg.models import vlm

    if cfg.model.text_encoder:
        return vlm.WordPieceTokenizer.from_folder(cfg.model.text_encoder, sequence_length=cfg.model.text_length)
    return vlm.WordPieceTokenizer.build(captions, sequence_length=cfg.model.text_length,
                                        min_count=cfg.model.vocabulary_min_count)


def _normalization(backbone: str):
    from keras_medimg.models.backbones import get_spec

    return get_spec(backbone).normalization


def pairs_dataset(records: list[Any], encoded: dict[str, np.ndarray], tokenizer: Any, cfg: MamclipConfig, *,
                  training: bool, skipped: Skipped):
    """tf.data batches of {images, token_ids, padding_mask, masked_token_ids, mlm_labels, mlm_weights}.

    Images go through the library pipeline (decode, resize, grey -> 3 channels, augmentation, normalisation);
    each image carries its pair's index as its "label", which picks its caption's tokens. Whole-word masks are drawn
    per batch from a seeded random stream: new masks every epoch when training, the same ones for validation.
    """
    import tensorflow as tf

    from keras_medimg.datasets.pipeline import make_dataset
    from keras_medimg.models import vlm

    p = cfg.pretrain
    samples = [Sample(id=f"pair{i}", path=r.image, label=str(i)) for i, r in enumerate(records)]
    images = make_dataset(samples, image_size=cfg.model.image_size, training=training, batch_size=p.batch_size,
                          channels=3, normalization=_normalization(cfg.model.backbone),
                          augment=p.augment if training else None, class_names=[s.label for s in samples],
                          cache="memory", seed=cfg.seed, skipped=skipped, strict=cfg.strict,
                          drop_remainder=training and len(samples) > p.batch_size)
    tokens = {k: tf.constant(encoded[k]) for k in ("token_ids", "padding_mask", "word_ids")}
    seeds = tf.data.Dataset.random(seed=cfg.seed, rerandomize_each_iteration=training).batch(2)

    def features(batch, seed):
        (pixels, index) = batch
        token_ids = tf.gather(tokens["token_ids"], index)
        masks = vlm.mask_words(token_ids, tf.gather(tokens["word_ids"], index), seed,
                               vocabulary_size=tokenizer.vocabulary_size, mask_id=tokenizer.mask_id,
                               rate=p.mask_rate, mask_share=p.mask_token_share, random_share=p.random_token_share)
        return {"images": pixels, "token_ids": token_ids, "padding_mask": tf.gather(tokens["padding_mask"], index),
                **masks}

    return tf.data.Dataset.zip((images, seeds)).map(features).prefetch(2)


def _read_pair_records(cfg: MamclipConfig, skipped: Skipped) -> list[Any]:
    from keras_medimg.datasets.pairs import read_pairs

    if cfg.data.pairs is None:
        raise ConfigError("No pairs given. Pass --pairs pairs.jsonl (from `medimg mamclip atlas extract`), or run "
                          "`medimg mamclip train` for the demo.")
    records = read_pairs(cfg.data.pairs, image_root=cfg.data.image_root, skipped=None if cfg.strict else skipped)
    if len(records) < 4:
        raise InvalidInputError(cfg.data.pairs, f"holds {len(records)} usable pair(s); contrastive pretraining needs "
                                                "at least 4 (2 for training, 2 for validation).")
    return records


def pretrain(cfg: MamclipConfig, *, run: Run | RunPlace | None = None, resume: bool = False) -> RunResult:
    """Pretrain the dual encoder on `cfg.data.pairs`; the best checkpoint by validation loss is weights/best.keras.

    metrics.json: pairs (train/val), captions truncated, final and best losses (contrastive, MLM, logit scale),
    retrieval recall@K both ways on the validation pairs with the chance level, seconds.
    """
    import keras

    from keras_medimg.datasets.pairs import split_pairs
    from keras_medimg.models import vlm
    from keras_medimg.training.trainer import set_seed

    started = time.time()
    skipped = Skipped()
    records = _read_pair_records(cfg, skipped)
    train_records, val_records = split_pairs(records, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    if len(train_records) < 2 or len(val_records) < 2:
        raise ConfigError(f"The split gave {len(train_records)} training and {len(val_records)} validation pairs; "
                          "both need at least 2. Add pairs or change data.val_fraction.")
    spec = _spec(cfg)
    state = None
    if resume and isinstance(run, Run) and (run.dir / "state.json").is_file():
        state = json.loads((run.dir / "state.json").read_text())
    run = start_run(APP, "pretrain", cfg, run)
    set_seed(cfg.seed)
    tokenizer = _tokenizer(cfg, [r.caption for r in records])
    train_enc = tokenizer.encode([r.caption for r in train_records])
    val_enc = tokenizer.encode([r.caption for r in val_records])
    truncated = int(train_enc["truncated"].sum() + val_enc["truncated"].sum())
    if truncated:
        log.warning("%d of %d captions are longer than %d tokens and were cut (model.text_length).", truncated,
                    len(records), cfg.model.text_length)
    tokenizer.save(run.path("weights", "vocab.txt"))
    run.write_json("weights/vlm.json", {"spec": spec.to_dict(), "tokenizer": tokenizer.config(),
                                        "normalization": asdict(_normalization(spec.backbone))})
    train_ds = pairs_dataset(train_records, train_enc, tokenizer, cfg, training=True, skipped=skipped)
    val_ds = pairs_dataset(val_records, val_enc, tokenizer, cfg, training=False, skipped=skipped)

    initial_epoch = 0
    if state is not None and (run.dir / "weights" / "last.keras").is_file():
        model = keras.saving.load_model(run.dir / "weights" / "last.keras")
        initial_epoch = int(state["next_epoch"])
        log.info("Resuming pretraining at epoch %d of %d.", initial_epoch + 1, cfg.pretrain.epochs)
    else:
        model = vlm.build_from_spec(spec, tokenizer)
        model.compile(optimizer=keras.optimizers.AdamW(
            cfg.pretrain.learning_rate, weight_decay=cfg.pretrain.weight_decay,
            gradient_accumulation_steps=cfg.pretrain.accumulation_steps if cfg.pretrain.accumulation_steps > 1
            else None), jit_compile=cfg.pretrain.jit_compile)
    callbacks = [keras.callbacks.CSVLogger(str(run.path("results.csv")), append=initial_epoch > 0),
                 epoch_checkpoint(run, state["best_val_loss"] if state else None),
                 keras.callbacks.TerminateOnNaN()]
    history = {}
    if initial_epoch < cfg.pretrain.epochs:
        history = model.fit(train_ds, validation_data=val_ds, epochs=cfg.pretrain.epochs, initial_epoch=initial_epoch,
                            callbacks=callbacks, verbose=cfg.pretrain.verbose, shuffle=False).history
    best_path = run.dir / "weights" / "best.keras"
    best = keras.saving.load_model(best_path) if best_path.is_file() else model
    recall = evaluate_retrieval(best, val_records, val_enc, cfg, skipped)
    from keras_medimg.reporting import plot_training_curves

    plot_training_curves(run)
    metrics = {
        "pairs": {"train": len(train_records), "val": len(val_records), "captions_truncated": truncated,
                  "text_length": cfg.model.text_length, "vocabulary_size": tokenizer.vocabulary_size},
        "final": {k: float(v[-1]) for k, v in history.items()},
        "best": json.loads((run.dir / "weights" / "best.json").read_text()) if best_path.is_file() else None,
        "retrieval_val": recall,
        "seconds": round(time.time() - started, 1),
    }
    return finish_run(run, metrics, skipped, table=vlm_tasks.recall_table(recall, cfg.pretrain.recall_at))


def evaluate_retrieval(model: Any, records: list[Any], encoded: dict[str, np.ndarray], cfg: MamclipConfig,
                       skipped: Skipped) -> dict[str, float]:
    from keras_medimg.datasets.pipeline import load_images_numpy
    from keras_medimg.models import vlm

    samples = [Sample(id=f"pair{i}", path=r.image) for i, r in enumerate(records)]
    images, kept = load_images_numpy(samples, image_size=cfg.model.image_size, channels=3,
                                     normalization=_normalization(cfg.model.backbone), skipped=Skipped())
    index = [int(s.id[4:]) for s in kept]
    image_emb = model.encode_images(images)
    text_emb = model.encode_texts(encoded["token_ids"][index], encoded["padding_mask"][index])
    return vlm.retrieval_recall(image_emb, text_emb, [records[i].caption for i in index], cfg.pretrain.recall_at)


# === Fine-tuning ===


def _open_vlm(path: str | Path):
    """A pretrain run folder (weights/best.keras) or a .keras file -> (MamClip, run folder or None)."""
    import keras

    from keras_medimg.models import vlm  # noqa: F401  registers the model's classes

    path = Path(path)
    model_file = path / "weights" / "best.keras" if path.is_dir() else path
    if not model_file.is_file():
        model_file = path / "weights" / "last.keras" if path.is_dir() else model_file
    if not model_file.is_file():
        raise InvalidInputError(path, "holds no pretrained model (weights/best.keras). Pass the folder of a "
                                      "`medimg mamclip pretrain` run or its .keras file.")
    model = keras.saving.load_model(model_file)
    return model, (model_file.parent.parent if model_file.parent.name == "weights" else None)


def load_classification(cfg: MamclipConfig, skipped: Skipped) -> tuple[list[Sample], list[str], dict[str, int]]:
    from keras_medimg.datasets.mammo_labels import apply_task, read_classification

    if cfg.data.root is None:
        raise ConfigError("No classification data given. Pass --data DIR (and --dataset), or run "
                          "`medimg mamclip demo-data DIR` first.")
    if cfg.finetune.task not in cfg.tasks:
        raise ConfigError(f"Task '{cfg.finetune.task}' has no mapping under tasks: in the config.")
    task = cfg.tasks[cfg.finetune.task]
    samples = read_classification(cfg.data.dataset, cfg.data.root, skipped=None if cfg.strict else skipped,
                                  strict=cfg.strict)
    labelled, left_out = apply_task(samples, task, name=cfg.finetune.task)
    return labelled, task.class_names(), left_out


def _backbone_for(init: str, cfg: MamclipConfig, vlm_source: str | Path | None):
    """The headless image backbone of an init: "vlm" (the pretrained image encoder), "imagenet" or "none"."""
    from keras_medimg.models.backbones import build_backbone

    size = cfg.model.image_size
    if init == "vlm":
        if vlm_source is None:
            raise ConfigError("--init vlm needs a pretrain run: pass --init vlm:RUN.")
        model, _ = _open_vlm(vlm_source)
        backbone = model.image_encoder.get_layer("backbone")
        if tuple(backbone.input_shape[1:3]) != (size, size):
            raise ConfigError(f"The pretrained encoder takes {backbone.input_shape[1]}-pixel images but "
                              f"model.image_size is {size}; set model.image_size to match.")
        return backbone
    if init == "imagenet":
        return build_backbone(cfg.model.backbone, input_shape=(size, size, 3), weights=cfg.model.weights or "imagenet")
    if init == "none":
        return build_backbone(cfg.model.backbone, input_shape=(size, size, 3), weights=None)
    raise ConfigError(f"Unknown init '{init}'. Use vlm:RUN, imagenet or none.")


def parse_init(text: str) -> tuple[str, str | None]:
    """'vlm:runs/mamclip/pretrain' -> ('vlm', path); 'imagenet' / 'none' -> (name, None)."""
    name, _, source = text.partition(":")
    if name not in ("vlm", "imagenet", "none"):
        raise ConfigError(f"Unknown init '{text}'. Use vlm:RUN, imagenet or none.")
    return name, source or None


def curve_settings(cfg: MamclipConfig) -> CurveSettings:
    """The fine-tuning section of the config as the label-count curve's settings."""
    f = cfg.finetune
    return CurveSettings(image_size=cfg.model.image_size, normalization=_normalization(cfg.model.backbone),
                         folds=f.folds, seed=cfg.seed, epochs=f.epochs, batch_size=f.batch_size,
                         learning_rate=f.learning_rate, weight_decay=f.weight_decay, class_weight=f.class_weight,
                         augment=f.augment, strict=cfg.strict, verbose=f.verbose)


def run_curve(samples: list[Sample], class_names: list[str], inits: dict[str, tuple[str, str | None]],
              sizes: list[str], cfg: MamclipConfig, skipped: Skipped) -> list[dict[str, Any]]:
    """`training.curve.label_count_curve` for every init (vlm:RUN, imagenet, none) on the same folds and subsets."""
    backbones = {name: partial(_backbone_for, init, cfg, source) for name, (init, source) in inits.items()}
    return label_count_curve(samples, class_names, backbones, sizes, curve_settings(cfg), skipped)


def finetune(cfg: MamclipConfig, *, run: Run | RunPlace | None = None,
             inits: dict[str, tuple[str, str | None]] | None = None) -> RunResult:
    """k-fold fine-tuning of the image encoder for `cfg.finetune.task`, for `cfg.finetune.init` (or `inits`) at
    every `cfg.finetune.train_samples` label count."""
    started = time.time()
    skipped = Skipped()
    samples, class_names, left_out = load_classification(cfg, skipped)
    inits = inits or {parse_init(cfg.finetune.init)[0]: parse_init(cfg.finetune.init)}
    for init, source in inits.values():
        if init == "vlm" and source is not None:
            _open_vlm(source)  # fails before the run folder exists
    run = start_run(APP, "finetune", cfg, run)
    rows = run_curve(samples, class_names, inits, cfg.finetune.train_samples, cfg, skipped)
    table = write_curve(run, rows, class_names, cfg.finetune.task)
    metrics = {"task": cfg.finetune.task, "classes": class_names, "images": len(samples), "left_out": left_out,
               "folds": cfg.finetune.folds, "rows": rows, "seconds": round(time.time() - started, 1)}
    return finish_run(run, metrics, skipped, table=table)


# === Frozen encoders: zero-shot, probe, embed ===


def _embed_samples(model: Any, samples: list[Sample], cfg: MamclipConfig, skipped: Skipped, image_size: int):
    from keras_medimg.datasets.pipeline import predict_samples
    from keras_medimg.models import vlm

    embedder = vlm.image_embedder(model)
    return predict_samples(embedder, samples, image_size=image_size, channels=3,
                           normalization=_normalization(_backbone_name(model, cfg)), skipped=skipped,
                           strict=cfg.strict)


def _backbone_name(model: Any, cfg: MamclipConfig) -> str:
    return cfg.model.backbone


def _vlm_with_tokenizer(source: str | Path, cfg: MamclipConfig):
    from keras_medimg.models import vlm

    model, folder = _open_vlm(source)
    if folder is None or not (folder / "weights" / "vocab.txt").is_file():
        raise InvalidInputError(source, "needs the pretrain run folder (its weights/vocab.txt holds the tokenizer).")
    length = int(model.text_encoder.input["token_ids"].shape[1])
    info = json.loads((folder / "weights" / "vlm.json").read_text())
    tok = vlm.WordPieceTokenizer.from_file(folder / "weights" / "vocab.txt", sequence_length=length,
                                           lowercase=info["tokenizer"]["lowercase"])
    return model, tok, folder, info


def zeroshot(cfg: MamclipConfig, weights: str, *, run: Run | RunPlace | None = None) -> RunResult:
    """Classify with class prompts: the mean prompt embedding of each class against each image embedding."""
    from keras_medimg.metrics.classification import classification_report, format_table
    from keras_medimg.reporting import plot_confusion_matrix

    skipped = Skipped()
    samples, class_names, left_out = load_classification(cfg, skipped)
    prompts = cfg.prompts.get(cfg.finetune.task, {})
    missing = [c for c in class_names if not prompts.get(c)]
    if missing:
        raise ConfigError(f"prompts.{cfg.finetune.task} has no prompt for class(es) {missing}; add them to the config.")
    model, tok, _, info = _vlm_with_tokenizer(weights, cfg)
    run = start_run(APP, "zeroshot", cfg, run)
    class_emb = vlm_tasks.class_text_embeddings(model, tok, prompts, class_names)
    image_emb, kept = _embed_samples(model, samples, cfg, skipped, info["spec"]["image_size"])
    scores = vlm_tasks.zero_shot_scores(image_emb, class_emb)
    truth = [class_names.index(s.label) for s in kept]
    report = classification_report(truth, scores.argmax(axis=1), class_names=class_names)
    plot_confusion_matrix(report["confusion_matrix"], class_names, run.path("plots", "confusion_matrix.png"),
                          title=f"zero-shot {cfg.finetune.task}")
    run.write_csv("predictions.csv", [{"id": s.id, "path": str(s.path), "label": s.label,
                                       "predicted": class_names[int(np.argmax(row))],
                                       **{f"score {c}": round(float(v), 5) for c, v in zip(class_names, row)}}
                                      for s, row in zip(kept, scores)])
    metrics = {"task": cfg.finetune.task, "images": len(kept), "left_out": left_out, "report": report}
    return finish_run(run, metrics, skipped, table=format_table(report))


def probe(cfg: MamclipConfig, weights: str, *, run: Run | RunPlace | None = None) -> RunResult:
    """Logistic regression on frozen image embeddings, k-fold on the same patient-grouped folds as fine-tuning."""
    skipped = Skipped()
    samples, class_names, left_out = load_classification(cfg, skipped)
    model, _, _, info = _vlm_with_tokenizer(weights, cfg)
    run = start_run(APP, "probe", cfg, run)
    emb, kept = _embed_samples(model, samples, cfg, skipped, info["spec"]["image_size"])
    summary = vlm_tasks.linear_probe_kfold(emb, kept, class_names, folds=cfg.finetune.folds, seed=cfg.seed,
                                           c=cfg.probe.c, max_iter=cfg.probe.max_iter,
                                           class_weight=cfg.probe.class_weight)
    metrics = {"task": cfg.finetune.task, "images": len(kept), "left_out": left_out, **summary}
    table = (f"Linear probe, {cfg.finetune.task}, {cfg.finetune.folds}-fold: macro F1 "
             f"{summary['macro_f1_mean']:.3f} ± {summary['macro_f1_std']:.3f}")
    return finish_run(run, metrics, skipped, table=table)


def embed(cfg: MamclipConfig, weights: str, *, source: str | None, texts: str | None,
          run: Run | RunPlace | None = None) -> RunResult:
    """Image embeddings of a folder (image_embeddings.npy + images.csv) and/or text embeddings of a file with one
    text a line (text_embeddings.npy + texts.csv); row i of the .npy is row i of the CSV."""
    from keras_medimg.datasets.sources import list_images

    if source is None and texts is None:
        raise ConfigError("Nothing to embed: pass --source (images) and/or --texts (a text file, one per line).")
    skipped = Skipped()
    images = list_images(source, skipped=skipped) if source is not None else []
    lines = []
    if texts is not None:
        path = Path(texts)
        if not path.is_file():
            raise InvalidInputError(path, "the text file does not exist. Pass a UTF-8 file with one text a line.")
        lines = [t.strip() for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    model, tok, _, info = _vlm_with_tokenizer(weights, cfg)
    run = start_run(APP, "embed", cfg, run)
    metrics: dict[str, Any] = {}
    if images:
        emb, kept = _embed_samples(model, images, cfg, skipped, info["spec"]["image_size"])
        np.save(run.path("image_embeddings.npy"), emb)
        run.write_csv("images.csv", [{"row": i, "id": s.id, "path": str(s.path)} for i, s in enumerate(kept)])
        metrics["images"] = len(kept)
    if lines:
        enc = tok.encode(lines)
        np.save(run.path("text_embeddings.npy"), model.encode_texts(enc["token_ids"], enc["padding_mask"]))
        run.write_csv("texts.csv", [{"row": i, "text": t, "truncated": bool(c)}
                                    for i, (t, c) in enumerate(zip(lines, enc["truncated"]))])
        metrics["texts"] = len(lines)
        metrics["texts_truncated"] = int(enc["truncated"].sum())
    metrics["dim"] = int(model.image_encoder.output_shape[-1])
    return finish_run(run, metrics, skipped)


# === Export ===


def export(cfg: MamclipConfig, weights: str, *, run: Run | RunPlace | None = None) -> RunResult:
    """The image encoder and the text encoder (float token ids in, padding from [PAD]) as SavedModel and ONNX,
    each verified against Keras, with metadata.json: preprocessing, logit scale, prompts, vocabulary file."""
    import keras

    from keras_medimg.export import export_model
    from keras_medimg.models import vlm

    model, tok, folder, info = _vlm_with_tokenizer(weights, cfg)
    run = start_run(APP, "export", cfg, run)
    out = run.subdir("export")
    tok.save(out / "vocab.txt")
    norm = _normalization(info["spec"]["backbone"])
    common = {
        "app": APP, "source_run": str(folder), "logit_scale": float(np.exp(keras.ops.convert_to_numpy(
            model.clipped_scale()))), "log_logit_scale": float(keras.ops.convert_to_numpy(model.clipped_scale())),
        "embed_dim": int(model.image_encoder.output_shape[-1]), "prompts": cfg.prompts, "spec": info["spec"],
    }
    size = info["spec"]["image_size"]
    image_result = export_model(vlm.image_embedder(model), out / "image_encoder", formats=cfg.export.formats,
                                atol=cfg.export.atol, metadata={**common, "part": "image_encoder", "preprocessing": {
                                    "image_size": [size, size], "channels": 3, "grey_to_rgb": "repeat",
                                    "scale": "per-image min-max to [0, 1]",
                                    "normalization": {"mean": list(norm.mean), "std": list(norm.std)}}})
    enc = tok.encode(["an irregular mass with spiculated margins", "scattered fibroglandular density"])
    text_result = export_model(vlm.text_embedder(model, tok.pad_id), out / "text_encoder", formats=cfg.export.formats,
                               atol=cfg.export.atol, sample_input=enc["token_ids"].astype("float32"),
                               metadata={**common, "part": "text_encoder", "tokenizer": {
                                   **tok.config(), "vocabulary": "vocab.txt", "pad_id": tok.pad_id,
                                   "cls_id": tok.cls_id, "sep_id": tok.sep_id, "input": "token ids as float32"}})
    (out / "image_encoder" / "vocab.txt").write_text((out / "vocab.txt").read_text())
    (out / "text_encoder" / "vocab.txt").write_text((out / "vocab.txt").read_text())
    metrics = {"files": {"image_encoder": {k: str(v) for k, v in image_result.paths.items()},
                         "text_encoder": {k: str(v) for k, v in text_result.paths.items()}},
               "max_abs_diff": {"image_encoder": image_result.max_abs_diff, "text_encoder": text_result.max_abs_diff}}
    return finish_run(run, metrics)


# === The whole study ===


def train(cfg: MamclipConfig, *, run: RunPlace | None = None, data_dir: str | Path | None = None) -> RunResult:
    """demo data -> atlas extraction -> pretraining -> the label-count curve for each init (VLM against the others).

    With `cfg.data.pairs` and `cfg.data.root` given, the demo is skipped and the user's data is used.
    """
    place = run or RunPlace()
    started = time.time()
    work = Path(data_dir) if data_dir is not None else Path(place.project or "runs") / APP / "demo_data"
    stages: dict[str, Any] = {}
    if cfg.data.pairs is None or cfg.data.root is None:
        t = time.time()
        demo = demo_data(work, cfg)
        stages["demo_data_seconds"] = round(time.time() - t, 1)
        t = time.time()
        pairs_file = extract_demo_pairs(demo, work / "pairs", cfg) if cfg.data.pairs is None else None
        stages["atlas_seconds"] = round(time.time() - t, 1)
        cfg = replace(cfg, data=replace(cfg.data, pairs=cfg.data.pairs or str(pairs_file),
                                        root=cfg.data.root or str(demo["classification"])))
    name = place.name or "train"
    pre = pretrain(cfg, run=RunPlace(place.project, f"{name}_pretrain", place.exist_ok))
    inits = {}
    for init in cfg.finetune.inits:
        kind, source = parse_init(init)
        inits[init if kind != "vlm" else "vlm"] = (kind, str(pre.run.dir) if kind == "vlm" else source)
    fine = finetune(cfg, run=RunPlace(place.project, f"{name}_finetune", place.exist_ok), inits=inits)
    run = start_run(APP, "train", cfg, RunPlace(place.project, name, place.exist_ok))
    rows = fine.metrics["rows"]
    metrics = {"pretrain_run": str(pre.run.dir), "finetune_run": str(fine.run.dir),
               "retrieval_val": pre.metrics["retrieval_val"], "pairs": pre.metrics["pairs"],
               "rows": rows, "verdict": _verdict(rows), **stages,
               "pretrain_seconds": pre.metrics["seconds"], "finetune_seconds": fine.metrics["seconds"],
               "seconds": round(time.time() - started, 1)}
    table = pre.table + "\n\n" + f"Fine-tuning ({cfg.finetune.task}, {cfg.finetune.folds}-fold):\n" + fine.table
    if metrics["verdict"]:
        table += "\n\n" + metrics["verdict"]
    return finish_run(run, metrics, table=table)


def _verdict(rows: list[dict[str, Any]]) -> str:
    """At the smallest label count: VLM init against each other init, by more than the fold std or not."""
    if not rows:
        return ""
    smallest = min(r["train_images"] for r in rows)
    at = {r["init"]: r for r in rows if r["train_images"] == smallest}
    if "vlm" not in at:
        return ""
    v = at["vlm"]
    lines = []
    for init, r in at.items():
        if init == "vlm":
            continue
        gap = v["macro_f1_mean"] - r["macro_f1_mean"]
        std = max(v["macro_f1_std"], r["macro_f1_std"])
        lines.append(f"At {smallest} labels, VLM init {'beats' if gap > std else 'does not beat'} {init} init by "
                     f"more than the fold std: {v['macro_f1_mean']:.3f} vs {r['macro_f1_mean']:.3f} "
                     f"(gap {gap:+.3f}, std {std:.3f}).")
    return "\n".join(lines)
