"""Reader of PASCAL VOC detection folders: `Annotations/<id>.xml` and `JPEGImages/<id>.jpg`, optionally
`ImageSets/Main/<split>.txt` naming the ids of a split."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from keras_medimg.datasets.records import Sample
from keras_medimg.datasets.yolo import raise_problems
from keras_medimg.errors import InvalidInputError
from keras_medimg.io.annotations import read_voc

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def read_voc_folder(root: str | Path, *, split: str | None = None, class_names: Sequence[str] | None = None) -> list[Sample]:
    """List the annotated images of a VOC folder with their boxes.

    Args:
        root: the folder holding `Annotations/` and `JPEGImages/`.
        split: read only the ids in `ImageSets/Main/<split>.txt`; None reads every annotation.
        class_names: the valid object names; None accepts any.

    Returns:
        One `Sample` per annotation file, sorted by id: boxes in pixels, `labels` = the distinct box labels,
        `meta` = `{"annotation_path", "size": (width, height)}`.

    Raises:
        InvalidInputError: missing folders or split file, an annotation without its image, a bad box, or an
            unknown object name (every problem is listed; the first names its file).
    """
    root = Path(root)
    annotations, images = root / "Annotations", root / "JPEGImages"
    for folder in (annotations, images):
        if not folder.is_dir():
            raise InvalidInputError(folder, "This VOC folder is missing. A VOC dataset holds Annotations/ and JPEGImages/.")
    if split is None:
        xml_files = sorted(annotations.glob("*.xml"))
    else:
        xml_files = [annotations / f"{sample_id}.xml" for sample_id in _split_ids(root, split)]
    if not xml_files:
        raise InvalidInputError(annotations, "The folder holds no .xml annotations. Check the dataset path.")
    image_by_stem = {p.stem: p for p in sorted(images.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    problems: list[InvalidInputError] = []
    samples = []
    for xml_path in xml_files:
        try:
            samples.append(_sample(xml_path, image_by_stem, class_names))
        except InvalidInputError as exc:
            problems.append(exc)
    raise_problems(problems)
    return samples


def _split_ids(root: Path, split: str) -> list[str]:
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise InvalidInputError(path, f"The split file for '{split}' does not exist. Create it or read without a split.")
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _sample(xml_path: Path, image_by_stem: dict[str, Path], class_names: Sequence[str] | None) -> Sample:
    image = image_by_stem.get(xml_path.stem)
    if image is None:
        raise InvalidInputError(xml_path, f"No image named {xml_path.stem}.* in JPEGImages/. Add the image or remove the annotation.")
    boxes, size = read_voc(xml_path)
    if class_names is not None:
        unknown = sorted({str(box.label) for box in boxes} - set(class_names))
        if unknown:
            raise InvalidInputError(
                xml_path, f"Unknown object name(s) {', '.join(unknown)}; the valid names are {', '.join(class_names)}."
            )
    meta = {"annotation_path": xml_path, "size": size}
    return Sample(id=xml_path.stem, path=image, boxes=boxes, labels=sorted({str(b.label) for b in boxes}), meta=meta)
