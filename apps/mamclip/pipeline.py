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
from keras_medimg.training.checkpoints import epoch_checkpoint, resume_state
from keras_medimg.training.curve import CurveSettings, compare_at_smallest, label_count_curve, write_curve

log = logging.getLogger(__name__)
APP = "mamclip"


# === Demo data ===


def demo_data(out_dir: str | Path | None, cfg: MamclipConfig) -> dict[str, Path]:
    """Write the demo atlases (atlas/) and the TEKNOFEST-layout classification set (classification/) into
    `out_dir`, or (None) make or reuse the shared copy for this seed and these sizes in `$MEDIMG_HOME/demo/`."""
    from keras_medimg.datasets.synthetic import demo_data as make_demo
    from keras_medimg.datasets.synthetic.mamclip import generate_mamclip, mamclip_demo_paths

    d = cfg.data
    return mamclip_demo_paths(make_demo("mamclip", generate_mamclip, out_dir, seed=cfg.seed, pairs=d.demo_pairs,
                                        ocr_pairs=d.demo_ocr_pairs, patients=d.demo_patients, height=d.demo_height))


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


def pairs_dataset(records: list[Any], encoded: dict[str, np.ndarray], tokenizer: Any, cfg: MamclipConfig, *,
                  training: bool, skipped: Skipped):
    """`vlm_tasks.pairs_dataset` with the config's image, batch and masking settings."""
    p = cfg.pretrain
    settings = vlm_tasks.PairsSettings(
        image_size=cfg.model.image_size, normalization=vlm_tasks.image_normalization(cfg.model.backbone),
        batch_size=p.batch_size, seed=cfg.seed, augment=p.augment, mask_rate=p.mask_rate,
        mask_share=p.mask_token_share, random_share=p.random_token_share, strict=cfg.strict,
        fixed_batches=p.distribution == "multiworker")
    return vlm_tasks.pairs_dataset(records, encoded, tokenizer, settings, training=training, skipped=skipped)


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

    Under `pretrain.distribution` the model is built and fitted in `training.distribute.strategy_scope`, with
    `pretrain.batch_size` the global batch; with "multiworker" every worker runs this and only the chief writes.
    metrics.json: pairs (train/val), captions truncated, final and best losses (contrastive, MLM, logit scale),
    retrieval recall@K both ways on the validation pairs with the chance level, distribution, the dtype policy the
    model trained in (`pretrain.mixed_precision`; a resumed run keeps the one it was saved with), seconds.
    """
    import keras

    from keras_medimg.datasets.pairs import split_pairs
    from keras_medimg.reporting import plot_training_curves
    from keras_medimg.training import distribute
    from keras_medimg.training.trainer import set_seed

    started = time.time()
    p = cfg.pretrain
    distribute.initialize(p.distribution)  # checks the mode; joins a multi-worker cluster before any computation
    skipped = Skipped()
    records = _read_pair_records(cfg, skipped)
    train_records, val_records = split_pairs(records, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
    least = p.batch_size if p.distribution == "multiworker" else 2  # workers share whole batches only
    if len(train_records) < least or len(val_records) < least:
        raise ConfigError(f"The split gave {len(train_records)} training and {len(val_records)} validation pairs; "
                          f"both need at least {least}. Add pairs or change data.val_fraction"
                          f"{' or pretrain.batch_size' if least > 2 else ''}.")
    resuming = resume and isinstance(run, Run)
    run = start_run(APP, "pretrain", cfg, run, distribution=p.distribution)  # the chief's folder, or a private one
    state = resume_state(run) if resuming else None  # drops results.csv rows of an unfinished epoch
    set_seed(cfg.seed)
    tokenizer = vlm_tasks.caption_tokenizer([r.caption for r in records], preset=cfg.model.text_encoder,
                                            sequence_length=cfg.model.text_length,
                                            min_count=cfg.model.vocabulary_min_count)
    train_enc = tokenizer.encode([r.caption for r in train_records])
    val_enc = tokenizer.encode([r.caption for r in val_records])
    truncated = int(train_enc["truncated"].sum() + val_enc["truncated"].sum())
    if truncated:
        log.warning("%d of %d captions are longer than %d tokens and were cut (model.text_length).", truncated,
                    len(records), cfg.model.text_length)
    spec = _spec(cfg)
    tokenizer.save(run.path("weights", "vocab.txt"))
    run.write_json("weights/vlm.json", {"spec": spec.to_dict(), "tokenizer": tokenizer.config(),
                                        "normalization": asdict(vlm_tasks.image_normalization(spec.backbone))})
    train_ds = pairs_dataset(train_records, train_enc, tokenizer, cfg, training=True, skipped=skipped)
    val_ds = pairs_dataset(val_records, val_enc, tokenizer, cfg, training=False, skipped=skipped)
    with distribute.strategy_scope(p.distribution) as strategy:
        per_device = distribute.per_replica_batch(p.batch_size, strategy)
        if keras.backend.backend() == "tensorflow" and distribute.replicas(strategy) > 1:
            # MamClip's own compute_loss is a per-replica mean that tf.distribute would sum over the replicas.
            raise ConfigError("pretrain.distribution=mirrored on several devices is not available on the tensorflow "
                              "backend. Use `medimg --backend jax ...` or pretrain.distribution=none.")
        model, initial_epoch = _pretrain_model(spec, tokenizer, cfg, run, state)
        callbacks = [keras.callbacks.CSVLogger(str(run.path("results.csv")), append=initial_epoch > 0),
                     epoch_checkpoint(run, state["best_val_loss"] if state else None),
                     keras.callbacks.TerminateOnNaN()]
        history = {}
        if initial_epoch < p.epochs:
            from keras_medimg.training.trainer import epochs_end_with_the_data

            with epochs_end_with_the_data():
                history = model.fit(train_ds, validation_data=val_ds, epochs=p.epochs, initial_epoch=initial_epoch,
                                    callbacks=callbacks, verbose=p.verbose, shuffle=False).history
    best_path = run.dir / "weights" / "best.keras"
    # Reloaded outside the strategy: a plain model on this process's device, whatever trained it.
    best = keras.saving.load_model(best_path) if best_path.is_file() else model
    recall = vlm_tasks.evaluate_retrieval(best, val_records, val_enc, image_size=cfg.model.image_size,
                                          normalization=vlm_tasks.image_normalization(spec.backbone),
                                          recall_at=p.recall_at)
    plot_training_curves(run)
    metrics = {
        "pairs": {"train": len(train_records), "val": len(val_records), "captions_truncated": truncated,
                  "text_length": cfg.model.text_length, "vocabulary_size": tokenizer.vocabulary_size},
        "final": {k: float(v[-1]) for k, v in history.items()},
        "best": json.loads((run.dir / "weights" / "best.json").read_text()) if best_path.is_file() else None,
        "retrieval_val": recall,
        "distribution": {"mode": p.distribution, "global_batch": p.batch_size, "per_device_batch": per_device,
                         "replicas": distribute.replicas(strategy), "workers": distribute.worker().count},
        "dtype_policy": model.dtype_policy.name,
        "seconds": round(time.time() - started, 1),
    }
    return finish_run(run, metrics, skipped, table=vlm_tasks.recall_table(recall, p.recall_at))


def _pretrain_model(spec: Any, tokenizer: Any, cfg: MamclipConfig, run: Run, state: dict[str, Any] | None):
    """A new compiled MamClip, or the run's weights/last.keras when resuming -> (model, first epoch to train)."""
    import keras

    from keras_medimg.models import vlm
    from keras_medimg.training.trainer import check_jit_with_mixed_precision, precision_scope, resolve_mixed_precision

    p = cfg.pretrain
    if state is not None and (run.dir / "weights" / "last.keras").is_file():
        log.info("Resuming pretraining at epoch %d of %d.", int(state["next_epoch"]) + 1, p.epochs)
        # The model (and its loss-scale optimizer) trains on in the policy it was saved with.
        model = keras.saving.load_model(run.dir / "weights" / "last.keras")
        if model.dtype_policy.name.startswith("mixed") != resolve_mixed_precision(p):
            log.warning("Resuming with the '%s' dtype policy that weights/last.keras was saved with; "
                        "pretrain.mixed_precision=%s applies to new runs only.", model.dtype_policy.name,
                        p.mixed_precision)
        return model, int(state["next_epoch"])
    check_jit_with_mixed_precision(p.jit_compile, resolve_mixed_precision(p), section="pretrain")
    # Built and compiled under pretrain.mixed_precision, so that compile wraps AdamW in a LossScaleOptimizer;
    # the stages after pretraining (retrieval, fine-tuning, probe) get the caller's policy back.
    with precision_scope(p) as precision:
        model = vlm.build_from_spec(spec, tokenizer)
        model.compile(optimizer=keras.optimizers.AdamW(
            p.learning_rate, weight_decay=p.weight_decay,
            gradient_accumulation_steps=p.accumulation_steps if p.accumulation_steps > 1 else None),
            jit_compile=p.jit_compile)
    log.info("Built MAM-CLIP with the %s dtype policy.", precision)
    return model, 0


