"""`medimg mamclip`: Click commands only."""

from __future__ import annotations

import click

from keras_medimg.apps.mamclip.atlas import atlas


@click.group()
def mamclip() -> None:
    """MAM-CLIP: mammography vision-language pretraining from atlas image-caption pairs (not yet implemented).

    Image-caption pairs are extracted from mammography atlas PDFs (PyMuPDF, Tesseract OCR); a ConvNeXt image
    encoder and a BERT text encoder are pretrained with an InfoNCE contrastive loss plus masked-language
    modelling through a fusion transformer, then fine-tuned for BI-RADS (5-class and 3-class) and breast
    density with k-fold cross-validation. This app has no modes yet.
    """


mamclip.add_command(atlas)
