"""What a dual encoder (`models.vlm.MamClip`) is trained on and used for: the image-caption batches of
pretraining and retrieval recall on held-out pairs; frozen, zero-shot classification from class prompts, a linear
probe on image embeddings, embeddings of a folder, and the two encoders exported for serving.

Pieces: `image_normalization`, `caption_tokenizer`, `PairsSettings`, `pairs_dataset`, `evaluate_retrieval`,
`recall_table`, `open_vlm`, `open_vlm_with_tokenizer`, `embed_images`, `class_text_embeddings`, `zero_shot_scores`,
`linear_probe_kfold`, `export_encoders`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keras_medimg.config import image_hw
from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.errors import ConfigError, InvalidInputError


def class_text_embeddings(model: Any, tokenizer: Any, prompts: Mapping[str, Sequence[str]],
                          class_names: Sequence[str]) -> np.ndarray:
    """(classes, dim): per class, the L2-normalised mean of its prompts' text embeddings (row order = `class_names`).

    `model` has `encode_texts(token_ids, padding_mask)`; `tokenizer` has `encode(texts)` (`vlm.WordPieceTokenizer`).
    """
    rows = []
    for name in class_names:
        encoded = tokenizer.encode(list(prompts[name]))
        mean = np.asarray(model.encode_texts(encoded["token_ids"], encoded["padding_mask"])).mean(axis=0)
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows)


def zero_shot_scores(image_embeddings: np.ndarray, class_embeddings: np.ndarray) -> np.ndarray:
    """(images, classes) cosine similarities of L2-normalised image embeddings to the class embeddings."""
    return np.asarray(image_embeddings) @ np.asarray(class_embeddings).T


def linear_probe_kfold(embeddings: np.ndarray, samples: Sequence[Sample], class_names: Sequence[str], *,
                       folds: int, seed: int, c: float = 1.0, max_iter: int = 2000,
                       class_weight: str = "balanced") -> dict[str, Any]:
    """Logistic regression (scikit-learn) on frozen embeddings, k-fold on patient-grouped, stratified folds.

    Row i of `embeddings` belongs to `samples[i]`. Returns macro_f1_mean, macro_f1_std, fold_macro_f1 and
    per_class_f1 (mean over folds).
    """
    from sklearn.linear_model import LogisticRegression

    from keras_medimg.datasets.splits import kfold
    from keras_medimg.metrics.classification import classification_report

    index = {s.id: i for i, s in enumerate(samples)}
    reports = []
    for train, val in kfold(list(samples), folds, seed=seed):
        clf = LogisticRegression(C=c, max_iter=max_iter, class_weight=None if class_weight == "none" else "balanced")
        clf.fit(embeddings[[index[s.id] for s in train]], [class_names.index(s.label) for s in train])
        predicted = clf.predict(embeddings[[index[s.id] for s in val]])
        truth = [class_names.index(s.label) for s in val]
        reports.append(classification_report(truth, predicted, class_names=list(class_names)))
    f1 = np.array([r["macro"]["f1"] for r in reports])
    return {"macro_f1_mean": float(f1.mean()), "macro_f1_std": float(f1.std()), "fold_macro_f1": f1.tolist(),
            "per_class_f1": {c: float(np.mean([r["per_class"][c]["f1"] for r in reports])) for c in class_names}}


def recall_table(recall: Mapping[str, float], ks: Sequence[int]) -> str:
    """Markdown table of `vlm.retrieval_recall`'s output: recall@K both ways against chance, one row per K."""
    lines = ["| K | image->text | text->image | chance |", "| --- | --- | --- | --- |"]
    lines += [f"| {k} | {recall[f'image_to_text@{k}']:.3f} | {recall[f'text_to_image@{k}']:.3f} | "
              f"{recall[f'chance@{k}']:.3f} |" for k in ks]
    return f"Retrieval recall on {int(recall['pairs'])} validation pairs:\n" + "\n".join(lines)


# === Pretraining data and checks ===


def image_normalization(backbone: str) -> Any:
    """MAM-CLIP's input normalisation: each image's own min..max to [0, 1] (the study's preprocessing), then that of
    registry backbone `backbone`. The same for pretraining, fine-tuning, probe, zero-shot, embed and export."""
    from dataclasses import replace

    from keras_medimg.models.backbones import get_spec

    return replace(get_spec(backbone).normalization, minmax=True)


def caption_tokenizer(captions: Sequence[str], *, preset: str | Path | None, sequence_length: int,
                      min_count: int = 1) -> Any:
    """`vlm.WordPieceTokenizer` of a BERT folder (`preset`), or one built from `captions` (a tiny BERT's)."""
    from keras_medimg.models import vlm

    if preset:
        return vlm.WordPieceTokenizer.from_folder(preset, sequence_length=sequence_length)
    return vlm.WordPieceTokenizer.build(list(captions), sequence_length=sequence_length, min_count=min_count)


