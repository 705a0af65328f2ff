"""The config tree of `medimg concepts` (defaults here; `configs/concepts.yaml` is the same tree, commented).

The defaults are the study's method (DenseNet-121, global pooling -> Dense(512, relu) -> sigmoid head, binary
cross-entropy, a frozen-backbone head phase at 1e-4 then fine-tuning from `conv5_block1_0_bn`, thresholds tuned
on the validation split) sized so that `medimg concepts train` runs end to end on the demo data on a 2-core CPU
in minutes: 64x64 input, batch 16, a few epochs. `STUDIES` holds the paper's two models (Table 5) as dotted
config keys; `train --study model1|model2` applies one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from keras_medimg.config import AppConfig, ExportConfig, ModelConfig, TrainConfig
from keras_medimg.preprocessing.augment import Augment

#: The paper's runs (Table 5) as dotted config keys; `train --study NAME` applies one, options and --set win.
#: Both use ImageNet weights (offline: pass a local file with --weights), batch 32, no top-1 rescue (the paper
#: keeps exactly the concepts above the threshold) and report the fixed thresholds 0.3 and 0.5 beside the tuned one.
STUDIES: dict[str, dict[str, Any]] = {
    # Run 421: DenseNet-121 fine-tuned with its first 276 layers frozen, 255 px, lr 0.001 x0.9 every 100 steps
    # (staircase), one phase. The paper keeps MultiLabelBinarizer for Model2 only; our reading of Model1 is a
    # softmax over the concepts, each of an image's k concepts a target of 1/k (see README).
    "model1": {
        "model.backbone": "densenet121", "model.weights": "imagenet", "model.image_size": 255,
        "model.hidden_units": 512, "model.freeze": "first:276", "labels.head": "softmax",
        "train.loss": "crossentropy", "train.batch_size": 32, "train.learning_rate": 0.001, "train.schedule": "exponential",
        "train.decay_steps": 100, "train.decay_rate": 0.9, "train.head_epochs": 0, "train.epochs": 30,
        "train.early_stopping_patience": 5, "thresholds.top1": False, "thresholds.fixed": [0.3, 0.5],
    },
    # Runs 422 / 425: DenseNet-121 + GlobalAveragePooling + Dense(512, relu) + sigmoid over the MultiLabelBinarizer
    # matrix, 224 px (the paper's code), head on the frozen backbone at 1e-4, then fine-tuning from
    # conv5_block1_0_bn at 1e-5; thresholds 0.3 (run 422) and 0.5 (run 425).
    "model2": {
        "model.backbone": "densenet121", "model.weights": "imagenet", "model.image_size": 224,
        "model.hidden_units": 512, "model.freeze": "until:conv5_block1_0_bn", "labels.head": "sigmoid",
        "train.loss": "binary_crossentropy", "train.batch_size": 32, "train.head_learning_rate": 0.0001, "train.learning_rate": 0.00001,
        "train.schedule": "constant", "train.head_epochs": 5, "train.epochs": 30, "train.early_stopping_patience": 5,
        "thresholds.top1": False, "thresholds.fixed": [0.3, 0.5],
    },
}


@dataclass
class DataConfig:
    """Where the ImageCLEF / ROCOv2 folder is, and the demo set made when there is none."""

    root: str | None = None  # folder with cui_mapping.csv, {split}_concepts.csv and {split}/ images; null = demo data
    train_split: str = "train"
    valid_split: str = "valid"  # tunes the thresholds and picks the best epoch
    train_with_valid: bool = False  # train on train + valid (the paper's final models); thresholds from thresholds.from_run
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
    head: Literal["sigmoid", "softmax"] = "sigmoid"  # sigmoid: one yes/no per concept (Model2); softmax: 1/k per concept (Model1)


@dataclass
class ThresholdConfig:
    """How probabilities become concepts."""

    candidates: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    per_concept: bool = False  # also tune one threshold per concept on the validation split
    per_concept_min_support: int = 5  # concepts on fewer validation images keep the global threshold
    top1: bool = True  # always predict at least the most probable concept (an empty prediction scores 0)
    max_concepts: int = 100  # the official limit per image
    fixed: list[float] = field(default_factory=lambda: [0.3, 0.5])  # scored beside the tuned threshold (runs 422, 425)
    from_run: str | None = None  # take the thresholds of this train run instead of tuning (needed with train_with_valid)


@dataclass
class PredictConfig:
    """`medimg concepts predict`."""

    weights: str | None = None  # a `concepts train` run folder, or a .keras file with concepts.json beside it
    images: str | None = None  # a folder of images, or a CSV with an ID column (e.g. test_concepts.csv)
    batch_size: int = 64
    threshold: float | None = None  # one threshold for every concept instead of the saved ones
    gradcam: bool = False  # also write a Grad-CAM overlay per (image, predicted concept)


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
