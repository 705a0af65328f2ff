"""Readers of PASCAL VOC detection sets, in both layouts people have:

- standard: `Annotations/<id>.xml`, the images in `JPEGImages/` or any other folder under the root, and
  optionally `ImageSets/Main/{train,val,test}.txt` naming the ids of each split. Annotations may lie in
  subfolders, as CVAT and Datumaro export them: `Annotations/<sub>/<id>.xml` has the id `<sub>/<id>` and pairs
  with the image at the same path in the image folder (`JPEGImages/<sub>/<id>.jpg`);
- flat (what labelImg writes): every image with its `<stem>.xml` beside it, anywhere under the root.

Images may be 8- or 16-bit PNG/TIFF/JPEG or DICOM (with or without a suffix). Readers never load pixels; they
check that every annotation parses, that its boxes lie inside the image (whose size is read from the file
header where the format allows), that its class names are known, that every image has its annotation, and
that every id of a split file names one of them. A problem is an `InvalidInputError` naming the file (and the
line of a split file), or, when `strict` is off, a row of `skipped`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.datasets.sources import image_id_of
from keras_medimg.datasets.yolo import raise_problems
from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.io.annotations import read_voc
from keras_medimg.io.dicom import is_dicom
from keras_medimg.io.images import IMAGE_SUFFIXES, image_shape, is_image_file

SPLITS = ("train", "val", "test")
_NOT_IMAGES = {"Annotations", "ImageSets", "SegmentationClass", "SegmentationObject"}


@dataclass
class VocDataset:
    """A VOC set as read: its samples, its class names in index order, and the split files it carries.

    Args:
        root: the dataset folder.
        layout: `"standard"` (Annotations/) or `"flat"` (XML beside each image).
        samples: one per annotated image, sorted by id (`<sub>/<id>` for an annotation in a subfolder of
            Annotations/); `labels` are the distinct box labels and `meta` holds `annotation_path` and `size`
            (width, height).
        class_names: the given list, else every name found in the annotations, sorted.
        splits: ids per split from `ImageSets/Main/<split>.txt` (only the files that exist, as written, also ids
            that name no image); empty without them.
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
            outside its image, an unknown class name, an image without its XML, an XML without its image, or an
            id in a split file that names neither (with the file and line).
    """
    root = Path(root)
    if not root.is_dir():
        raise InvalidInputError(root, "The dataset folder does not exist. Pass a VOC folder (Annotations/ + images, "
                                "or images with their .xml beside them).")
    skipped = skipped if skipped is not None else Skipped()
    if (root / "Annotations").is_dir():
        layout, (pairs, problems, known) = "standard", _standard_pairs(root)
    else:
        layout, (pairs, problems, known) = "flat", _flat_pairs(root)
    samples = []
    for sample_id, xml_path, image in pairs:
        try:
            samples.append(_sample(sample_id, xml_path, image, class_names))
        except InvalidInputError as exc:
            problems.append(exc)
    splits = _split_files(root, known, problems)
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
    return VocDataset(root=root, layout=layout, samples=samples, class_names=names, splits=splits)


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
    # As `sources.list_images`: an image suffix, or DICOM by content (IM000001, '1.2.840...12345' named by its UID).
    return path.suffix.lower() != ".xml" and path.is_file() and is_image_file(path)


def _image_id(path: Path) -> str:
    return image_id_of(path.name)


def _claim_id(seen: dict[str, Path], key: str, path: Path, problems: list[InvalidInputError], why: str) -> bool:
    """Record image `path` under the id `key` in `seen`; a second image with that id is a problem (`why` says why
    ids must differ) and is left out. Returns whether `path` was recorded."""
    if key in seen:
        problems.append(InvalidInputError(path, f"Another image is also named {key} ({seen[key]}); {why} Rename one "
                                          "of them."))
        return False
    seen[key] = path
    return True


Pairs = tuple[list[tuple[str, Path, Path]], list[InvalidInputError], set[str]]


def _standard_pairs(root: Path) -> Pairs:
    """(id, annotation, image) triples, the problems found, and every id an annotation or image has."""
    annotations = root / "Annotations"
    # The id of Annotations/<sub>/<id>.xml is <sub>/<id> (CVAT and Datumaro keep the image's subfolder).
    xml_files = {xml_path.relative_to(annotations).with_suffix("").as_posix(): xml_path
                 for xml_path in sorted(annotations.rglob("*.xml"))}
    folders = [root / "JPEGImages"] if (root / "JPEGImages").is_dir() else [
        p for p in sorted(root.iterdir()) if p.is_dir() and p.name not in _NOT_IMAGES]
    images: dict[str, Path] = {}
    problems: list[InvalidInputError] = []
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if _is_image(path):
                # An image pairs with the annotation at its own path under the folder (<sub>/<id>); else, as
                # before subfolders were read, with Annotations/<id>.xml wherever the image lies in the folder.
                relative = image_id_of(path.relative_to(folder).as_posix())
                _claim_id(images, relative if relative in xml_files else _image_id(path), path, problems,
                          "an annotation can belong to only one.")
    problems += [InvalidInputError(path, f"The image has no annotation Annotations/{key}.xml. Add it (an empty "
                                   "<annotation> with its <size> for an image without objects) or remove the image.")
                 for key, path in sorted(images.items()) if key not in xml_files]
    where = "JPEGImages/" if folders == [root / "JPEGImages"] else "the image folders"
    pairs = []
    for key, xml_path in sorted(xml_files.items()):
        image = images.get(key)
        if image is None:
            problems.append(InvalidInputError(xml_path, f"No image named {key}.* in {where}. Add the image or remove "
                                              "the annotation."))
        else:
            pairs.append((key, xml_path, image))
    return pairs, problems, set(xml_files) | set(images)


def _flat_pairs(root: Path) -> Pairs:
    """(id, annotation, image) triples, the problems found, and every id an image has."""
    pairs, problems = [], []
    images = [p for p in sorted(root.rglob("*")) if _is_image(p)]
    seen: dict[str, Path] = {}
    for image in images:
        xml_path = image.with_name(f"{_image_id(image)}.xml")
        if not xml_path.is_file():
            problems.append(InvalidInputError(image, f"The image has no annotation {xml_path.name} beside it. Save "
                                              "one with labelImg (also for an image without objects) or remove it."))
            continue
        if _claim_id(seen, _image_id(image), image, problems, "ids must be unique across the set."):
            pairs.append((_image_id(image), xml_path, image))
    paired = {xml for _, xml, _ in pairs}
    for xml_path in sorted(root.rglob("*.xml")):
        if xml_path not in paired and not any(xml_path.with_name(xml_path.stem + s).is_file() for s in IMAGE_SUFFIXES):
            problems.append(InvalidInputError(xml_path, "No image with this name lies beside the annotation. Add the "
                                              "image or remove the annotation."))
    return pairs, problems, {_image_id(image) for image in images}


def _split_files(root: Path, known: set[str], problems: list[InvalidInputError]) -> dict[str, list[str]]:
    """The ids of each split file that exists, as written; an id that names no annotation or image (the image
    would silently drop out of its split) is added to `problems` with its line."""
    folder = root / "ImageSets" / "Main"
    splits = {}
    for name in SPLITS:
        path = folder / f"{name}.txt"
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark is no part of the first id
        except UnicodeDecodeError as exc:
            problems.append(InvalidInputError(path, f"The split file is not UTF-8 text ({exc}). Save it as UTF-8."))
            continue
        splits[name] = []
        for line, text_line in enumerate(text.splitlines(), start=1):
            if not text_line.strip():
                continue
            sample_id = text_line.split()[0]
            splits[name].append(sample_id)
            if sample_id not in known:
                problems.append(InvalidInputError(
                    path, f"The id {sample_id} names no annotation ({sample_id}.xml) and no image of this set, so "
                    f"the {name} split would silently lack it. Fix the id or remove the line.", line=line))
    return splits


def _sample(sample_id: str, xml_path: Path, image: Path, class_names: Sequence[str] | None) -> Sample:
    boxes, size = read_voc(xml_path)
    if class_names is not None:
        unknown = sorted({str(box.label) for box in boxes} - set(class_names))
        if unknown:
            raise InvalidInputError(
                xml_path, f"Unknown object name(s) {', '.join(unknown)}; the valid names are {', '.join(class_names)}. "
                "Fix the annotation or add the name to the class list."
            )
    if not is_dicom(image):
        shape = image_shape(image)  # the header only, also a TIFF's size written after its pixels
        if shape is not None and (shape[1], shape[0]) != tuple(size):
            raise InvalidInputError(
                xml_path, f"<size> says {size[0]}x{size[1]} but {image.name} is {shape[1]}x{shape[0]} pixels; the boxes "
                "would land in the wrong place. Fix the annotation's size (and boxes) for this image."
            )
    meta = {"annotation_path": xml_path, "size": size}
    return Sample(id=sample_id, path=image, boxes=boxes, labels=sorted({str(b.label) for b in boxes}), meta=meta)