@dataclass(frozen=True)
class PairsSettings:
    """How `pairs_dataset` reads images and masks captions.

    image_size / normalization / augment: the images, as for `datasets.pipeline.make_dataset` (augment only when
    training). batch_size: pairs per batch (the global batch under a distribution). mask_rate / mask_share /
    random_share: whole-word masking (`vlm.mask_words`). fixed_batches: whole batches only (validation too), as
    multi-worker training needs: each worker keeps its share of every global batch.

    Batches always come in the order the seed fixes, whatever the decoding threads do: the pairs of a batch are
    each other's contrastive negatives, so an unordered decode made the same pretraining command give another model
    (and another fine-tuning table) on every run.
    """

    image_size: int
    normalization: Any
    batch_size: int
    seed: int = 0
    augment: Any = None
    mask_rate: float = 0.15
    mask_share: float = 0.8
    random_share: float = 0.1
    strict: bool = False
    fixed_batches: bool = False


def pairs_dataset(records: Sequence[Any], encoded: Mapping[str, np.ndarray], tokenizer: Any,
                  settings: PairsSettings, *, training: bool, skipped: Skipped) -> Any:
    """tf.data batches of {images, token_ids, padding_mask, masked_token_ids, mlm_labels, mlm_weights}.

    `records` have `.image`; `encoded` is `tokenizer.encode` of their captions. Images go through the library
    pipeline (decode, resize, grey -> 3 channels, augmentation, normalisation); each image carries its pair's index
    as its "label", which picks its caption's tokens. Whole-word masks are drawn per batch from a seeded random
    stream: new masks every epoch when training, the same ones for validation.
    """
    import tensorflow as tf

    from keras_medimg.datasets.pipeline import make_dataset, memory_cache_for
    from keras_medimg.models import vlm

    s = settings
    samples = [Sample(id=f"pair{i}", path=r.image, label=str(i)) for i, r in enumerate(records)]
    images = make_dataset(samples, image_size=s.image_size, training=training, batch_size=s.batch_size,
                          channels=3, normalization=s.normalization, augment=s.augment if training else None,
                          class_names=[x.label for x in samples], cache=memory_cache_for(len(samples), s.image_size),
                          seed=s.seed, skipped=skipped, strict=s.strict, deterministic=True,
                          drop_remainder=s.fixed_batches or (training and len(samples) > s.batch_size))
    tokens = {k: tf.constant(encoded[k]) for k in ("token_ids", "padding_mask", "word_ids")}
    seeds = tf.data.Dataset.random(seed=s.seed, rerandomize_each_iteration=training).batch(2)

    def features(batch, seed):
        (pixels, index) = batch
        token_ids = tf.gather(tokens["token_ids"], index)
        masks = vlm.mask_words(token_ids, tf.gather(tokens["word_ids"], index), seed,
                               vocabulary_size=tokenizer.vocabulary_size, mask_id=tokenizer.mask_id,
                               rate=s.mask_rate, mask_share=s.mask_share, random_share=s.random_share)
        return {"images": pixels, "token_ids": token_ids, "padding_mask": tf.gather(tokens["padding_mask"], index),
                **masks}

    return tf.data.Dataset.zip((images, seeds)).map(features).prefetch(2)


def evaluate_retrieval(model: Any, records: Sequence[Any], encoded: Mapping[str, np.ndarray], *, image_size: int,
                       normalization: Any, recall_at: Sequence[int]) -> dict[str, float]:
    """`vlm.retrieval_recall` of `model` on the pairs `records` (captions encoded as `encoded`); pairs whose image
    cannot be read are left out."""
    from keras_medimg.datasets.pipeline import load_images_numpy
    from keras_medimg.models import vlm

    samples = [Sample(id=f"pair{i}", path=r.image) for i, r in enumerate(records)]
    images, kept = load_images_numpy(samples, image_size=image_size, channels=3, normalization=normalization,
                                     skipped=Skipped())
    index = [int(s.id[4:]) for s in kept]
    image_emb = model.encode_images(images)
    text_emb = model.encode_texts(encoded["token_ids"][index], encoded["padding_mask"][index])
    return vlm.retrieval_recall(image_emb, text_emb, [records[i].caption for i in index], list(recall_at))


# === A trained dual encoder ===


def open_vlm(path: str | Path) -> tuple[Any, Path | None]:
    """A pretrain run folder (weights/best.keras, else last.keras) or a .keras file -> (MamClip, run folder or None)."""
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