# === Fine-tuning ===


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


def parse_init(text: str) -> tuple[str, str | None]:
    """'vlm:runs/mamclip/pretrain' -> ('vlm', path); 'imagenet' / 'none' -> (name, None)."""
    name, _, source = text.partition(":")
    if name not in ("vlm", "imagenet", "none"):
        raise ConfigError(f"Unknown init '{text}'. Use vlm:RUN, imagenet or none.")
    return name, source or None


def curve_settings(cfg: MamclipConfig) -> CurveSettings:
    """The fine-tuning section of the config as the label-count curve's settings."""
    f = cfg.finetune
    return CurveSettings(image_size=cfg.model.image_size,
                         normalization=vlm_tasks.image_normalization(cfg.model.backbone),
                         folds=f.folds, seed=cfg.seed, epochs=f.epochs, batch_size=f.batch_size,
                         learning_rate=f.learning_rate, weight_decay=f.weight_decay, class_weight=f.class_weight,
                         pool_norm=f.pool_norm, augment=f.augment, strict=cfg.strict, verbose=f.verbose,
                         distribution=f.distribution)


def run_curve(samples: list[Sample], class_names: list[str], inits: dict[str, tuple[str, str | None]],
              sizes: list[str], cfg: MamclipConfig, skipped: Skipped) -> list[dict[str, Any]]:
    """`training.curve.label_count_curve` for every init (vlm:RUN, imagenet, none) on the same folds and subsets."""
    from keras_medimg.training.trainer import precision_scope

    backbones = {name: partial(vlm_tasks.init_start, init, source, backbone=cfg.model.backbone,
                               image_size=cfg.model.image_size, weights=cfg.model.weights)
                 for name, (init, source) in inits.items()}
    # Every init's backbone and classifier are built and compiled under finetune.mixed_precision.
    with precision_scope(cfg.finetune) as precision:
        log.info("Fine-tuning with the %s dtype policy.", precision)
        return label_count_curve(samples, class_names, backbones, sizes, curve_settings(cfg), skipped)


