"""MAM-CLIP: a CLIP-style dual encoder with a fusion transformer for masked-language modelling (Keras 3).

The image tower is a registry backbone (ConvNeXt in the study) whose pooled features go through a linear layer to
the embedding width; the text tower is a keras-hub BERT whose [CLS] state goes through a projection (no bias) to the
same width. Both embeddings are L2-normalised and compared with a learnable temperature (`logit_scale`, initialised at
log(1/0.07), clipped at log(100) as in CLIP). The loss is the symmetric InfoNCE plus `mlm_weight` times a
masked-language-modelling loss: a fusion transformer (pre-norm, one layer by default) reads
[masked text states, a learned image token, the image embedding] and a linear head predicts the vocabulary at the
masked positions only.

Text enters as token ids made by `WordPieceTokenizer` (keras-hub's BERT WordPiece, with word boundaries kept), and
whole-word masking (`mask_words`) runs inside tf.data, seeded, so that the model itself only sees integer tensors.
Everything in the model is `keras.ops` / Keras layers: it trains on TensorFlow, PyTorch and JAX and round-trips
through `.keras` files.

Example:
```python
tokenizer = WordPieceTokenizer.build(["a spiculated mass", "scattered calcifications"], sequence_length=16)
model = build_mamclip(tokenizer, image_size=64, backbone="convnextv2_atto", text=TINY_TEXT, embed_dim=32)
batch = tokenizer.encode(["a spiculated mass"])
model.encode_texts(batch["token_ids"], batch["padding_mask"])  # (1, 32), unit norm
```
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import keras_hub  # noqa: F401  registers BertBackbone, so that `keras.saving.load_model` finds it
import numpy as np
from keras import ops

from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.models import convnextv2  # noqa: F401  registers ConvNeXtV2Backbone for loading

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)
_WORD = re.compile(r"\w+|[^\w\s]")


# === Tokenizer ===


class WordPieceTokenizer:
    """BERT WordPiece tokenization that keeps word boundaries, for whole-word masking.

    A caption is split into words as BERT's basic tokenizer does (lower-cased, accents stripped, punctuation on
    its own), each word into word pieces by keras-hub's `BertTokenizer`, then `[CLS] pieces [SEP]`, cut to
    `sequence_length` and padded with `[PAD]`.

    Args:
        vocabulary: the token list, index = id; must hold [PAD], [UNK], [CLS], [SEP] and [MASK].
        sequence_length: tokens per caption, [CLS] and [SEP] included (study: 100).
        lowercase: lower-case and strip accents (uncased models such as PubMedBERT-uncased).

    Example:
        >>> tok = WordPieceTokenizer.build(["Spiculated mass, BI-RADS 5."], sequence_length=12)
        >>> tok.encode(["spiculated mass"])["word_ids"][0][:5].tolist()
        [-1, 0, 1, -1, -1]
    """

    def __init__(self, vocabulary: Sequence[str], *, sequence_length: int = 100, lowercase: bool = True):
        missing = [t for t in SPECIAL_TOKENS if t not in vocabulary]
        if missing:
            raise ConfigError(f"The tokenizer vocabulary lacks the special token(s) {missing}; a BERT vocabulary "
                              "(vocab.txt) has them all.")
        if sequence_length < 3:
            raise ConfigError(f"text length must be at least 3 ([CLS] word [SEP]); got {sequence_length}.")
        self.vocabulary = list(vocabulary)
        self.sequence_length = int(sequence_length)
        self.lowercase = lowercase
        self.index = {token: i for i, token in enumerate(self.vocabulary)}
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (self.index[t] for t in SPECIAL_TOKENS)
        self._pieces: dict[str, list[int]] = {}
        self._hub = None

    @property
    def vocabulary_size(self) -> int:
        return len(self.vocabulary)

    @property
    def special_ids(self) -> list[int]:
        """Ids never drawn as the random replacement of a masked piece (the special tokens)."""
        return [self.index[t] for t in SPECIAL_TOKENS]

    # --- construction ---

    @classmethod
    def build(cls, captions: Sequence[str], *, sequence_length: int = 100, min_count: int = 1,
              lowercase: bool = True) -> WordPieceTokenizer:
        """A small vocabulary from captions: the special tokens, every word seen `min_count` times, and every
        character alone and as a `##` continuation (so an unseen word still splits into known pieces)."""
        counts = Counter(w for caption in captions for w in split_words(caption, lowercase=lowercase))
        words = sorted(w for w, n in counts.items() if n >= min_count)
        chars = sorted({c for w in counts for c in w})
        vocabulary = list(SPECIAL_TOKENS) + words
        vocabulary += [c for c in chars if c not in set(words)] + [f"##{c}" for c in chars]
        return cls(vocabulary, sequence_length=sequence_length, lowercase=lowercase)

    @classmethod
    def from_file(cls, path: str | Path, *, sequence_length: int = 100, lowercase: bool = True) -> WordPieceTokenizer:
        """Read a vocabulary file, one token a line: a Hugging Face `vocab.txt` or keras-hub's vocabulary.txt."""
        path = Path(path)
        if not path.is_file():
            raise InvalidInputError(path, "the tokenizer vocabulary file does not exist. Pass a BERT vocab.txt or a "
                                          "keras-hub preset folder.")
        tokens = path.read_text(encoding="utf-8").splitlines()
        return cls([t.rstrip("\r") for t in tokens], sequence_length=sequence_length, lowercase=lowercase)

    @classmethod
    def from_folder(cls, folder: str | Path, *, sequence_length: int = 100) -> WordPieceTokenizer:
        """The vocabulary of a keras-hub preset folder (assets/tokenizer/vocabulary.txt) or a Hugging Face folder
        (vocab.txt). Lower-casing as the folder says (see `_lowercase_of`); uncased when it says nothing."""
        folder = Path(folder)
        lowercase = _lowercase_of(folder)
        for candidate in (folder / "vocab.txt", folder / "assets" / "tokenizer" / "vocabulary.txt"):
            if candidate.is_file():
                return cls.from_file(candidate, sequence_length=sequence_length, lowercase=lowercase)
        raise InvalidInputError(folder, "holds no BERT vocabulary (vocab.txt or assets/tokenizer/vocabulary.txt). "
                                        "Pass a keras-hub BERT preset folder or a Hugging Face BERT folder.")

    def save(self, path: str | Path) -> Path:
        """Write the vocabulary, one token a line (the vocab.txt format)."""
        from keras_medimg.runs import atomic_write_text

        return atomic_write_text(path, "\n".join(self.vocabulary) + "\n")

    def config(self) -> dict[str, Any]:
        return {"sequence_length": self.sequence_length, "lowercase": self.lowercase,
                "vocabulary_size": self.vocabulary_size}

    # --- encoding ---

    def _word_pieces(self, words: Sequence[str]) -> list[list[int]]:
        new = [w for w in dict.fromkeys(words) if w not in self._pieces]
        if new:
            if self._hub is None:
                import keras_hub

                self._hub = keras_hub.tokenizers.BertTokenizer(vocabulary=self.vocabulary, lowercase=False)
            for word, pieces in zip(new, self._hub(new)):
                ids = [int(i) for i in np.asarray(pieces).tolist()]
                self._pieces[word] = ids or [self.unk_id]
        return [self._pieces[w] for w in words]

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Token ids, padding mask and word ids of captions.

        Returns:
            {"token_ids": int32 (N, L), "padding_mask": int32 (N, L) 1 at real tokens, "word_ids": int32 (N, L)
             the word each piece belongs to (-1 at [CLS], [SEP], [PAD]), "truncated": bool (N,) captions cut}.
        """
        n, length = len(texts), self.sequence_length
        token_ids = np.full((n, length), self.pad_id, np.int32)
        word_ids = np.full((n, length), -1, np.int32)
        truncated = np.zeros(n, bool)
        for row, text in enumerate(texts):
            words = split_words(text, lowercase=self.lowercase)
            ids, owners = [self.cls_id], [-1]
            for w, pieces in enumerate(self._word_pieces(words)):
                ids += pieces
                owners += [w] * len(pieces)
            if len(ids) > length - 1:
                truncated[row] = True
                ids, owners = ids[: length - 1], owners[: length - 1]
            ids.append(self.sep_id)
            owners.append(-1)
            token_ids[row, : len(ids)] = ids
            word_ids[row, : len(owners)] = owners
        return {"token_ids": token_ids, "padding_mask": (token_ids != self.pad_id).astype(np.int32),
                "word_ids": word_ids, "truncated": truncated}

    def decode(self, token_ids: Sequence[int]) -> str:
        """Ids back to text (pieces joined, specials dropped), for reports and tests."""
        text = ""
        for i in token_ids:
            token = self.vocabulary[int(i)]
            if token in (PAD, CLS, SEP):
                continue
            text += token[2:] if token.startswith("##") else (" " + token if text else token)
        return text


def _lowercase_of(folder: Path) -> bool:
    """Whether a BERT folder's tokenizer lower-cases: Hugging Face's tokenizer_config.json (`do_lower_case`) or
    tokenizer.json (`normalizer.lowercase`), keras-hub's tokenizer.json (`config.lowercase`); True when none says
    (Hugging Face's BertTokenizer default). A cased model read lower-cased would map most words to [UNK]."""
    def read(name: str) -> Any:
        path = folder / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8-sig"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInputError(path, f"is not valid JSON ({exc}).") from exc

    hf_config = read("tokenizer_config.json")
    if isinstance(hf_config, dict) and "do_lower_case" in hf_config:
        return bool(hf_config["do_lower_case"])
    tokenizer = read("tokenizer.json")
    if isinstance(tokenizer, dict):
        for section in (tokenizer.get("config"), tokenizer.get("normalizer")):  # keras-hub | Hugging Face fast
            if isinstance(section, dict) and "lowercase" in section:
                return bool(section["lowercase"])
    return True


def split_words(text: str, *, lowercase: bool = True) -> list[str]:
    """BERT's basic tokenization: optional lower-casing and accent stripping, split on spaces and punctuation."""
    if lowercase:
        text = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
    return _WORD.findall(text)


# === Whole-word masking (tf.data) ===


def mask_words(token_ids: Any, word_ids: Any, seed: Any, *, vocabulary_size: int, mask_id: int,
               first_regular_id: int = len(SPECIAL_TOKENS), rate: float = 0.15,
               mask_share: float = 0.8, random_share: float = 0.1) -> dict[str, Any]:
    """BERT whole-word masking of a batch, with TensorFlow ops (for `tf.data.Dataset.map`).

    Each word is chosen with probability `rate`; every word piece of a chosen word then becomes [MASK]
    (`mask_share`), a random regular token (`random_share`) or stays as it is (the rest). Special tokens and
    padding (word id -1) are never chosen.

    Args:
        token_ids: int32 (B, L).
        word_ids: int32 (B, L), the word of each piece, -1 for specials and padding.
        seed: int32/int64 shape (2,) stateless seed; the same seed gives the same masks.
        vocabulary_size: size of the vocabulary (random replacements are drawn from [first_regular_id, size)).
        mask_id: id of [MASK].
        first_regular_id: the first id that is not a special token.

    Returns:
        {"masked_token_ids": int32 (B, L), "mlm_labels": int32 (B, L) the original ids (0 where not chosen),
         "mlm_weights": float32 (B, L) 1 at chosen pieces, 0 elsewhere}.
    """
    import tensorflow as tf

    token_ids = tf.cast(token_ids, tf.int32)
    word_ids = tf.cast(word_ids, tf.int32)
    seed = tf.cast(seed, tf.int64)
    shape = tf.shape(token_ids)
    seeds = tf.random.experimental.stateless_split(seed, 3)
    # One draw per word slot (a caption has at most L words), gathered onto its pieces: whole words.
    word_draw = tf.random.stateless_uniform(shape, seeds[0])
    chosen = tf.gather(word_draw, tf.maximum(word_ids, 0), batch_dims=1) < rate
    chosen = tf.logical_and(chosen, word_ids >= 0)
    action = tf.random.stateless_uniform(shape, seeds[1])
    random_tokens = tf.random.stateless_uniform(shape, seeds[2], minval=first_regular_id, maxval=vocabulary_size,
                                                dtype=tf.int32)
    replaced = tf.where(action < mask_share, tf.fill(shape, mask_id),
                        tf.where(action < mask_share + random_share, random_tokens, token_ids))
    return {
        "masked_token_ids": tf.where(chosen, replaced, token_ids),
        "mlm_labels": tf.where(chosen, token_ids, tf.zeros_like(token_ids)),
        "mlm_weights": tf.cast(chosen, tf.float32),
    }


# === Losses ===


def info_nce(image_embeddings: Any, text_embeddings: Any, logit_scale: Any) -> Any:
    """Symmetric InfoNCE of L2-normalised embeddings (B, D): the mean of the image->text and text->image
    cross-entropies of `exp(logit_scale) * cosine` with the matching pair as the target."""
    logits = ops.exp(logit_scale) * ops.matmul(image_embeddings, ops.transpose(text_embeddings))
    targets = ops.arange(ops.shape(logits)[0])
    image_to_text = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    text_to_image = keras.losses.sparse_categorical_crossentropy(targets, ops.transpose(logits), from_logits=True)
    return (ops.mean(image_to_text) + ops.mean(text_to_image)) / 2


def masked_lm_loss(logits: Any, labels: Any, weights: Any) -> Any:
    """Cross-entropy over the vocabulary, averaged over the masked positions only (`weights` 1) of the batch;
    0 when nothing is masked."""
    per_token = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    weights = ops.cast(weights, per_token.dtype)
    return ops.sum(per_token * weights) / ops.maximum(ops.sum(weights), 1.0)


# === Layers ===


@keras.saving.register_keras_serializable(package="keras_medimg")
class LearnedToken(keras.layers.Layer):
    """A learned vector (1, 1, width) broadcast over the batch: the fusion transformer's image token."""

    def __init__(self, width: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.width = width

    def build(self, input_shape: Any) -> None:
        self.token = self.add_weight(shape=(1, 1, self.width), initializer=keras.initializers.TruncatedNormal(0.02),
                                     name="token")

    def call(self, reference: Any) -> Any:
        batch = ops.shape(reference)[0]
        return ops.broadcast_to(ops.cast(self.token, reference.dtype), (batch, 1, self.width))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "width": self.width}


@keras.saving.register_keras_serializable(package="keras_medimg")
class AttentionMask(keras.layers.Layer):
    """(B, L) text padding mask -> (B, S, S) attention mask over [text, image token, image embedding]."""

    def __init__(self, extra: int = 2, **kwargs: Any):
        super().__init__(**kwargs)
        self.extra = extra

    def call(self, padding_mask: Any) -> Any:
        keep = ops.concatenate([ops.cast(padding_mask, "bool"),
                                ops.ones((ops.shape(padding_mask)[0], self.extra), "bool")], axis=1)
        return ops.logical_and(ops.expand_dims(keep, 1), ops.expand_dims(keep, 2))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "extra": self.extra}