def open_vlm_with_tokenizer(source: str | Path) -> tuple[Any, Any, Path, dict[str, Any]]:
    """A pretrain run folder -> (MamClip, its tokenizer, the folder, weights/vlm.json)."""
    from keras_medimg.models import vlm

    model, folder = open_vlm(source)
    if folder is None or not (folder / "weights" / "vocab.txt").is_file():
        raise InvalidInputError(source, "needs the pretrain run folder (its weights/vocab.txt holds the tokenizer).")
    length = int(model.text_encoder.input["token_ids"].shape[1])
    info = json.loads((folder / "weights" / "vlm.json").read_text())
    tok = vlm.WordPieceTokenizer.from_file(folder / "weights" / "vocab.txt", sequence_length=length,
                                           lowercase=info["tokenizer"]["lowercase"])
    return model, tok, folder, info


def embed_images(model: Any, samples: Sequence[Sample], *, image_size: int, normalization: Any, skipped: Skipped,
                 strict: bool = False) -> tuple[np.ndarray, list[Sample]]:
    """L2-normalised image embeddings of the readable `samples` (unreadable ones go to `skipped`), and those."""
    from keras_medimg.datasets.pipeline import predict_samples
    from keras_medimg.models import vlm

    return predict_samples(vlm.image_embedder(model), samples, image_size=image_size, channels=3,
                           normalization=normalization, skipped=skipped, strict=strict)


