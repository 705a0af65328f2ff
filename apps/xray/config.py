"""The config tree of `medimg xray` (defaults here; `configs/xray.yaml` is the same tree, commented).

Demo defaults are sized so that `medimg xray train` runs on a 2-core CPU in minutes; the study's own values are
given in the YAML comments and can be set with `--set`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from keras_medimg.datasets.synthetic.xray import CLASSES
from keras_medimg.detection.tiled import TilePlan

CLOTHING = ["zipper", "zipper head", "shirt button", "pants button", "belt buckle", "bra", "shoes", "holding shoes",
            "watch", "glasses", "jewelry", "piercing"]
ANOMALY = ["unknown anomaly", "surgical implant", "key", "drugs", "cuffs", "ankle monitor"]


@dataclass
class DataConfig:
    """Where the scans are (a PASCAL VOC set, standard or flat layout) and how they are split."""

    root: str | None = None  # VOC folder; null = the built-in demo data
    classes: list[str] = field(default_factory=lambda: list(CLASSES))  # fixes the order; [] = names from the XML
    use_split_files: bool = True  # use ImageSets/Main/{train,val,test}.txt when all three exist
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    demo_images: int = 72
    demo_width: int = 640
    demo_height: int = 800


@dataclass
class ConvertConfig:
    """The one 16-bit -> 8-bit conversion for the detector (`preprocessing.bit_depth`)."""

    method: Literal["percentile", "minmax", "dicom"] = "percentile"
    low: float = 0.05
    high: float = 99.95


#: Random positive tiles to train, a fixed overlapping grid to predict: the library's plan itself, so a config
#: value is checked (multiples of 32, overlap < size) when the config is read.
TilingConfig = TilePlan


@dataclass
class AugmentConfig:
    """The study's box-aware augmentations, each with its probability (`detection.tiled.BoxAugment`)."""

    flip: float = 0.0
    blur: float = 0.0
    rbc: float = 0.0
    noise: float = 0.0
    blur_sigma: list[float] = field(default_factory=lambda: [0.5, 1.5])
    brightness: float = 0.2
    contrast: float = 0.2
    noise_std: float = 0.04


@dataclass
class RemapConfig:
    """The groups of the study's class remappings."""

    binary: dict[str, list[str]] = field(default_factory=lambda: {"clothing": list(CLOTHING), "anomaly": list(ANOMALY)})
    size_bins: dict[str, float] = field(default_factory=lambda: {"tiny": 10.0, "small": 20.0, "medium": 40.0})
    score_run: str | None = None
    score_bins: dict[str, float] = field(default_factory=lambda: {"best": 0.75, "high": 0.5, "medium": 0.25})


@dataclass
class DetectorConfig:
    """Ultralytics YOLOv5u and how it is trained."""

    size: Literal["n", "s", "m", "l", "x"] = "n"
    weights: str | None = None
    epochs: int = 15
    batch: int = 8
    optimizer: Literal["Adam", "AdamW", "SGD"] = "AdamW"
    learning_rate: float = 0.005
    warmup_epochs: float = 1.0
    patience: int = 0
    keep: Literal["val_loss", "fitness", "last"] = "val_loss"
    device: str = "cpu"
    workers: int = 0


@dataclass
class PredictConfig:
    """Fixed-grid prediction and merging (`detection.tiled.MergeRule`)."""

    weights: str | None = None
    source: str | None = None
    conf: float = 0.25
    nms_iou: float = 0.7
    merge_iou: float = 0.5
    class_agnostic_merge: bool = False
    max_det: int = 300
    overlays: bool = True
    runtime: Literal["torch", "onnx"] = "torch"
    flat_sigmas: float = 5.0  # air tiles (only noise around one level) are not run; 0 runs every tile


@dataclass
class EvaluateConfig:
    """`medimg xray evaluate`."""

    split: Literal["train", "val", "test"] = "test"
    iou: float = 0.5


@dataclass
class AblateConfig:
    """`medimg xray ablate`: the study's three experiments."""

    grid: list[str] = field(default_factory=list)
    seeds: int = 1


@dataclass
class ExportConfig:
    """`medimg xray export`."""

    atol: float = 1e-3


@dataclass
class XrayConfig:
    """The whole `medimg xray` config."""

    seed: int = 0
    strict: bool = False
    class_remap: str = "original"
    data: DataConfig = field(default_factory=DataConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    remap: RemapConfig = field(default_factory=RemapConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    ablate: AblateConfig = field(default_factory=AblateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
