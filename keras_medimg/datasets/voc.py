"""Readers of PASCAL VOC detection sets, in both layouts people have:

- standard: `Annotations/<id>.xml`, the images in `JPEGImages/` or any other folder under the root, and
  optionally `ImageSets/Main/{train,val,test}.txt` naming the ids of each split;
- flat (what labelImg writes): every image with its `<stem>.xml` beside it, anywhere under the root.

Images may be 8- or 16-bit PNG/TIFF/JPEG or DICOM (with or without a suffix). Readers never load pixels; they
check that every annotation parses, that its boxes lie inside the image (whose size is read from the file
header where the format allows), that its class names are known, and that every image has its annotation.
A problem is an `InvalidInputError` naming the file, or, when `strict` is off, a row of `skipped`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.datasets.yolo import raise_problems
from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.io.annotations import read_voc
from keras_medimg.io.dicom import is_dicom
from keras_medimg.io.images import IMAGE_SUFFIXES, image_shape

SPLITS = ("train", "val", "test")
_NOT_IMAGES = {"Annotations", "ImageSets", "SegmentationClass", "SegmentationObject"}


@dataclass
class VocDataset:
    """A VOC set as read: its samples, its class names in index order, and the split files it carries.

    Args:
        root: the dataset folder.
        layout: `"standard"` (Annotations/) or `"flat"` (XML beside each image).
        samples: one per annotated image, sorted by id; `labels` are the distinct box labels and `meta` holds
            `annotation_path` and `size` (width, height).
        class_names: the given list, else every name found in the annotations, sorted.
        splits: ids per split from `ImageSets/Main/<split>.txt` (only the files that exist); empty without them.
    """

    root: Path
    layout: str
    samples: list[Sample]
    class_names: list[str]
    splits: dict[str, list[str]] = field(default_factory=dict)

    def class_counts(self) -> Counter:
        """Boxes per class over all samples."""
        return Counter(str(box.label) for sample in self.samples for box in sample.boxes)


def read_voc_dataset(
    root: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    strict: bool = True,
    skipped: Skipped | None = None,
) -> VocDataset:
    """Read a VOC set in the standard or the flat (labelImg) layout.

    Args:
        root: the dataset folder.
        class_names: the valid object names in index order (fixes the order); None takes them from the XML.
        strict: raise on the first bad file (listing the others found); otherwise skip bad files into `skipped`.
        skipped: where skipped files are listed (`strict` off); a new list when None.

    Returns:
        A `VocDataset`.

    Raises:
        InvalidInputError: the folder is missing or holds no annotated image, or (with `strict`) bad XML, a box
            outside its image, an unknown class name, an image without its XML or an XML without its image.
    """
    root = Path(root)
    if not root.is_dir():
        raise InvalidInputError(root, "The dataset folder does not exist. Pass a VOC folder (Annotations/ + images, "
                                "or images with their .xml beside them).")
    skipped = skipped if skipped is not None else Skipped()
    if (root / "Annotations").is_dir():
        layout, pairs, problems = "standard", *_standard_pairs(root)
    else:
        layout, pairs, problems = "flat", *_flat_pairs(root)
    samples = []
    for xml_path, image in pairs:
        try:
            samples.append(_sample(xml_path, image, class_names))
        except InvalidInputError as exc:
            problems.append(exc)
    problems.sort(key=lambda problem: str(problem.path))
    if problems and strict:
        raise_problems(problems)
    for problem in problems:
        skipped.add_error(problem)
    if not samples:
        raise InvalidInputError(root, "No annotated image could be read from this folder (see skipped.csv). A VOC set "
                                "holds Annotations/<id>.xml with the images in JPEGImages/ (or another folder), or "
                                "images with their labelImg .xml beside them.")
    samples.sort(key=lambda s: s.id)
    names = list(class_names) if class_names else sorted({label for s in samples for label in s.labels})
    return VocDataset(root=root, layout=layout, samples=samples, class_names=names, splits=_split_files(root))


def read_voc_folder(root: str | Path, *, split: str | None = None, class_names: Sequence[str] | None = None) -> list[Sample]:
    """The annotated images of a standard VOC folder (every problem raised), optionally of one split file.

    Args:
        root: the folder holding `Annotations/` and the images.
        split: read only the ids in `ImageSets/Main/<split>.txt`; None reads every annotation.
        class_names: the valid object names; None accepts any.

    Returns:
        One `Sample` per annotation file, sorted by id.
    """
    root = Path(root)
    if not (root / "Annotations").is_dir():
        raise InvalidInputError(root / "Annotations", "This VOC folder is missing. A VOC dataset holds Annotations/ "
                                "and its images (JPEGImages/ or another folder).")
    dataset = read_voc_dataset(root, class_names=class_names, strict=True)
    if split is None:
        return dataset.samples
    if split not in dataset.splits:
        path = root / "ImageSets" / "Main" / f"{split}.txt"
        raise InvalidInputError(path, f"The split file for '{split}' does not exist. Create it or read without a split.")
    by_id = {s.id: s for s in dataset.samples}
    return [by_id[i] for i in dataset.splits[split] if i in by_id]


def split_dataset(
    dataset: VocDataset,
    *,
    val: float = 0.2,
    test: float = 0.2,
    seed: int = 0,
    use_split_files: bool = True,
) -> dict[str, list[Sample]]:
    """Train, val and test samples: from the set's split files, else a seeded split stratified by rarest class.

    Each image is stratified by the rarest class (over the whole set) among its boxes, so the rare classes are
    spread over the three parts rather than left to chance.

    Args:
        dataset: from `read_voc_dataset`.
        val: validation fraction (the study: 0.2).
        test: test fraction (the study: 0.2).
        seed: the same seed and set give the same split.
        use_split_files: use `ImageSets/Main/{train,val,test}.txt` when all three exist.

    Returns:
        {"train": [...], "val": [...], "test": [...]}.
    """
    by_id = {s.id: s for s in dataset.samples}
    if use_split_files and all(name in dataset.splits for name in SPLITS):
        unknown = [i for name in SPLITS for i in dataset.splits[name] if i not in by_id]
        if len(unknown) == sum(len(dataset.splits[name]) for name in SPLITS):
            raise ConfigError(f"None of the ids in {dataset.root}/ImageSets/Main/*.txt names an annotated image. Fix "
                              "the split files, or set data.use_split_files=false for a seeded split.")
        return {name: [by_id[i] for i in dataset.splits[name] if i in by_id] for name in SPLITS}
    from keras_medimg.datasets.splits import train_val_test_split

    counts = dataset.class_counts()
    keyed = [replace(s, label=min(s.labels, key=lambda c: (counts[c], c)) if s.labels else "(none)")
             for s in dataset.samples]
    parts = train_val_test_split(keyed, val=val, test=test, seed=seed, stratify=True)
    return {name: [by_id[s.id] for s in part] for name, part in zip(SPLITS, parts)}


# === Layouts ===


def _is_image(path: Path) -> bool:
    return path.is_file() and (path.suffix.lower() in IMAGE_SUFFIXES or (path.suffix == "" and is_dicom(path)))


def _image_id(path: Path) -> str:
    return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else path.name


def _claim_id(seen: dict[str, Path], path: Path, problems: list[InvalidInputError], why: str) -> bool:
    """Record image `path` under its id in `seen`; a second image with that id is a problem (`why` says why ids
    must differ) and is left out. Returns whether `path` was recorded."""
    key = _image_id(path)
    if key in seen:
        problems.append(InvalidInputError(path, f"Another image is also named {key} ({seen[key]}); {why} Rename one "
                                          "of them."))
        return False
    seen[key] = path
    return True


def _standard_pairs(root: Path) -> tuple[list[tuple[Path, Path | None]], list[InvalidInputError]]:
    annotations = root / "Annotations"
    xml_files = sorted(annotations.glob("*.xml"))
    folders = [root / "JPEGImages"] if (root / "JPEGImages").is_dir() else [
        p for p in sorted(root.iterdir()) if p.is_dir() and p.name not in _NOT_IMAGES]
    images: dict[str, Path] = {}
    problems: list[InvalidInputError] = []
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if _is_image(path):
                _claim_id(images, path, problems, "an annotation can belong to only one.")
    stems = {p.stem for p in xml_files}
    problems += [InvalidInputError(path, f"The image has no annotation Annotations/{key}.xml. Add it (an empty "
                                   "<annotation> with its <size> for an image without objects) or remove the image.")
                 for key, path in sorted(images.items()) if key not in stems]
    where = "JPEGImages/" if folders == [root / "JPEGImages"] else "the image folders"
    pairs = []
    for xml_path in xml_files:
        image = images.get(xml_path.stem)
        if image is None:
            problems.append(InvalidInputError(xml_path, f"No image named {xml_path.stem}.* in {where}. Add the image "
                                              "or remove the annotation."))
        else:
            pairs.append((xml_path, image))
    return pairs, problems


def _flat_pairs(root: Path) -> tuple[list[tuple[Path, Path | None]], list[InvalidInputError]]:
    pairs, problems = [], []
    images = [p for p in sorted(root.rglob("*")) if _is_image(p)]
    seen: dict[str, Path] = {}
    for image in images:
        xml_path = image.with_name(f"{_image_id(image)}.xml")
        if not xml_path.is_file():
            problems.append(InvalidInputError(image, f"The image has no annotation {xml_path.name} beside it. Save "
                                              "one with labelImg (also for an image without objects) or remove it."))
            continue
        if _claim_id(seen, image, problems, "ids must be unique across the set."):
            pairs.append((xml_path, image))
    paired = {xml for xml, _ in pairs}
    for xml_path in sorted(root.rglob("*.xml")):
        if xml_path not in paired and not any(xml_path.with_name(xml_path.stem + s).is_file() for s in IMAGE_SUFFIXES):
            problems.append(InvalidInputError(xml_path, "No image with this name lies beside the annotation. Add the "
                                              "image or remove the annotation."))
    return pairs, problems


def _split_files(root: Path) -> dict[str, list[str]]:
    folder = root / "ImageSets" / "Main"
    splits = {}
    for name in SPLITS:
        path = folder / f"{name}.txt"
        if path.is_file():
            splits[name] = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return splits


def _sample(xml_path: Path, image: Path, class_names: Sequence[str] | None) -> Sample:
    boxes, size = read_voc(xml_path)
    if class_names is not None:
        unknown = sorted({str(box.label) for box in boxes} - set(class_names))
        if unknown:
            raise InvalidInputError(
                xml_path, f"Unknown object name(s) {', '.join(unknown)}; the valid names are {', '.join(class_names)}. "
                "Fix the annotation or add the name to the class list."
            )
    if image.suffix.lower() not in (".dcm", ".dicom", "") and not is_dicom(image):
        with open(image, "rb") as handle:
            shape = image_shape(handle.read(65536))
        if shape is not None and (shape[1], shape[0]) != tuple(size):
            raise InvalidInputError(
                xml_path, f"<size> says {size[0]}x{size[1]} but {image.name} is {shape[1]}x{shape[0]} pixels; the boxes "
                "would land in the wrong place. Fix the annotation's size (and boxes) for this image."
            )
    meta = {"annotation_path": xml_path, "size": size}
    return Sample(id=_image_id(image), path=image, boxes=boxes, labels=sorted({str(b.label) for b in boxes}), meta=meta)
