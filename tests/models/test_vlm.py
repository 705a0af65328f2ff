"""MAM-CLIP model: tokenizer, whole-word masking, loss math against NumPy, a training step, .keras round trip."""

import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.models import vlm

CAPTIONS = [
    "Spiculated mass in the upper outer quadrant, BI-RADS 5.",
    "Scattered benign calcifications; BI-RADS 2.",
    "Round circumscribed mass, probably benign.",
    "Heterogeneously dense breast tissue, which may obscure small masses.",
]
TINY = vlm.TextEncoderSpec(num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32)


def _softmax_ce(logits, targets):
    logits = logits - logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(targets)), targets].mean()


def test_info_nce_matches_numpy_reference():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(6, 64))
    txt = rng.normal(size=(6, 64))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    scale = math.log(1 / 0.07)
    logits = np.exp(scale) * img @ txt.T
    expected = (_softmax_ce(logits, np.arange(6)) + _softmax_ce(logits.T, np.arange(6))) / 2
    got = keras.ops.convert_to_numpy(vlm.info_nce(img.astype("float32"), txt.astype("float32"), np.float32(scale)))
    assert got == pytest.approx(expected, rel=1e-4)
    # Matching pairs that are the most similar give a low loss; swapped pairs a high one.
    assert float(vlm.info_nce(img.astype("float32"), img.astype("float32"), np.float32(scale))) < 0.05
    assert float(vlm.info_nce(img.astype("float32"), img[::-1].copy().astype("float32"), np.float32(scale))) > 5


def test_masked_lm_loss_counts_only_masked_positions():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 7)).astype("float32")
    labels = rng.integers(0, 7, size=(2, 5)).astype("int32")
    weights = np.zeros((2, 5), "float32")
    weights[0, 1] = weights[1, 3] = 1
    expected = _softmax_ce(np.stack([logits[0, 1], logits[1, 3]]), np.array([labels[0, 1], labels[1, 3]]))
    got = float(keras.ops.convert_to_numpy(vlm.masked_lm_loss(logits, labels, weights)))
    assert got == pytest.approx(expected, rel=1e-4)
    labels_elsewhere = labels.copy()
    labels_elsewhere[0, 0] = (labels[0, 0] + 1) % 7  # an unmasked label must not change the loss
    assert float(vlm.masked_lm_loss(logits, labels_elsewhere, weights)) == pytest.approx(got, rel=1e-6)
    assert float(vlm.masked_lm_loss(logits, labels, np.zeros_like(weights))) == 0.0


def test_tokenizer_keeps_words_and_truncates():
    tok = vlm.WordPieceTokenizer.build(CAPTIONS, sequence_length=12)
    enc = tok.encode(["Spiculated mass, BI-RADS 5", "unseenword mass"])
    ids, words = enc["token_ids"], enc["word_ids"]
    assert ids[0, 0] == tok.cls_id and tok.sep_id in ids[0]
    assert tok.decode(ids[0]) == "spiculated mass , bi - rads 5"
    # An unseen word splits into character pieces that all belong to word 0.
    pieces = ids[1][words[1] == 0]
    assert len(pieces) == len("unseenword") and tok.vocabulary[pieces[1]].startswith("##")
    assert enc["padding_mask"].sum(axis=1).tolist() == [(ids[0] != tok.pad_id).sum(), (ids[1] != tok.pad_id).sum()]
    long = tok.encode([" ".join(["mass"] * 30)])
    assert long["truncated"].tolist() == [True] and long["token_ids"][0, -1] == tok.sep_id
    with pytest.raises(ConfigError, match=r"\[MASK\]"):
        vlm.WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"])


def test_tokenizer_reads_a_hugging_face_folder(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join([*vlm.SPECIAL_TOKENS, "mass", "##es"]) + "\n")
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    tok = vlm.WordPieceTokenizer.from_folder(tmp_path, sequence_length=8)
    assert tok.encode(["Masses"])["token_ids"][0, 1:3].tolist() == [5, 6]
    with pytest.raises(InvalidInputError, match="vocab.txt"):
        vlm.WordPieceTokenizer.from_folder(tmp_path / "nothing")


@pytest.mark.parametrize("files, lowercase", [
    ({}, True),  # Hugging Face's default
    ({"tokenizer_config.json": '{"do_lower_case": false}'}, False),
    ({"tokenizer.json": '{"normalizer": {"type": "BertNormalizer", "lowercase": false}}'}, False),  # HF fast only
    ({"tokenizer.json": '{"class_name": "BertTokenizer", "config": {"lowercase": false}}'}, False),  # keras-hub
    ({"tokenizer_config.json": '{"do_lower_case": true}', "tokenizer.json": '{"normalizer": {"lowercase": false}}'},
     True),  # the slow tokenizer's config wins, as in transformers
])
def test_a_cased_bert_folder_keeps_capitals(tmp_path, files, lowercase):
    (tmp_path / "vocab.txt").write_text("\n".join([*vlm.SPECIAL_TOKENS, "Mass", "mass"]) + "\n")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    tok = vlm.WordPieceTokenizer.from_folder(tmp_path, sequence_length=4)
    assert tok.lowercase is lowercase
    assert tok.encode(["Mass"])["token_ids"][0, 1] == (6 if lowercase else 5)


