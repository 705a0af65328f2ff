"""The config tree of `medimg concepts` (defaults here; `configs/concepts.yaml` is the same tree, commented).

The defaults are the study's method (DenseNet-121, global pooling -> Dense(512, relu) -> sigmoid head, binary
cross-entropy, a frozen-backbone head phase at 1e-4 then fine-tuning from `conv5_block1_0_bn`, thresholds tuned
on the validation split) sized so that `medimg concepts train` runs end to end on the demo data on a 2-core CPU
in minutes: 64x64 input, batch 16, a few epochs. `STUDY` holds the study's own sizes; `train --study` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from keras_medimg.config import AppConfig, ExportConfig, ModelConfig, TrainConfig
from keras_medimg.preprocessing.augment import Augment

#: The study's input size, batch and schedule (ImageCLEFmedical 2024), as dotted config keys.
STUDY: dict[str, Any] = {
    "model.image_size": 224,
    "train.batch_size": 32,
    "train.epochs": 30,
    "train.head_epochs": 5,
    "train.early_stopping_patience": 5,
}


@dataclass
class DataConfig:
    """Where the ImageCLEF / ROCOv2 folder is, and the demo set made when there is none."""

    root: str | None = None  # folder with cui_mapping.csv, {split}_concepts.csv and {split}/ images; null = demo data
    train_split: str = "train"
    valid_split: str = "valid"  # tunes the thresholds and picks the best epoch
    cache: str | None = "memory"  # decoded images: memory | a folder | null
    demo_n_train: int = 600
    demo_n_valid: int = 200
    demo_n_test: int = 200
    demo_size: int = 96  # side of the demo images in pixels
    edition: int = 2024  # ImageCLEFmedical edition whose secondary allow-list scores (2024: 14 CUIs; 2025 adds OCT)


@dataclass
class LabelsConfig:
    """How the training CUIs become the model's outputs (a MultiLabelBinarizer)."""

    min_count: int = 1  # keep concepts seen on at least this many training images


@dataclass
class ThresholdConfig:
    """How probabilities become concepts."""

    candidates: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    per_concept: bool = False  # also tune one threshold per concept on the validation split
    per_concept_min_support: int = 5  # concepts on fewer validation images keep the global threshold
    top1: bool = True  # always predict at least the most probable concept (an empty prediction scores 0)
    max_concepts: int = 100  # the official limit per image


@dataclass
class PredictConfig:
    """`medimg concepts predict`."""

    weights: str | None = None  # a `concepts train` run folder, or a .keras file with concepts.json beside it
    images: str | None = None  # a folder of images, or a CSV with an ID column (e.g. test_concepts.csv)
    batch_size: int = 64


@dataclass
class EvaluateConfig:
    """`medimg concepts evaluate`."""

    submission: str | None = None  # the run file to score (submission.csv)
    truth: str | None = None  # {split}_concepts.csv, or a split folder of the dataset
    manual: str | None = None  # {split}_concepts_manual.csv; null = beside the truth file, when it exists
    mapping: str | None = None  # cui_mapping.csv for the names in the table; null = beside the truth file


@dataclass
class ConceptsConfig(AppConfig):
    """The whole `medimg concepts` config."""

    data: DataConfig = field(default_factory=DataConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    model: ModelConfig = field(
        default_factory=lambda: ModelConfig(
            backbone="densenet121", image_size=64, hidden_units=512, freeze="until:conv5_block1_0_bn"
        )
    )
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=6,
            batch_size=16,
            learning_rate=1e-3,
            loss="binary_crossentropy",
            head_epochs=5,
            head_learning_rate=1e-4,
            monitor="val_loss",
            early_stopping_patience=0,
            verbose=2,
        )
    )
    augment: Augment = field(
        default_factory=lambda: Augment(probability=0.5, rotation=10.0, zoom_min=0.9, zoom_max=1.1, brightness=0.1, contrast=0.1)
    )
    thresholds: ThresholdConfig = field(default_factory=ThresholdConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=lambda: ExportConfig(formats=["savedmodel", "onnx"]))
