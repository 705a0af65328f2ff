"""A Hugging Face BERT folder as published (PubMedBERT: pytorch_model.bin from a masked-language model) loads as
the MAM-CLIP text encoder with the right weights, checked against BERT computed in NumPy."""

import json
import os
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_medimg.errors import InvalidInputError
from keras_medimg.models import hf_bert, vlm

WORDS = ["mass", "spiculated", "margins", "calcifications", "benign", "##s", "dense", "breast"]
HIDDEN, LAYERS, HEADS, INTER, POSITIONS = 16, 2, 2, 32, 24
CONFIG = {"architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": len(vlm.SPECIAL_TOKENS) + len(WORDS),
          "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
          "intermediate_size": INTER, "max_position_embeddings": POSITIONS, "type_vocab_size": 2,
          "hidden_act": "gelu", "layer_norm_eps": 1e-12}


def hf_state(seed=0):
    """BertModel's state dict (Hugging Face names, weight/bias LayerNorms) with random values."""
    rng = np.random.default_rng(seed)
    w = lambda *shape: rng.normal(0, 0.3, shape).astype(np.float32)  # noqa: E731
    state = {"embeddings.word_embeddings.weight": w(CONFIG["vocab_size"], HIDDEN),
             "embeddings.position_embeddings.weight": w(POSITIONS, HIDDEN),
             "embeddings.token_type_embeddings.weight": w(2, HIDDEN),
             "embeddings.LayerNorm.weight": 1 + w(HIDDEN), "embeddings.LayerNorm.bias": w(HIDDEN)}
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            state[f"{p}attention.self.{name}.weight"], state[f"{p}attention.self.{name}.bias"] = w(HIDDEN, HIDDEN), w(HIDDEN)
        state[f"{p}attention.output.dense.weight"], state[f"{p}attention.output.dense.bias"] = w(HIDDEN, HIDDEN), w(HIDDEN)
        state[f"{p}attention.output.LayerNorm.weight"] = 1 + w(HIDDEN)
        state[f"{p}attention.output.LayerNorm.bias"] = w(HIDDEN)
        state[f"{p}intermediate.dense.weight"], state[f"{p}intermediate.dense.bias"] = w(INTER, HIDDEN), w(INTER)
        state[f"{p}output.dense.weight"], state[f"{p}output.dense.bias"] = w(HIDDEN, INTER), w(HIDDEN)
        state[f"{p}output.LayerNorm.weight"], state[f"{p}output.LayerNorm.bias"] = 1 + w(HIDDEN), w(HIDDEN)
    state["pooler.dense.weight"], state["pooler.dense.bias"] = w(HIDDEN, HIDDEN), w(HIDDEN)
    return state


