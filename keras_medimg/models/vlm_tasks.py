"""What a trained dual encoder (`models.vlm.MamClip`) is used for, frozen: zero-shot classification from class
prompts, a linear probe on image embeddings, retrieval recall on image-caption pairs.

Pieces: `class_text_embeddings`, `zero_shot_scores`, `linear_probe_kfold`, `recall_table`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from keras_medimg.datasets.records import Sample


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