def fusion_block(x: Any, mask: Any, *, heads: int, mlp_ratio: int, dropout: float, name: str) -> Any:
    """One pre-norm transformer layer: x + MHA(LN(x)), then x + MLP(LN(x))."""
    width = x.shape[-1]
    h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln1")(x)
    h = keras.layers.MultiHeadAttention(heads, width // heads, dropout=dropout, name=f"{name}_attention")(
        h, h, attention_mask=mask)
    x = keras.layers.Add(name=f"{name}_add1")([x, h])
    h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln2")(x)
    h = keras.layers.Dense(width * mlp_ratio, activation="gelu", name=f"{name}_mlp1")(h)
    h = keras.layers.Dense(width, name=f"{name}_mlp2")(h)
    return keras.layers.Add(name=f"{name}_add2")([x, h])


@keras.saving.register_keras_serializable(package="keras_medimg")
class TakePositions(keras.layers.Layer):
    """x[:, start:stop, :]: the [CLS] state (0, 1) of a sequence, or the text positions of the fusion output."""

    def __init__(self, start: int, stop: int, squeeze: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.start, self.stop, self.squeeze = start, stop, squeeze

    def call(self, x: Any) -> Any:
        return x[:, self.start, :] if self.squeeze else x[:, self.start:self.stop, :]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "start": self.start, "stop": self.stop, "squeeze": self.squeeze}


