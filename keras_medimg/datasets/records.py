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


@dataclass(frozen=True)
class SkippedFile:
    """One input file that was not used, and why (a row of skipped.csv)."""

    path: str
    reason: str
    line: int | None = None


class Skipped:
    """The input files a command skipped, in the order met; written to the run's skipped.csv.

    Readers and pipelines add to it instead of raising when `strict` is off, so a bad file in 20,000 costs one
    row here rather than the run.

    Example:
        >>> skipped = Skipped()
        >>> skipped.add("a.png", "the file is empty")
        >>> len(skipped), skipped.paths()
        (1, {'a.png'})
    """

    FIELDS = ("path", "line", "reason")

    def __init__(self) -> None:
        self._files: list[SkippedFile] = []

    def add(self, path: str | Path, reason: str, *, line: int | None = None) -> None:
        self._files.append(SkippedFile(str(path), reason, line))

    def add_error(self, error: Any) -> None:
        """Add an `InvalidInputError` (its file, line and reason)."""
        self.add(error.path, error.reason, line=getattr(error, "line", None))

    def paths(self) -> set[str]:
        return {f.path for f in self._files}

    def mark(self) -> int:
        """A position to roll back to with `rollback` (for a pass that is retried)."""
        return len(self._files)

    def rollback(self, mark: int) -> None:
        del self._files[mark:]

    def since(self, mark: int) -> list[SkippedFile]:
        return self._files[mark:]

    def rows(self) -> list[dict[str, Any]]:
        return [{"path": f.path, "line": "" if f.line is None else f.line, "reason": f.reason} for f in self._files]

    def __len__(self) -> int:
        return len(self._files)

    def __iter__(self):
        return iter(self._files)

    def __bool__(self) -> bool:
        return bool(self._files)