def finetune(cfg: MamclipConfig, *, run: Run | RunPlace | None = None,
             inits: dict[str, tuple[str, str | None]] | None = None) -> RunResult:
    """k-fold fine-tuning of the image encoder for `cfg.finetune.task`, for `cfg.finetune.init` (or `inits`) at
    every `cfg.finetune.train_samples` label count."""
    from keras_medimg.training.distribute import initialize

    started = time.time()
    workers = initialize(cfg.finetune.distribution).count  # before the checks below load a model
    skipped = Skipped()
    samples, class_names, left_out = load_classification(cfg, skipped)
    inits = inits or {parse_init(cfg.finetune.init)[0]: parse_init(cfg.finetune.init)}
    for init, source in inits.values():
        if init == "vlm" and source is not None:
            vlm_tasks.check_vlm_init(source, cfg.model.backbone)  # fails before the run folder exists
    run = start_run(APP, "finetune", cfg, run, distribution=cfg.finetune.distribution)
    rows = run_curve(samples, class_names, inits, cfg.finetune.train_samples, cfg, skipped)
    table = write_curve(run, rows, class_names, cfg.finetune.task)
    metrics = {"task": cfg.finetune.task, "classes": class_names, "images": len(samples), "left_out": left_out,
               "folds": cfg.finetune.folds, "rows": rows, "workers": workers,
               "seconds": round(time.time() - started, 1)}
    return finish_run(run, metrics, skipped, table=table)