@keras.saving.register_keras_serializable(package="keras_medimg")
class MaskedMean(keras.layers.Layer):
    """Mean of the token states over the real tokens (padding mask 1): the text embedding of a BERT trained from
    scratch, whose [CLS] state starts out nearly the same for every caption."""

    def call(self, sequence: Any, padding_mask: Any) -> Any:
        mask = ops.expand_dims(ops.cast(padding_mask, sequence.dtype), -1)
        return ops.sum(sequence * mask, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1.0)


@keras.saving.register_keras_serializable(package="keras_medimg")
class ZerosLike(keras.layers.Layer):
    """Zeros shaped like the token ids: BERT's segment ids for one-segment text."""

    def call(self, x: Any) -> Any:
        return ops.zeros_like(x)


# === Towers ===


@dataclass(frozen=True)
class TextEncoderSpec:
    """A BERT text encoder: a keras-hub preset / Hugging Face folder (`preset`), or a random one of this size."""

    preset: str | None = None  # folder: keras-hub BERT preset, or Hugging Face BERT (config.json, vocab.txt, weights)
    num_layers: int = 2
    num_heads: int = 2
    hidden_dim: int = 64
    intermediate_dim: int = 128
    dropout: float = 0.1
    pooling: str = "cls"  # cls (the study: [CLS] state) | mean (masked mean of the token states)


