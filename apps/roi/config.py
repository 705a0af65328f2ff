"""The config tree of `medimg roi` (defaults here; `configs/roi.yaml` is the same tree, commented).

Demo defaults are sized so that `medimg roi train` (13 small models) runs on a 2-core CPU in minutes; `--study`
sets the study's values (384 px, learning rate 1e-4, 100 epochs, the registry's full-size networks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from keras_medimg.config import ExportConfig, ModelConfig, NetworkConfig, TrainConfig
from keras_medimg.datasets.prepare import Settings
from keras_medimg.preprocessing.augment import Augment

FORMATS = ("vindr", "cddcesm", "csv")
MODELS = {"swin": "swin_tiny", "convnextv2": "convnextv2_atto"}  # --model -> registry entry
SCHEMES = ("pooled", "baseline", "roi_aware")  # trained in this order: each group's parent is trained before it


@dataclass
class DataConfig:
    """Which dataset, in which published layout."""

    format: Literal["vindr", "cddcesm", "csv"] = "vindr"
    root: str | None = None  # dataset folder (vindr, cddcesm) or manifest CSV (csv); null = the demo data
    image_type: Literal["DM", "CESM", "both"] = "DM"  # cddcesm: low-energy DM, subtracted CESM or both
    test_ratio: float = 1 / 11  # cddcesm, and csv rows without a split: share of patients held out (10:1)
    point_radius: float = 16.0  # cddcesm: half side in pixels of the box made from a "point" region
    prepared: str | None = None  # where prepared PNGs go; null = $MEDIMG_HOME/prepared/roi-<hash of data+settings>
    workers: int = 1  # prepare: worker processes
    demo_studies: int = 120  # vindr demo: studies (patients), 4 DICOM images each
    demo_patients: int = 88  # cddcesm demo: patients, 4 DM + 4 CESM images each
    demo_height: int = 256  # demo images: height in pixels
    demo_width: int = 192  # demo images: width in pixels


@dataclass
class GroupsConfig:
    """How groups too small to train are handled."""

    min_images: int = 6  # a group with fewer training images is not trained; `fallback` predicts it
    fallback: Literal["parent", "constant"] = "parent"  # parent = the view model / pooled model; constant = its prevalence
    one_class: Literal["constant", "parent"] = "constant"  # a group with one class only: that class | the parent model


@dataclass
class RoiConfig:
    """Where ROI presence comes from at evaluation and prediction time."""

    source: Literal["annotation", "detector"] = "annotation"  # annotation = dataset / CSV; detector = YOLO finds a lesion
    detector_epochs: int = 20  # detector: YOLO epochs on the ROI boxes
    detector_imgsz: int = 128  # detector: YOLO input size
    detector_conf: float = 0.25  # detector: a box at least this confident means "ROI present"
    detector_model: str = "yolov8n"  # detector: Ultralytics architecture (from scratch, offline)


@dataclass
class EvaluateConfig:
    """How predictions are judged."""

    threshold: float = 0.5  # malignant when the probability is at least this
    bootstrap: int = 1000  # bootstrap resamples of every 95% interval (0 = none)


@dataclass
class PredictConfig:
    """`medimg roi predict` / `evaluate` / `export`."""

    weights: str | None = None  # the train run folder
    source: str | None = None  # an image, a folder of images, or DICOM files
    csv: str | None = None  # CSV with path (or id), view, laterality, roi for images whose header lacks them
    scheme: Literal["roi_aware", "baseline", "pooled"] = "roi_aware"  # which model set predicts
    gradcam: bool = False  # also write a Grad-CAM overlay per image


@dataclass
class RoiAppConfig:
    """The whole `medimg roi` config."""

    seed: int = 0
    strict: bool = False  # stop at the first bad row/image instead of skipping it (listed in skipped.csv)
    data: DataConfig = field(default_factory=DataConfig)
    prepare: Settings = field(default_factory=lambda: Settings(window="auto", crop=True, margin=0.02, clahe=False,
                                                              clip_limit=2.0, size=256))
    # Demo: a small ConvNeXtV2 behind the convolutional stem, which the from-scratch group models need to generalise.
    network: NetworkConfig = field(
        default_factory=lambda: NetworkConfig(widths=[8, 16, 32, 64], depths=[1, 1, 1, 1], stem="conv")
    )
    augment: Augment = field(default_factory=lambda: Augment(probability=0.5, rotation=10.0, zoom_min=0.9, zoom_max=1.1,
                                                             hflip=True, brightness=0.05))
    groups: GroupsConfig = field(default_factory=GroupsConfig)
    roi: RoiConfig = field(default_factory=RoiConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(backbone="convnextv2_atto", image_size=64))
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=15, batch_size=16, learning_rate=2e-3, class_weight="balanced",
                                            monitor="loss", early_stopping_patience=0, jit_compile=False, verbose=0)
    )
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    export: ExportConfig = field(default_factory=lambda: ExportConfig(formats=["savedmodel", "onnx"]))


STUDY = {"model.image_size": 384, "prepare.size": 384, "train.learning_rate": 1e-4, "train.epochs": 100,
         "network.widths": [], "network.depths": [], "network.stem": "patchify", "prepare.clahe": True}