def numpy_bert(state, token_ids, mask):
    """BERT's sequence output (post-norm), in NumPy. The GELU is the tanh approximation of Google's BERT, which
    keras-hub's BertBackbone uses; Hugging Face's "gelu" (erf) differs from it by less than 1e-3 in these states."""

    def norm(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-12) * state[f"{name}.weight"] + state[f"{name}.bias"]

    def dense(x, name):
        return x @ state[f"{name}.weight"].T + state[f"{name}.bias"]

    length = token_ids.shape[1]
    x = (state["embeddings.word_embeddings.weight"][token_ids] + state["embeddings.position_embeddings.weight"][:length]
         + state["embeddings.token_type_embeddings.weight"][0])
    x = norm(x, "embeddings.LayerNorm")
    bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e9)
    d = HIDDEN // HEADS
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        q, k, v = (dense(x, f"{p}attention.self.{n}").reshape(*x.shape[:2], HEADS, d).transpose(0, 2, 1, 3)
                   for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + bias
        att = np.exp(scores - scores.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        ctx = (att @ v).transpose(0, 2, 1, 3).reshape(x.shape)
        x = norm(x + dense(ctx, f"{p}attention.output.dense"), f"{p}attention.output.LayerNorm")
        h = dense(x, f"{p}intermediate.dense")
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
        x = norm(x + dense(h, f"{p}output.dense"), f"{p}output.LayerNorm")
    return x


def write_folder(path, weights):
    """A Hugging Face folder: config.json, vocab.txt, tokenizer_config.json and `weights` {file name: writer}."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(CONFIG))
    (path / "vocab.txt").write_text("\n".join([*vlm.SPECIAL_TOKENS, *WORDS]) + "\n")
    (path / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    for name, write in weights.items():
        write(path / name)
    return path


def as_masked_lm_checkpoint(state):
    """What `BertForMaskedLM.save_pretrained` wrote in PubMedBERT's time: `bert.` prefix, TF-era gamma/beta
    LayerNorm names, no pooler, the MLM head and the int64 position_ids buffer."""
    import torch

    out = {}
    for key, value in state.items():
        if key.startswith("pooler."):
            continue
        key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        out["bert." + key] = torch.from_numpy(value)
    out["bert.embeddings.position_ids"] = torch.arange(POSITIONS)[None]
    out["cls.predictions.bias"] = torch.zeros(CONFIG["vocab_size"])
    out["cls.predictions.transform.dense.weight"] = torch.zeros(HIDDEN, HIDDEN)
    return out


def encode(folder, texts):
    tok = vlm.WordPieceTokenizer.from_folder(folder, sequence_length=12)
    enc = tok.encode(texts)
    return tok, enc["token_ids"], enc["padding_mask"]


def sequence_output(folder, token_ids, mask):
    tok = vlm.WordPieceTokenizer.from_folder(folder, sequence_length=12)
    bert = vlm.load_bert(vlm.TextEncoderSpec(preset=str(folder)), vocabulary_size=tok.vocabulary_size,
                         sequence_length=12)
    out = bert({"token_ids": token_ids, "padding_mask": mask, "segment_ids": np.zeros_like(token_ids)})
    return keras.ops.convert_to_numpy(out["sequence_output"])


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDIMG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


TEXTS = ["Spiculated mass margins.", "Benign calcifications, dense breasts."]


def test_published_formats_load_the_same_bert_as_numpy_computes(tmp_path, home):
    import torch
    from safetensors.numpy import save_file

    state = hf_state()
    ms_lm = as_masked_lm_checkpoint(state)
    folders = {
        "safetensors (BertModel)": write_folder(tmp_path / "st", {"model.safetensors": lambda p: save_file(state, str(p))}),
        "pytorch_model.bin (BertForMaskedLM, as PubMedBERT)":
            write_folder(tmp_path / "bin", {"pytorch_model.bin": lambda p: torch.save(ms_lm, p)}),
    }
    # Sharded: two pickled shards and their index.
    keys = sorted(ms_lm)
    shards = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
    sharded = {name: (lambda p, part=part: torch.save({k: ms_lm[k] for k in part}, p)) for name, part in shards.items()}
    sharded["pytorch_model.bin.index.json"] = lambda p: p.write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}))
    folders["sharded pytorch_model.bin"] = write_folder(tmp_path / "shards", sharded)

    _, token_ids, mask = encode(folders["safetensors (BertModel)"], TEXTS)
    assert mask[1].sum() > mask[0].sum() >= 5  # padded positions in the batch
    expected = numpy_bert(state, token_ids, mask)
    for name, folder in folders.items():
        before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
        got = sequence_output(folder, token_ids, mask)
        valid = mask.astype(bool)
        np.testing.assert_allclose(got[valid], expected[valid], atol=2e-4, err_msg=name)
        assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == before, "the user's folder changed"
    # The safetensors folder with its pooler is read where it is; the two pickled ones were converted once each.
    assert hf_bert.bert_preset_folder(folders["safetensors (BertModel)"]) == folders["safetensors (BertModel)"]
    copies = sorted(p for p in (home / "hf_bert").iterdir())
    assert len(copies) == 2 and all((c / "model.safetensors").is_file() for c in copies)


def test_the_converted_copy_is_reused_and_redone_when_the_checkpoint_changes(tmp_path, home):
    import torch

    folder = write_folder(tmp_path / "bin", {"pytorch_model.bin": lambda p: torch.save(as_masked_lm_checkpoint(hf_state()), p)})
    first = hf_bert.bert_preset_folder(folder)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert hf_bert.bert_preset_folder(folder) == first and (first / "model.safetensors").stat().st_mtime_ns == stamp
    torch.save(as_masked_lm_checkpoint(hf_state(seed=1)), folder / "pytorch_model.bin")
    os.utime(folder / "pytorch_model.bin", ns=(stamp + 10**9, stamp + 10**9))
    second = hf_bert.bert_preset_folder(folder)
    assert second != first and not first.exists()  # the outdated copy (a whole model) is deleted
    _, token_ids, mask = encode(folder, TEXTS)
    got = sequence_output(folder, token_ids, mask)
    np.testing.assert_allclose(got[mask.astype(bool)], numpy_bert(hf_state(seed=1), token_ids, mask)[mask.astype(bool)],
                               atol=2e-4)
    assert not [p for p in (home / "hf_bert").iterdir() if p.name.startswith(".")]  # no half-written copy left


def test_folders_keras_hub_cannot_read_say_what_to_download(tmp_path, home):
    from safetensors.numpy import save_file

    tf_only = write_folder(tmp_path / "tf", {"tf_model.h5": lambda p: p.write_bytes(b"HDF")})
    with pytest.raises(InvalidInputError, match=r"tf_model.h5.*Download the PyTorch weights"):
        hf_bert.bert_preset_folder(tf_only)
    damaged = write_folder(tmp_path / "bad", {"pytorch_model.bin": lambda p: p.write_bytes(b"not a checkpoint")})
    with pytest.raises(InvalidInputError, match="pytorch_model.bin"):
        hf_bert.bert_preset_folder(damaged)
    index = write_folder(tmp_path / "idx", {"pytorch_model.bin.index.json": lambda p: p.write_text(
        '{"weight_map": {"embeddings.word_embeddings.weight": "pytorch_model-00001-of-00002.bin"}}')})
    with pytest.raises(InvalidInputError, match="pytorch_model-00001-of-00002.bin.*every shard"):
        hf_bert.bert_preset_folder(index)
    # A vocabulary longer than the embedding table would look up rows that do not exist; a shorter one is fine.
    st = write_folder(tmp_path / "st", {"model.safetensors": lambda p: save_file(hf_state(), str(p))})
    for extra, fits in ((["[unused0]"], False), ([], True)):
        (st / "vocab.txt").write_text("\n".join([*vlm.SPECIAL_TOKENS, *WORDS[: len(WORDS) - 1 + len(extra)], *extra]))
        tok = vlm.WordPieceTokenizer.from_folder(st, sequence_length=12)
        load = lambda: vlm.load_bert(vlm.TextEncoderSpec(preset=str(st)), vocabulary_size=tok.vocabulary_size,  # noqa: E731
                                     sequence_length=12)
        if fits:
            assert load().vocabulary_size == CONFIG["vocab_size"] == tok.vocabulary_size + 1
        else:
            with pytest.raises(InvalidInputError, match="vocabulary of this model"):
                load()
    roberta = write_folder(tmp_path / "roberta", {})
    (roberta / "config.json").write_text(json.dumps({**CONFIG, "model_type": "roberta"}))
    with pytest.raises(InvalidInputError, match="'roberta'.*BERT"):
        hf_bert.bert_preset_folder(roberta)
    assert not (home / "hf_bert").exists() or not any((home / "hf_bert").iterdir())


@pytest.mark.slow
def test_pretraining_runs_on_a_published_bert_folder(tmp_path, home):
    """`medimg mamclip pretrain --text-encoder FOLDER` with a PubMedBERT-like pytorch_model.bin: the run's text
    encoder starts from the checkpoint's weights, and its tokenizer is the folder's vocabulary."""
    from dataclasses import replace

    import torch

    from keras_medimg.apps.mamclip import pipeline
    from keras_medimg.apps.mamclip.config import MamclipConfig
    from keras_medimg.runs import RunPlace

    sys.path.insert(0, str(Path(__file__).parents[1] / "apps" / "mamclip"))
    from _mamclip_data import tiny_config, write_pairs

    state = hf_state()
    folder = write_folder(tmp_path / "pubmedbert", {"pytorch_model.bin": lambda p: torch.save(as_masked_lm_checkpoint(state), p)})
    cfg = tiny_config(MamclipConfig(), write_pairs(tmp_path, n=16), epochs=1)
    cfg = replace(cfg, model=replace(cfg.model, text_encoder=str(folder), text_pooling="cls", text_length=12))
    result = pipeline.pretrain(cfg, run=RunPlace(tmp_path / "runs", "bert"))
    weights = result.run.dir / "weights"
    assert (weights / "vocab.txt").read_text().split() == [*vlm.SPECIAL_TOKENS, *WORDS]

    model = keras.saving.load_model(weights / "last.keras")
    embeddings = [w for w in model.text_encoder.weights if "token_embedding" in w.path][0]
    start = state["embeddings.word_embeddings.weight"]
    moved = np.abs(keras.ops.convert_to_numpy(embeddings) - start).max()
    assert embeddings.shape == start.shape and 0 < moved < 0.05  # one epoch at lr 5e-4 from the checkpoint


def test_safetensors_without_a_pooler_sharded_safetensors_and_a_config_without_model_type(tmp_path, home):
    from safetensors.numpy import save_file

    state = hf_state()
    no_pooler = {k: v for k, v in state.items() if not k.startswith("pooler.")}
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    writers = {name: (lambda p, part=part: save_file({k: state[k] for k in part}, str(p))) for name, part in shards.items()}
    writers["model.safetensors.index.json"] = lambda p: p.write_text(json.dumps(
        {"weight_map": {k: name for name, part in shards.items() for k in part}}))
    folders = {"no pooler": write_folder(tmp_path / "np", {"model.safetensors": lambda p: save_file(no_pooler, str(p))}),
               "sharded": write_folder(tmp_path / "sh", writers),
               "no model_type": write_folder(tmp_path / "old", {"model.safetensors": lambda p: save_file(state, str(p))})}
    (folders["no model_type"] / "config.json").write_text(json.dumps({k: v for k, v in CONFIG.items() if k != "model_type"}))
    # keras-hub reads a sharded safetensors BERT with its pooler where it is; the others need a converted copy.
    assert hf_bert.bert_preset_folder(folders["sharded"]) == folders["sharded"]
    assert hf_bert.bert_preset_folder(folders["no pooler"]).parent == home / "hf_bert"
    assert hf_bert.bert_preset_folder(folders["no model_type"]).parent == home / "hf_bert"
    _, token_ids, mask = encode(folders["sharded"], TEXTS)
    expected = numpy_bert(state, token_ids, mask)[mask.astype(bool)]
    for name, folder in folders.items():
        np.testing.assert_allclose(sequence_output(folder, token_ids, mask)[mask.astype(bool)], expected, atol=2e-4,
                                   err_msg=name)


def test_an_unwritable_home_is_named_before_the_weights_are_read(tmp_path, monkeypatch):
    import torch

    blocker = tmp_path / "home_is_a_file"
    blocker.write_text("")
    monkeypatch.setenv("MEDIMG_HOME", str(blocker))
    folder = write_folder(tmp_path / "bin", {"pytorch_model.bin": lambda p: torch.save(as_masked_lm_checkpoint(hf_state()), p)})
    with pytest.raises(InvalidInputError, match="MEDIMG_HOME to a writable folder"):
        hf_bert.bert_preset_folder(folder)