#: The tiny BERT of tests and the demo (trained from scratch, so its text embedding is the mean token state).
TINY_TEXT = TextEncoderSpec(num_layers=2, num_heads=2, hidden_dim=64, intermediate_dim=128, pooling="mean")


def build_image_tower(backbone: str, *, image_size: int | Sequence[int], embed_dim: int,
                      weights: str | Path | None = None, name: str = "image_encoder") -> keras.Model:
    """Registry backbone ("backbone") -> global average pooling -> LayerNorm -> Dense(embed_dim) ("image_projection"),
    on images of `image_size` (a side, or (height, width))."""
    from keras_medimg.config import image_hw
    from keras_medimg.models.backbones import build_backbone
    from keras_medimg.models.classifier import pool_norm_layer

    shape = (*image_hw(image_size), 3)
    body = build_backbone(backbone, input_shape=shape, weights=weights)
    body.name = "backbone"
    images = keras.Input(shape, name="images")
    features = keras.layers.GlobalAveragePooling2D(name="pool")(body(images))
    # As ConvNeXt's own head: pooled features are layer-normalised before the linear layer. Without it the
    # pooled vector is dominated by a component shared by all images, and the embeddings collapse to one direction.
    features = pool_norm_layer()(features)
    embedding = keras.layers.Dense(embed_dim, name="image_projection")(features)
    return keras.Model(images, embedding, name=name)


