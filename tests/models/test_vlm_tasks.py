"""models.vlm_tasks: class prompt embeddings, zero-shot scores, k-fold linear probe, recall table."""

import numpy as np

from keras_medimg.datasets.records import Sample
from keras_medimg.models import vlm_tasks


class _Tokenizer:
    def encode(self, texts):
        ids = np.array([[len(t), t.count("a")] for t in texts], np.float32)
        return {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}


class _Model:
    def encode_texts(self, token_ids, padding_mask):
        return np.asarray(token_ids, np.float32)


def test_class_embeddings_are_normalised_prompt_means_in_class_order():
    prompts = {"b": ["aaaa", "aa"], "a": ["xyzxyz"]}
    emb = vlm_tasks.class_text_embeddings(_Model(), _Tokenizer(), prompts, ["a", "b"])
    np.testing.assert_allclose(emb[0], [1.0, 0.0], atol=1e-6)  # "xyzxyz": (6, 0)
    np.testing.assert_allclose(emb[1], np.array([3.0, 3.0]) / np.hypot(3, 3), atol=1e-6)  # mean of (4,4), (2,2)
    scores = vlm_tasks.zero_shot_scores(np.array([[0.0, 1.0], [1.0, 0.0]]), emb)
    assert scores.argmax(axis=1).tolist() == [1, 0]


def test_linear_probe_separates_separable_embeddings_and_uses_sample_rows():
    rng = np.random.default_rng(0)
    labels = ["x", "y", "z"] * 12
    samples = [Sample(id=f"s{i}", path=f"{i}.png", label=c, group=f"p{i}") for i, c in enumerate(labels)]
    emb = np.eye(3)[[["x", "y", "z"].index(c) for c in labels]] * 3 + rng.normal(0, 0.1, (36, 3))
    good = vlm_tasks.linear_probe_kfold(emb, samples, ["x", "y", "z"], folds=3, seed=0)
    assert good["macro_f1_mean"] == 1.0 and len(good["fold_macro_f1"]) == 3
    assert set(good["per_class_f1"]) == {"x", "y", "z"}
    shuffled = vlm_tasks.linear_probe_kfold(emb[rng.permutation(36)], samples, ["x", "y", "z"], folds=3, seed=0)
    assert shuffled["macro_f1_mean"] < 0.7  # rows not matching their samples: no signal left


def test_recall_table_rows():
    recall = {"pairs": 10, "image_to_text@1": 0.5, "text_to_image@1": 0.4, "chance@1": 0.1}
    table = vlm_tasks.recall_table(recall, [1])
    assert "10 validation pairs" in table and "| 1 | 0.500 | 0.400 | 0.100 |" in table


def test_pretraining_batches_come_in_the_seeded_order(tmp_path):
    # Regression: training batches were decoded in parallel without a fixed order, so the same pretraining command
    # gave another model on every run (epoch-1 contrastive loss 2.40 and then 2.57): a batch's pairs are each
    # other's negatives. Both runs below must give the same batches, pixels and masks included.
    from types import SimpleNamespace

    from keras_medimg.datasets.records import Skipped
    from keras_medimg.io.images import write_image
    from keras_medimg.preprocessing.augment import Augment

    rng = np.random.default_rng(0)
    captions = [f"mass number {i} at the {'left' if i % 2 else 'right'} side" for i in range(12)]
    records = [SimpleNamespace(image=str(write_image(tmp_path / f"{i}.png", rng.random((20, 20)).astype(np.float32),
                                                     bits=16)), caption=c) for i, c in enumerate(captions)]
    tokenizer = vlm_tasks.caption_tokenizer(captions, preset=None, sequence_length=12)
    encoded = tokenizer.encode(captions)
    settings = vlm_tasks.PairsSettings(image_size=16, normalization=vlm_tasks.image_normalization("convnextv2_atto"),
                                       batch_size=4, seed=3, augment=Augment(hflip=True, noise=0.05))

    def epoch():
        data = vlm_tasks.pairs_dataset(records, encoded, tokenizer, settings, training=True, skipped=Skipped())
        assert data.options().deterministic
        return [{k: np.asarray(v) for k, v in batch.items()} for batch in data]

    first, second = epoch(), epoch()
    assert len(first) == 3
    for a, b in zip(first, second):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
