"""The config tree of `medimg brats` (defaults here; `configs/brats.yaml` is the same tree, commented).

Demo defaults are sized so that `medimg brats train` runs end to end on a 2-core CPU in minutes; the study's
own values are given in the YAML comments and can be set with `--set`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from keras_medimg.config import AppConfig, ExportConfig, ModelConfig, NetworkConfig, TrainConfig
from keras_medimg.preprocessing.augment import Augment

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
BACKBONES = ["inceptionv3", "densenet121", "xception", "vgg16", "efficientnetv2b3"]

# `medimg brats train --study`: the paper's settings (section 3). The paper names the preprocessing (grey-scale,
# median filter, 224 x 224, 1/255), the augmentations (rotation 0-45 degrees, zoom 0.5-2, brightness, flips,
# colour adjustments), ImageNet-pretrained CNNs and a fine-tuned SAM; it gives no epochs, learning rate or
# batch size, so those keep our defaults (stated in the README), except the learning rate: 1e-3 to fine-tune
# ImageNet weights (the demo's 2e-3 is for its small network from random weights).
STUDY: dict[str, object] = {
    "data.denoise_median": 3, "classify.denoise_median": 3,
    "detect.imgsz": 224, "model.image_size": 224,
    "model.weights": "imagenet", "segment.finetune": True,
    "classify.augment.probability": 0.5, "classify.augment.rotation": 45.0, "classify.augment.zoom_min": 0.5,
    "classify.augment.zoom_max": 2.0,
    "classify.augment.brightness": 0.2, "classify.augment.contrast": 0.2, "classify.augment.hflip": True,
    # the study's best CNN at its published size (fine-tuned from ImageNet), not the demo's small ConvNeXt V2
    "model.backbone": "efficientnetv2b3", "network.widths": [], "network.depths": [], "train.learning_rate": 1e-3,
}


@dataclass
class DataConfig:
    """Where the images are: the Kaggle classification layout, the YOLO box set, the ground-truth masks."""

    root: str | None = None  # folder with Training/ and Testing/<class>/ images; null = the built-in demo data
    classes: list[str] = field(default_factory=lambda: list(CLASSES))
    detection: str | None = None  # YOLO data.yaml of the box set; null = <root>/detection/data.yaml
    masks: str | None = None  # folder of ground-truth masks <image id>.png; null = <root>/masks (if present)
    val_fraction: float = 0.15  # share of Training held out (stratified) to pick the best classifier epoch
    demo_n_per_class: int = 60  # demo data: images per class
    demo_size: int = 128  # demo data: image side in pixels
    demo_test_fraction: float = 0.25  # demo data: share of images in Testing/
    denoise_median: int = 0  # median filter (odd size) on every image before every stage: detector, SAM, crops; 0 = off


@dataclass
class DetectConfig:
    """Stage 1: Ultralytics YOLOv8 finds the tumour box."""

    model: str = "yolov8n"  # yolov8n | yolov8s | yolov8m | yolov8l | yolov8x (or any Ultralytics model .yaml)
    weights: str | None = None  # null = from scratch; a local .pt to fine-tune (never downloaded)
    epochs: int = 40
    imgsz: int = 128
    batch: int = 16
    conf: float = 0.25  # box confidence threshold at prediction and for P/R/F1
    iou: float = 0.7  # NMS IoU threshold
    device: str = "cpu"  # cpu | 0 | cuda:0 ...
    workers: int = 0
    patience: int = 100
    optimizer: Literal["AdamW", "Adam", "SGD", "auto"] = "AdamW"  # Ultralytics optimizer
    learning_rate: float = 0.002  # initial learning rate (Ultralytics lr0)
    warmup_epochs: float = 1.0  # linear learning-rate warm-up
    mosaic: float = 1.0  # probability of Ultralytics' 4-image mosaic augmentation
    close_mosaic: int = 5  # last epochs trained without mosaic
    single_class: bool = True  # train one "tumour" class, as the study's detector (false = one class per type)
    plots: bool = True  # keep Ultralytics' own plots (results.png, PR curve, confusion matrix, val predictions)


@dataclass
class SegmentConfig:
    """Stage 2: SAM outlines the lesion from the detector's box."""

    model_type: Literal["vit_b", "vit_l", "vit_h"] = "vit_b"
    checkpoint: str | None = None  # local SAM checkpoint (sam_vit_b_01ec64.pth ...); null = use `fallback`
    decoder: str | None = None  # a fine-tuned mask decoder (weights/sam_decoder.pth of a segment run)
    # without a checkpoint: grabcut | otsu = outline the lesion inside the box without weights (grabcut: best Dice
    # on the demo masks, 0.89 vs otsu 0.87 and box 0.84) | box = crop the box unmasked | error = stop
    fallback: Literal["grabcut", "otsu", "box", "error"] = "grabcut"
    finetune: bool = False  # fine-tune SAM's mask decoder on the ground-truth masks (train --stage segment)
    finetune_epochs: int = 5
    finetune_learning_rate: float = 1e-4
    max_images: int = 200  # at most this many masked images are used to fine-tune / measure Dice


@dataclass
class ClassifyConfig:
    """Stage 3: the lesion crop is classified."""

    crop_source: Literal["detector", "truth", "whole"] = "detector"  # what the classifier is trained and tested on
    # also train the same classifier on these sources and report all (where is accuracy lost?); [] = off
    compare_sources: list[Literal["detector", "truth", "whole"]] = field(default_factory=lambda: ["truth", "whole"])
    detector: str | None = None  # detector for --stage classify: a train run folder or a .pt (null = this run's)
    margin: float = 0.25  # grow each box by this share of its size before cropping (context around the border)
    mask_background: bool = True  # blank pixels outside the SAM mask (when there is one)
    denoise_median: int = 3  # median-filter size after resizing (odd; 0 = off)
    augment: Augment = field(
        # Mild by default: from random weights, the study's strong augmentation (--study) kept the classifier
        # underfitting within the CPU budget (0.41 training accuracy after 12 epochs on real MRI).
        default_factory=lambda: Augment(probability=0.5, rotation=15.0, zoom_min=0.9, zoom_max=1.1, hflip=True,
                                        brightness=0.1)
    )


@dataclass
class PredictConfig:
    """`medimg brats predict`."""

    weights: str | None = None  # the train run folder (holds config.yaml and weights/)
    source: str | None = None  # an image or a folder of images
    gradcam: bool = False  # also write a Grad-CAM overlay per image


@dataclass
class CompareConfig:
    """`medimg brats compare`: several backbones trained on the same split."""

    backbones: list[str] = field(default_factory=lambda: list(BACKBONES))


@dataclass
class BratsConfig(AppConfig):
    """The whole `medimg brats` config."""

    data: DataConfig = field(default_factory=DataConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(backbone="convnextv2_atto", image_size=128))
    # Demo: ConvNeXt V2 at widths 16-128 (0.27 M parameters) from random weights: sized for ~150 training crops and
    # a 2-core CPU (LayerNorm, so no batch statistics to settle in the few optimizer steps such a set gives).
    network: NetworkConfig = field(
        default_factory=lambda: NetworkConfig(widths=[16, 32, 64, 128], depths=[1, 1, 2, 1], stem="patchify")
    )
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=30, batch_size=16, learning_rate=2e-3, schedule="cosine",
                                            warmup_epochs=1.0, early_stopping_patience=0, monitor="loss",
                                            verbose=2)
    )
    predict: PredictConfig = field(default_factory=PredictConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    export: ExportConfig = field(default_factory=lambda: ExportConfig(formats=["savedmodel", "onnx"]))