def load_bert(spec: TextEncoderSpec, *, vocabulary_size: int, sequence_length: int) -> keras.Model:
    """The keras-hub BertBackbone of `spec`: loaded from its folder, or built with random weights."""
    if spec.preset is None:
        return keras_hub.models.BertBackbone(
            vocabulary_size=vocabulary_size, num_layers=spec.num_layers, num_heads=spec.num_heads,
            hidden_dim=spec.hidden_dim, intermediate_dim=spec.intermediate_dim, dropout=spec.dropout,
            max_sequence_length=max(sequence_length, 8), name="bert")
    folder = Path(spec.preset).expanduser()
    if not folder.is_dir():
        raise InvalidInputError(folder, "the text encoder folder does not exist. Pass a keras-hub BERT preset folder "
                                        "or a Hugging Face BERT folder (config.json, vocab.txt, model.safetensors or "
                                        "pytorch_model.bin).")
    from keras_medimg.models.hf_bert import bert_preset_folder

    readable = bert_preset_folder(folder)  # pytorch_model.bin or a missing pooler: a converted copy
    try:
        bert = keras_hub.models.BertBackbone.from_preset(str(readable))
    except Exception as exc:
        raise InvalidInputError(folder, f"is not a loadable BERT ({type(exc).__name__}: {exc}). Pass a keras-hub "
                                        "BERT preset folder, or a Hugging Face BERT folder (config.json, vocab.txt, "
                                        "model.safetensors or pytorch_model.bin).") from exc
    # More embeddings than vocabulary lines is common (vocab_size padded to a multiple of 8 or 64): the extra rows
    # are never looked up. Fewer would index past the table.
    if bert.vocabulary_size < vocabulary_size:
        raise InvalidInputError(folder, f"the BERT has {bert.vocabulary_size} token embeddings but its vocabulary "
                                        f"has {vocabulary_size} tokens; pass the vocabulary of this model.")
    if bert.max_sequence_length < sequence_length:
        raise ConfigError(f"The text length {sequence_length} is longer than the BERT's {bert.max_sequence_length} "
                          "positions. Lower model.text_length.")
    return bert


def build_text_tower(bert: keras.Model, *, sequence_length: int, embed_dim: int, pooling: str = "cls",
                     name: str = "text_encoder") -> keras.Model:
    """BERT -> {"embedding": [CLS] state (or the masked mean of the token states, `pooling="mean"`) x projection
    (no bias), "sequence": the token states}."""
    if pooling not in ("cls", "mean"):
        raise ConfigError(f"Text pooling must be cls or mean, not '{pooling}'.")
    token_ids = keras.Input((sequence_length,), dtype="int32", name="token_ids")
    padding_mask = keras.Input((sequence_length,), dtype="int32", name="padding_mask")
    states = bert({"token_ids": token_ids, "padding_mask": padding_mask,
                   "segment_ids": ZerosLike(name="segment_ids")(token_ids)})
    sequence = states["sequence_output"]
    if pooling == "cls":
        pooled = TakePositions(0, 1, squeeze=True, name="cls_state")(sequence)
    else:
        pooled = MaskedMean(name="mean_state")(sequence, padding_mask)
    embedding = keras.layers.Dense(embed_dim, use_bias=False, name="text_projection")(pooled)
    return keras.Model({"token_ids": token_ids, "padding_mask": padding_mask},
                       {"embedding": embedding, "sequence": sequence}, name=name)


