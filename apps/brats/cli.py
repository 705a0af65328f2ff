"""`medimg brats`: Click commands only; the study lives in `pipeline.py`."""

from __future__ import annotations

import click


@click.group()
def brats() -> None:
    """Brain-tumour MRI: YOLOv8 detection -> SAM segmentation -> CNN classification.

    YOLOv8 finds the tumour, the Segment Anything Model outlines it from that box, and a CNN (InceptionV3,
    DenseNet121, Xception, VGG16 or EfficientNetV2B3) classifies the lesion cropped with its background
    removed into glioma, meningioma, pituitary or no tumour. Data: the Kaggle brain-tumour MRI layout plus a
    YOLO box set; grey-scale, median-filter denoising, 224x224, rotation/zoom/brightness augmentation.
    """
