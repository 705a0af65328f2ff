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