def build_fusion(*, sequence_length: int, text_width: int, embed_dim: int, vocabulary_size: int, layers: int = 1,
                 heads: int = 8, mlp_ratio: int = 4, dropout: float = 0.0, name: str = "fusion") -> keras.Model:
    """[text states, learned image token, image embedding] -> `layers` pre-norm blocks -> vocabulary logits
    at the text positions (B, L, V)."""
    if text_width % heads:
        raise ConfigError(f"The fusion width {text_width} (the text encoder's) must be a multiple of "
                          f"model.fusion_heads ({heads}).")
    sequence = keras.Input((sequence_length, text_width), name="sequence")
    image = keras.Input((embed_dim,), name="image_embedding")
    padding_mask = keras.Input((sequence_length,), dtype="int32", name="padding_mask")
    image_state = keras.layers.Dense(text_width, name="image_to_fusion")(image)
    image_state = keras.layers.Reshape((1, text_width), name="image_state")(image_state)
    image_token = LearnedToken(text_width, name="image_token")(sequence)
    x = keras.layers.Concatenate(axis=1, name="fusion_input")([sequence, image_token, image_state])
    mask = AttentionMask(2, name="attention_mask")(padding_mask)
    for i in range(layers):
        x = fusion_block(x, mask, heads=heads, mlp_ratio=mlp_ratio, dropout=dropout, name=f"block{i}")
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    text_part = TakePositions(0, sequence_length, name="text_positions")(x)
    logits = keras.layers.Dense(vocabulary_size, name="mlm_head", dtype="float32")(text_part)
    return keras.Model({"sequence": sequence, "image_embedding": image, "padding_mask": padding_mask}, logits,
                       name=name)


# === The model ===


@keras.saving.register_keras_serializable(package="keras_medimg")
class MamClip(keras.Model):
    """The MAM-CLIP dual encoder with its MLM fusion branch; `fit` trains it on batches from `pairs_dataset`.

    Inputs of `call` (a dict): "images" float (B, H, W, 3) normalised for the backbone, "token_ids" and
    "padding_mask" int32 (B, L); for the loss also "masked_token_ids", "mlm_labels", "mlm_weights" (see
    `mask_words`). Outputs: "image_embedding", "text_embedding" (B, D), L2-normalised, and "mlm_logits"
    (B, L, V) when masked ids are given.

    Logged during `fit`: loss (= contrastive + mlm_weight * mlm), contrastive, mlm, logit_scale (exp of it is the
    inverse temperature).

    Args:
        image_encoder: images -> (B, D) embedding (`build_image_tower`).
        text_encoder: {"token_ids", "padding_mask"} -> {"embedding" (B, D), "sequence" (B, L, W)} (`build_text_tower`).
        fusion: {"sequence", "image_embedding", "padding_mask"} -> (B, L, V) logits (`build_fusion`).
        mlm_weight: lambda of the MLM term (study: 0.5); 0 trains the contrastive loss alone.
        logit_scale_init: the initial log inverse temperature (study: log(1/0.07)).
    """

    def __init__(self, image_encoder: keras.Model, text_encoder: keras.Model, fusion: keras.Model, *,
                 mlm_weight: float = 0.5, logit_scale_init: float = LOGIT_SCALE_INIT, **kwargs: Any):
        super().__init__(**kwargs)
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.fusion = fusion
        # The [CLS] state is used, not BERT's pooler: freezing the pooler keeps it out of the optimizer. Set here,
        # where loading runs too, so a reloaded model has the same optimizer variables as the saved one.
        for layer in text_encoder.layers:
            if hasattr(layer, "get_layer") and any(sub.name == "pooled_dense" for sub in layer.layers):
                layer.get_layer("pooled_dense").trainable = False
        self.mlm_weight = float(mlm_weight)
        self.logit_scale_init = float(logit_scale_init)
        self.logit_scale = self.add_weight(shape=(), initializer=keras.initializers.Constant(logit_scale_init),
                                           name="logit_scale")
        self.contrastive_tracker = keras.metrics.Mean(name="contrastive")
        self.mlm_tracker = keras.metrics.Mean(name="mlm")
        self.scale_tracker = keras.metrics.Mean(name="logit_scale")
        self.built = True

    # --- inference ---

    def clipped_scale(self) -> Any:
        return ops.minimum(self.logit_scale, LOGIT_SCALE_MAX)

    def image_embedding(self, images: Any, training: bool = False) -> Any:
        """Images -> unnormalised image embeddings (what the fusion reads)."""
        return self.image_encoder(images, training=training)

    def encode_images(self, images: Any) -> np.ndarray:
        """Images (B, H, W, 3), normalised for the backbone -> L2-normalised embeddings as NumPy."""
        return ops.convert_to_numpy(_l2(self.image_encoder(images, training=False)))

    def encode_texts(self, token_ids: Any, padding_mask: Any) -> np.ndarray:
        """Token ids and padding mask (B, L) -> L2-normalised text embeddings as NumPy."""
        out = self.text_encoder({"token_ids": token_ids, "padding_mask": padding_mask}, training=False)
        return ops.convert_to_numpy(_l2(out["embedding"]))

    def call(self, inputs: Mapping[str, Any], training: bool = False) -> dict[str, Any]:
        image = self.image_encoder(inputs["images"], training=training)
        # NumPy token arrays beside traced tensors are refused by Keras' JAX backend outside jit: tensors for all.
        token_ids, padding_mask = ops.convert_to_tensor(inputs["token_ids"]), ops.convert_to_tensor(inputs["padding_mask"])
        text = self.text_encoder({"token_ids": token_ids, "padding_mask": padding_mask}, training=training)
        outputs = {"image_embedding": _l2(image), "text_embedding": _l2(text["embedding"])}
        if "masked_token_ids" in inputs and self.mlm_weight > 0:
            masked = self.text_encoder({"token_ids": ops.convert_to_tensor(inputs["masked_token_ids"]),
                                        "padding_mask": padding_mask}, training=training)
            outputs["mlm_logits"] = self.fusion({"sequence": masked["sequence"], "image_embedding": image,
                                                 "padding_mask": padding_mask}, training=training)
        return outputs

    # --- training ---

    def compute_loss(self, x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None,
                     training: bool = True) -> Any:
        scale = self.clipped_scale()
        contrastive = info_nce(ops.cast(y_pred["image_embedding"], "float32"),
                               ops.cast(y_pred["text_embedding"], "float32"), ops.cast(scale, "float32"))
        loss = contrastive
        # Weighted by batch size, as Keras weights the total loss, so that the logged parts add up to it.
        batch = ops.cast(ops.shape(y_pred["image_embedding"])[0], "float32")
        self.contrastive_tracker.update_state(contrastive, sample_weight=batch)
        if "mlm_logits" in y_pred:
            mlm = masked_lm_loss(y_pred["mlm_logits"], x["mlm_labels"], x["mlm_weights"])
            loss = loss + self.mlm_weight * mlm
            self.mlm_tracker.update_state(mlm, sample_weight=batch)
        self.scale_tracker.update_state(scale)
        return loss

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "image_encoder": keras.saving.serialize_keras_object(self.image_encoder),
            "text_encoder": keras.saving.serialize_keras_object(self.text_encoder),
            "fusion": keras.saving.serialize_keras_object(self.fusion),
            "mlm_weight": self.mlm_weight,
            "logit_scale_init": self.logit_scale_init,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MamClip:
        config = dict(config)
        # The towers are rebuilt under the policy the model was saved with: functional wrappers and backbones that
        # build their layers in `__init__` (ConvNeXtV2Backbone) take the global policy, so a mixed_float16 model
        # would come back partly float32 (and a resumed run would train in another precision than it started).
        with convnextv2.global_dtype_policy(config.get("dtype")):
            for key in ("image_encoder", "text_encoder", "fusion"):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def _l2(x: Any) -> Any:
    x = ops.cast(x, "float32")
    return x / ops.sqrt(ops.maximum(ops.sum(x * x, axis=-1, keepdims=True), 1e-12))