# === Frozen encoders: zero-shot, probe, embed ===


def _embed_samples(model: Any, samples: list[Sample], cfg: MamclipConfig, skipped: Skipped, image_size: int):
    return vlm_tasks.embed_images(model, samples, image_size=image_size, skipped=skipped, strict=cfg.strict,
                                  normalization=vlm_tasks.image_normalization(cfg.model.backbone))


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
    model, tok, _, info = vlm_tasks.open_vlm_with_tokenizer(weights)
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
    model, _, _, info = vlm_tasks.open_vlm_with_tokenizer(weights)
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
    model, tok, _, info = vlm_tasks.open_vlm_with_tokenizer(weights)
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
    model, tok, folder, info = vlm_tasks.open_vlm_with_tokenizer(weights)
    if model.dtype_policy.name != "float32":
        model = vlm_tasks.float32_copy(model, tok, info)
    run = start_run(APP, "export", cfg, run)
    metrics = vlm_tasks.export_encoders(model, tok, run.subdir("export"), info=info, formats=cfg.export.formats,
                                        atol=cfg.export.atol,
                                        metadata={"app": APP, "source_run": str(folder), "prompts": cfg.prompts})
    return finish_run(run, metrics)


# === The whole study ===


def train(cfg: MamclipConfig, *, run: RunPlace | None = None, data_dir: str | Path | None = None) -> RunResult:
    """demo data -> atlas extraction -> pretraining -> the label-count curve for each init (VLM against the others).

    With `cfg.data.pairs` and `cfg.data.root` given, the demo is skipped and the user's data is used. The demo is
    the shared cached copy for `cfg.seed` and the demo sizes, or is written into `data_dir` (with the atlas stage's
    pairs/ beside it).
    """
    place = run or RunPlace()
    started = time.time()
    stages: dict[str, Any] = {}
    if cfg.data.pairs is None or cfg.data.root is None:
        t = time.time()
        demo = demo_data(data_dir, cfg)
        stages["demo_data_seconds"] = round(time.time() - t, 1)
        t = time.time()
        # One atlas-stage folder per demo (seed and sizes): runs of other seeds, at the same time or not, never
        # write each other's pairs.jsonl. Its books are reused while the PDFs and settings are unchanged.
        work = Path(data_dir) if data_dir is not None else (
            Path(place.project or "runs") / APP / "demo_data" / demo["classification"].parent.name)
        pairs_file = extract_demo_pairs(demo, work / "pairs", cfg) if cfg.data.pairs is None else None
        stages["atlas_seconds"] = round(time.time() - t, 1)
        stages.update(demo_data=str(demo["classification"].parent), pairs_file=str(pairs_file) if pairs_file else None)
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
               "rows": rows, "verdict": compare_at_smallest(rows, "vlm", label="VLM"), **stages,
               "pretrain_seconds": pre.metrics["seconds"], "finetune_seconds": fine.metrics["seconds"],
               "seconds": round(time.time() - started, 1)}
    table = pre.table + "\n\n" + f"Fine-tuning ({cfg.finetune.task}, {cfg.finetune.folds}-fold):\n" + fine.table
    if metrics["verdict"]:
        table += "\n\n" + metrics["verdict"]
    return finish_run(run, metrics, table=table)