def export_encoders(model: Any, tokenizer: Any, out: Path, *, info: Mapping[str, Any], formats: Sequence[str],
                    atol: float, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The image encoder and the text encoder (float token ids in, padding from [PAD]) of `model` under `out`, each
    in `formats` and verified against Keras, with metadata.json (preprocessing, logit scale, tokenizer) and the
    vocabulary beside each; `info` is the run's weights/vlm.json. Returns the files and the largest differences."""
    import keras

    from keras_medimg.export import export_model
    from keras_medimg.models import vlm

    tokenizer.save(out / "vocab.txt")
    norm = image_normalization(info["spec"]["backbone"])
    scale = float(keras.ops.convert_to_numpy(model.clipped_scale()))
    common = {**metadata, "logit_scale": float(np.exp(scale)), "log_logit_scale": scale,
              "embed_dim": int(model.image_encoder.output_shape[-1]), "spec": info["spec"]}
    size = list(image_hw(info["spec"]["image_size"]))  # [height, width]
    image_result = export_model(vlm.image_embedder(model), out / "image_encoder", formats=list(formats), atol=atol,
                                metadata={**common, "part": "image_encoder", "preprocessing": {
                                    "image_size": size, "channels": 3, "grey_to_rgb": "repeat",
                                    "scale": "per-image min-max to [0, 1]",
                                    "normalization": {"mean": list(norm.mean), "std": list(norm.std)}}})
    enc = tokenizer.encode(["an irregular mass with spiculated margins", "scattered fibroglandular density"])
    text_result = export_model(vlm.text_embedder(model, tokenizer.pad_id), out / "text_encoder", formats=list(formats),
                               atol=atol, sample_input=enc["token_ids"].astype("float32"),
                               metadata={**common, "part": "text_encoder", "tokenizer": {
                                   **tokenizer.config(), "vocabulary": "vocab.txt", "pad_id": tokenizer.pad_id,
                                   "cls_id": tokenizer.cls_id, "sep_id": tokenizer.sep_id,
                                   "input": "token ids as float32"}})
    for part in ("image_encoder", "text_encoder"):
        (out / part / "vocab.txt").write_text((out / "vocab.txt").read_text())
    return {"files": {"image_encoder": {k: str(v) for k, v in image_result.paths.items()},
                      "text_encoder": {k: str(v) for k, v in text_result.paths.items()}},
            "max_abs_diff": {"image_encoder": image_result.max_abs_diff, "text_encoder": text_result.max_abs_diff}}


def float32_copy(model: Any, tokenizer: Any, info: Mapping[str, Any]) -> Any:
    """A MamClip trained under mixed precision, rebuilt in float32 from its spec (`info`, the run's vlm.json) with
    the same weights: served models run on CPUs too, where float16 is slow, and tf2onnx mistypes a float16 GELU
    (onnxruntime refuses the file)."""
    import logging

    from keras_medimg.models import convnextv2, vlm

    spec = dict(info["spec"])
    # The weights come from the trained model: none are loaded ("imagenet" would download).
    spec = vlm.VlmSpec(**{**spec, "text": vlm.TextEncoderSpec(**spec["text"]), "weights": None})
    with convnextv2.global_dtype_policy("float32"):
        copy = vlm.build_from_spec(spec, tokenizer)
    copy.set_weights(model.get_weights())
    logging.getLogger(__name__).info("Exporting the '%s' model in float32.", model.dtype_policy.name)
    return copy


def is_torch_checkpoint(source: str | Path) -> bool:
    """A PyTorch file (the study's released checkpoints) rather than a pretrain run of ours."""
    from keras_medimg.models.torch_weights import TORCH_SUFFIXES

    return Path(source).suffix.lower() in TORCH_SUFFIXES


def check_vlm_init(source: str | Path, backbone: str) -> None:
    """Before a run starts: `--init vlm:SOURCE` opens (a pretrain run), or, for a PyTorch file, exists and has a
    backbone that loads it."""
    from keras_medimg.models.backbones import TORCH_CONVNEXT

    if not is_torch_checkpoint(source):
        open_vlm(source)
        return
    if not Path(source).is_file():
        raise InvalidInputError(source, "does not exist; pass --init vlm:RUN (a pretrain run) or vlm:FILE (a "
                                        "PyTorch checkpoint such as pretrain_convnext_tiny.ckpt).")
    if backbone not in TORCH_CONVNEXT:
        raise ConfigError(f"--init vlm:{source} is a PyTorch checkpoint, which loads into "
                          f"{' or '.join(TORCH_CONVNEXT)}, not model.backbone '{backbone}'; add --set "
                          "model.backbone=convnext_tiny (or convnext_small, as the checkpoint's name says).")


def init_backbone(init: str, vlm_source: str | Path | None, *, backbone: str, image_size: int | Sequence[int],
                  weights: str | None = None) -> Any:
    """The headless image backbone a fine-tuning starts from: "vlm" (the image encoder of the pretrain run
    `vlm_source`, or of a PyTorch checkpoint such as the study's released `pretrain_convnext_tiny.ckpt`),
    "imagenet" (`weights`, default the ImageNet download) or "none" (random), at `image_size`."""
    return init_start(init, vlm_source, backbone=backbone, image_size=image_size, weights=weights)[0]


def init_start(init: str, vlm_source: str | Path | None, *, backbone: str, image_size: int | Sequence[int],
               weights: str | None = None) -> tuple[Any, dict[str, list[np.ndarray]]]:
    """`init_backbone`, and the head weights a classifier on it starts from (`training.curve`): for a pretrain run,
    {"pool_norm": [gamma, beta]}, the image tower's LayerNorm on the pooled features, which its features were
    trained to be read through; {} otherwise (a fresh LayerNorm)."""
    import keras

    from keras_medimg.models.backbones import build_backbone

    shape = (*image_hw(image_size), 3)
    if init == "imagenet":
        return build_backbone(backbone, input_shape=shape, weights=weights or "imagenet"), {}
    if init == "none":
        return build_backbone(backbone, input_shape=shape, weights=None), {}
    if init != "vlm":
        raise ConfigError(f"Unknown init '{init}'. Use vlm:RUN, imagenet or none.")
    if vlm_source is None:
        raise ConfigError("--init vlm needs a pretrain run: pass --init vlm:RUN.")
    if is_torch_checkpoint(vlm_source):
        # A released PyTorch model (MAM-CLIP's pretrain_convnext_tiny.ckpt): its image encoder only.
        return build_backbone(backbone, input_shape=shape, weights=str(vlm_source)), {}
    model, _ = open_vlm(vlm_source)
    pretrained = model.image_encoder.get_layer("backbone")
    norms = [layer for layer in model.image_encoder.layers if layer.name == "pool_norm"]
    head = {"pool_norm": [np.array(w) for w in norms[0].get_weights()]} if norms else {}
    if tuple(pretrained.input_shape[1:3]) != shape[:2]:
        height, width = pretrained.input_shape[1:3]
        taken = height if height == width else [height, width]
        raise ConfigError(f"The pretrained encoder of {vlm_source} takes {height}x{width} images but model.image_size "
                          f"is {image_size}; set model.image_size to {taken}.")
    if pretrained.dtype_policy.name == keras.config.dtype_policy().name:
        return pretrained, head
    # Layers keep the policy they were built under: to fine-tune under another (finetune.mixed_precision), the
    # weights go into a fresh backbone built under the global policy.
    fresh = build_backbone(backbone, input_shape=shape, weights=None)
    if [tuple(w.shape) for w in pretrained.weights] != [tuple(w.shape) for w in fresh.weights]:
        raise ConfigError(f"The image encoder of {vlm_source} is not a '{backbone}' (model.backbone); set "
                          "model.backbone to the backbone it was pretrained with.")
    fresh.set_weights(pretrained.get_weights())
    import logging

    logging.getLogger(__name__).info("Rebuilt the pretrained '%s' encoder from the '%s' to the '%s' dtype policy "
                                     "(finetune.mixed_precision).", backbone, pretrained.dtype_policy.name,
                                     fresh.dtype_policy.name)
    return fresh, head