@dataclass(frozen=True)
class VlmSpec:
    """Everything `build_mamclip` needs besides the tokenizer (stored in the run's weights/vlm.json)."""

    backbone: str = "convnextv2_atto"
    image_size: int | tuple[int, int] = 64  # a side, or (height, width)
    embed_dim: int = 64
    weights: str | None = None
    text: TextEncoderSpec = TINY_TEXT
    fusion_layers: int = 1
    fusion_heads: int = 8
    fusion_mlp_ratio: int = 4
    mlm_weight: float = 0.5
    logit_scale_init: float = LOGIT_SCALE_INIT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_mamclip(tokenizer: WordPieceTokenizer, *, image_size: int | Sequence[int] = 64,
                  backbone: str = "convnextv2_atto",
                  text: TextEncoderSpec = TINY_TEXT, embed_dim: int = 64, weights: str | Path | None = None,
                  fusion_layers: int = 1, fusion_heads: int = 8, fusion_mlp_ratio: int = 4, mlm_weight: float = 0.5,
                  logit_scale_init: float = LOGIT_SCALE_INIT) -> MamClip:
    """Build the whole MAM-CLIP model for `tokenizer`'s vocabulary and text length.

    Args:
        tokenizer: the captions' tokenizer (its vocabulary size and sequence length shape the text side).
        image_size: input side, or (height, width) (study: (1024, 768); the demo: 64).
        backbone: registry name (study: convnext_small or convnext_tiny; convnextv2_* and efficientnetv2b3 too).
        text: the BERT to use (a preset folder such as PubMedBERT's, or a random one of a given size).
        embed_dim: shared embedding width (study: 768).
        weights: image backbone weights: None, "imagenet" or a local file.
        fusion_layers, fusion_heads, fusion_mlp_ratio: the fusion transformer (study: 1, 8, 4).
        mlm_weight: lambda of the MLM loss (study: 0.5).
        logit_scale_init: initial log inverse temperature.
    """
    bert = load_bert(text, vocabulary_size=tokenizer.vocabulary_size, sequence_length=tokenizer.sequence_length)
    return MamClip(
        build_image_tower(backbone, image_size=image_size, embed_dim=embed_dim, weights=weights),
        build_text_tower(bert, sequence_length=tokenizer.sequence_length, embed_dim=embed_dim, pooling=text.pooling),
        build_fusion(sequence_length=tokenizer.sequence_length, text_width=bert.hidden_dim, embed_dim=embed_dim,
                     vocabulary_size=tokenizer.vocabulary_size, layers=fusion_layers, heads=fusion_heads,
                     mlp_ratio=fusion_mlp_ratio),
        mlm_weight=mlm_weight, logit_scale_init=logit_scale_init, name="mamclip",
    )


