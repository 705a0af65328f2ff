"""`Sample`: the one record every dataset reader returns and every pipeline consumes.

Readers never load pixels; they check that files exist and that labels are valid, and describe each image
with a `Sample`. Pipelines (`datasets.pipeline`) load the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keras_medimg.io.annotations import Box


@dataclass
class Sample:
    """One image of a dataset and what is known about it.

    Args:
        id: stable key of the image: the file stem, or the SOPInstanceUID for DICOM (never a patient name).
        path: the image file.
        label: the single class name, for single-label tasks (None when unknown, e.g. at prediction time).
        labels: the class names of a multi-label task (e.g. UMLS CUIs).
        boxes: objects in the image, in pixels of the original image.
        mask_path: a ground-truth mask image (non-zero = object), when there is one.
        group: patient or study id; splits never put one group on both sides.
        view: mammography view (CC, MLO, ...) or other acquisition view.
        laterality: L or R where it applies.
        meta: anything else a reader knows (source line, modality, ...).
    """

    id: str
    path: Path
    label: str | None = None
    labels: list[str] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    mask_path: Path | None = None
    group: str | None = None
    view: str | None = None
    laterality: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.mask_path is not None:
            self.mask_path = Path(self.mask_path)
