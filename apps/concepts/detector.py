"""A trained concept detector: the Keras model, its concept list and thresholds (weights/concepts.json).

`ConceptModel` turns images into probabilities and probabilities into CUIs; `load_detector` opens a train run
(or a .keras file with concepts.json beside it), `save_concepts` writes the concept file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keras_medimg.apps.concepts.config import ConceptsConfig
from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.errors import InvalidInputError
from keras_medimg.metrics import imageclef as scoring
from keras_medimg.metrics.thresholds import select
from keras_medimg.runs import open_trained, write_json

APP = "concepts"
CONCEPTS_FILE = "concepts.json"


def normalization(backbone: str):
    """The input `Normalization` of a registry backbone (applied by the data pipeline, saved with the detector)."""
    from keras_medimg.training.image_classifier import backbone_normalization

    return backbone_normalization(backbone)


@dataclass
class ConceptModel:
    """A trained concept detector: the Keras model plus what turns its outputs into CUIs.

    Args:
        model: the Keras model, (N, S, S, 3) images in -> (N, C) sigmoid probabilities out.
        concepts: the C CUIs in output order (the MultiLabelBinarizer's classes).
        thresholds: (C,) thresholds.
        names: CUI -> canonical name.
        image_size: S.
        normalization: the backbone's input normalisation (dict of `Normalization`).
        top1: always predict the most probable concept.
        max_concepts: the most concepts per image.
        backbone: the registry backbone name.
    """

    model: Any
    concepts: list[str]
    thresholds: np.ndarray
    names: dict[str, str]
    image_size: int
    normalization: dict[str, Any]
    top1: bool = True
    max_concepts: int = 100
    backbone: str = ""

    def record(self) -> dict[str, Any]:
        """The concept file's content (and export metadata)."""
        return {
            "concepts": self.concepts,
            "names": {cui: self.names.get(cui, "") for cui in self.concepts},
            "thresholds": [float(t) for t in self.thresholds],
            "top1": self.top1,
            "max_concepts": self.max_concepts,
            "image_size": self.image_size,
            "channels": 3,
            "normalization": self.normalization,
            "backbone": self.backbone,
        }

    def normalization_object(self):
        """The input `Normalization` the model was trained with."""
        from keras_medimg.preprocessing.normalize import Normalization

        return Normalization.from_dict(self.normalization)

    def probabilities(self, samples: Sequence[Sample], *, batch_size: int, skipped: Skipped, strict: bool) -> tuple[np.ndarray, list[Sample]]:
        """(N, C) probabilities of the readable samples, in their order, and those samples (one streamed pass)."""
        from keras_medimg.datasets.pipeline import predict_samples

        return predict_samples(
            self.model, samples, image_size=self.image_size, channels=3, batch_size=batch_size,
            normalization=self.normalization_object(), skipped=skipped, strict=strict,
        )  # fmt: skip

    def predict_cuis(self, probabilities: np.ndarray) -> list[list[tuple[str, float]]]:
        """(CUI, probability) of each image, most probable first."""
        chosen = select(probabilities, self.thresholds, top1=self.top1, max_concepts=self.max_concepts)
        return [[(self.concepts[c], float(row[c])) for c in indices] for row, indices in zip(probabilities, chosen)]


def save_concepts(path: Path, detector: ConceptModel) -> Path:
    """Write the concept file (concept list, thresholds, names, input settings) beside the weights."""
    return write_json(path, detector.record())


def load_detector(weights: str | Path | None) -> ConceptModel:
    """Load a trained detector from a train run folder, or a .keras file with concepts.json beside it.

    Raises:
        InvalidInputError: no model, or no concepts.json beside it, or one that does not match the model.
    """
    import json

    from keras_medimg.models.classifier import load_model

    model_path = open_trained(weights, APP, ConceptsConfig, lone_model=True).model_path
    concepts_file = model_path.parent / CONCEPTS_FILE
    if not concepts_file.is_file():
        raise InvalidInputError(
            concepts_file, f"The concept list of {model_path.name} is missing. Keep concepts.json (written by `medimg concepts train`) beside the model."
        )
    record = json.loads(concepts_file.read_text(encoding="utf-8"))
    model = load_model(model_path)
    outputs = int(model.outputs[0].shape[-1])
    if outputs != len(record["concepts"]):
        raise InvalidInputError(concepts_file, f"It lists {len(record['concepts'])} concepts but {model_path.name} has {outputs} outputs. Use the files of one run.")
    return ConceptModel(
        model=model,
        concepts=list(record["concepts"]),
        thresholds=np.asarray(record["thresholds"], np.float64),
        names=dict(record.get("names", {})),
        image_size=int(record["image_size"]),
        normalization=dict(record["normalization"]),
        top1=bool(record.get("top1", True)),
        max_concepts=int(record.get("max_concepts", scoring.MAX_CONCEPTS)),
        backbone=str(record.get("backbone", "")),
    )