def build_from_spec(spec: VlmSpec, tokenizer: WordPieceTokenizer) -> MamClip:
    return build_mamclip(tokenizer, image_size=spec.image_size, backbone=spec.backbone, text=spec.text,
                         embed_dim=spec.embed_dim, weights=spec.weights, fusion_layers=spec.fusion_layers,
                         fusion_heads=spec.fusion_heads, fusion_mlp_ratio=spec.fusion_mlp_ratio,
                         mlm_weight=spec.mlm_weight, logit_scale_init=spec.logit_scale_init)


# === Serving models ===


def image_embedder(model: MamClip) -> keras.Model:
    """images -> L2-normalised embedding, one input and one output (for export and `embed`)."""
    images = keras.Input(model.image_encoder.input_shape[1:], name="images")
    embedding = keras.layers.UnitNormalization(name="image_embedding")(model.image_encoder(images))
    return keras.Model(images, embedding, name="image_embedder")


@keras.saving.register_keras_serializable(package="keras_medimg")
class TokenInputs(keras.layers.Layer):
    """float token ids (B, L) -> int32 ids and padding mask: a text model with one float input, as exporters take."""

    def __init__(self, pad_id: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.pad_id = pad_id

    def call(self, ids: Any) -> tuple[Any, Any]:
        ids = ops.cast(ops.round(ids), "int32")
        return ids, ops.cast(ops.not_equal(ids, self.pad_id), "int32")

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "pad_id": self.pad_id}


def text_embedder(model: MamClip, pad_id: int) -> keras.Model:
    """token ids (B, L) as float32 -> L2-normalised text embedding; the padding mask is `ids != pad_id`."""
    length = model.text_encoder.input["token_ids"].shape[1]
    ids = keras.Input((length,), name="token_ids")
    token_ids, padding_mask = TokenInputs(pad_id, name="token_inputs")(ids)
    out = model.text_encoder({"token_ids": token_ids, "padding_mask": padding_mask})
    embedding = keras.layers.UnitNormalization(name="text_embedding")(out["embedding"])
    return keras.Model(ids, embedding, name="text_embedder")


# === Retrieval ===


def retrieval_recall(image_embeddings: np.ndarray, text_embeddings: np.ndarray, captions: Sequence[str],
                     ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K of image->text and text->image retrieval among the given pairs, with the chance level.

    A retrieved item is right when its caption equals the query's (atlas figures give one caption to several
    images, so those images are all right answers for it).

    Returns:
        {"image_to_text@K", "text_to_image@K", "chance@K" for each K, "pairs"}.
    """
    sims = np.asarray(image_embeddings, np.float64) @ np.asarray(text_embeddings, np.float64).T
    captions = np.asarray(list(captions), dtype=object)
    same = captions[:, None] == captions[None, :]
    n = len(captions)
    out: dict[str, float] = {"pairs": float(n)}
    for k in ks:
        k_eff = min(k, n)
        top_texts = np.argsort(-sims, axis=1)[:, :k_eff]
        top_images = np.argsort(-sims.T, axis=1)[:, :k_eff]
        out[f"image_to_text@{k}"] = float(np.mean([same[i, top_texts[i]].any() for i in range(n)]))
        out[f"text_to_image@{k}"] = float(np.mean([same[i, top_images[i]].any() for i in range(n)]))
        right = same.sum(axis=1)
        # The chance that k of n items drawn at random hold at least one of the m right ones.
        out[f"chance@{k}"] = float(np.mean([1 - math.comb(n - m, k_eff) / math.comb(n, k_eff) for m in right]))
    return out