def test_whole_word_masking_proportions_and_labels():
    import tensorflow as tf

    tok = vlm.WordPieceTokenizer.build(CAPTIONS, sequence_length=40)
    enc = tok.encode(CAPTIONS * 150)
    token_ids, word_ids = enc["token_ids"], enc["word_ids"]
    out = {k: v.numpy() for k, v in vlm.mask_words(token_ids, word_ids, tf.constant([3, 4]),
                                                    vocabulary_size=tok.vocabulary_size, mask_id=tok.mask_id).items()}
    chosen = out["mlm_weights"] > 0
    assert not chosen[word_ids < 0].any()  # never [CLS], [SEP], [PAD]
    # Whole words: every piece of a word is chosen together.
    for row in range(50):
        for w in np.unique(word_ids[row][word_ids[row] >= 0]):
            assert len(set(chosen[row][word_ids[row] == w])) == 1
    words_total = sum(len(np.unique(r[r >= 0])) for r in word_ids)
    words_chosen = sum(len(np.unique(w[c])) for w, c in zip(word_ids, chosen))
    assert words_chosen / words_total == pytest.approx(0.15, abs=0.02)
    masked, original = out["masked_token_ids"][chosen], token_ids[chosen]
    assert (masked == tok.mask_id).mean() == pytest.approx(0.8, abs=0.04)
    assert (masked == original).mean() == pytest.approx(0.1 + 0.1 / tok.vocabulary_size, abs=0.04)
    assert (out["masked_token_ids"][~chosen] == token_ids[~chosen]).all()
    assert (out["mlm_labels"][chosen] == original).all() and (out["mlm_labels"][~chosen] == 0).all()
    # Seeded: the same seed, the same masks; another seed, others.
    again = vlm.mask_words(token_ids, word_ids, tf.constant([3, 4]), vocabulary_size=tok.vocabulary_size,
                           mask_id=tok.mask_id)
    other = vlm.mask_words(token_ids, word_ids, tf.constant([5, 4]), vocabulary_size=tok.vocabulary_size,
                           mask_id=tok.mask_id)
    assert (again["mlm_weights"].numpy() == out["mlm_weights"]).all()
    assert (other["mlm_weights"].numpy() != out["mlm_weights"]).any()


def _batch(tok, n=4, size=32, seed=0):
    import tensorflow as tf

    enc = tok.encode(CAPTIONS[:n])
    masks = vlm.mask_words(enc["token_ids"], enc["word_ids"], tf.constant([seed, 1]),
                           vocabulary_size=tok.vocabulary_size, mask_id=tok.mask_id, rate=0.3)
    images = np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype("float32")
    return {"images": images, "token_ids": enc["token_ids"], "padding_mask": enc["padding_mask"],
            **{k: v.numpy() for k, v in masks.items()}}


@pytest.mark.slow
def test_training_step_logs_loss_parts_and_moves_the_weights():
    tok = vlm.WordPieceTokenizer.build(CAPTIONS, sequence_length=24)
    model = vlm.build_mamclip(tok, image_size=32, embed_dim=16, text=TINY)
    x = _batch(tok)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, gradient_accumulation_steps=2), jit_compile=False)
    before = keras.ops.convert_to_numpy(model.image_encoder.get_layer("image_projection").kernel).copy()
    history = model.fit(x, batch_size=2, epochs=1, verbose=0).history
    assert set(history) >= {"loss", "contrastive", "mlm", "logit_scale"}
    assert history["loss"][0] == pytest.approx(history["contrastive"][0] + 0.5 * history["mlm"][0], rel=1e-3)
    assert history["logit_scale"][0] == pytest.approx(math.log(1 / 0.07), abs=0.01)
    after = keras.ops.convert_to_numpy(model.image_encoder.get_layer("image_projection").kernel)
    assert np.abs(after - before).max() > 0  # two micro-batches accumulated into one update
    emb = model.encode_images(x["images"])
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


_SAVE = """
import os, sys, numpy as np
os.environ["KERAS_BACKEND"] = sys.argv[1]
import keras
from keras_medimg.models import vlm
tok = vlm.WordPieceTokenizer.build({captions!r}, sequence_length=24)
x = tok.encode({captions!r})
images = np.random.default_rng(0).uniform(size=(4, 32, 32, 3)).astype("float32")
if sys.argv[2] == "save":
    model = vlm.build_mamclip(tok, image_size=32, embed_dim=16, text=vlm.TextEncoderSpec(num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32, pooling="mean"))
    model.save(sys.argv[3])
else:
    model = keras.saving.load_model(sys.argv[3])
np.save(sys.argv[4], np.concatenate([model.encode_images(images),
                                     model.encode_texts(x["token_ids"], x["padding_mask"])]))
"""


@pytest.mark.slow
def test_keras_file_saved_under_torch_reloads_under_tensorflow(tmp_path):
    script = tmp_path / "roundtrip.py"
    script.write_text(textwrap.dedent(_SAVE.format(captions=CAPTIONS)))
    path = tmp_path / "model.keras"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for backend, mode, out in (("torch", "save", "a.npy"), ("tensorflow", "load", "b.npy")):
        subprocess.run([sys.executable, str(script), backend, mode, str(path), str(tmp_path / out)], check=True,
                       env=env, timeout=300)
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert np.abs(a - b).max() < 1e-4


def test_retrieval_recall_counts_shared_captions_as_right():
    emb = np.eye(4)
    captions = ["a", "b", "c", "c"]
    perfect = vlm.retrieval_recall(emb, emb, captions, ks=(1,))
    assert perfect["image_to_text@1"] == 1.0 and perfect["text_to_image@1"] == 1.0
    shuffled = vlm.retrieval_recall(emb, emb[[1, 0, 3, 2]], captions, ks=(1,))
    # Images 2 and 3 find each other's identical caption: right; images 0 and 1 find the wrong one.
    assert shuffled["image_to_text@1"] == 0.5
    assert shuffled["chance@1"] == pytest.approx((0.25 + 0.25 + 0.5 + 0.5) / 4)
