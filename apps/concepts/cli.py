"""`medimg concepts`: Click commands only; the study lives in `pipeline.py`."""

from __future__ import annotations

import click


@click.group()
def concepts() -> None:
    """ImageCLEFmedical concept detection: radiology image -> UMLS concepts (CUIs).

    A DenseNet-121 with a sigmoid head over the MultiLabelBinarizer-encoded training concepts is fine-tuned
    with its early layers frozen; concepts are chosen by thresholding the probabilities (tuned on the
    validation split), and a submission is scored by the official primary F1 (all concepts) and secondary F1
    (the manually validated modality and body-region concepts), as in ImageCLEFmedical 2024 / ROCOv2.
    """
