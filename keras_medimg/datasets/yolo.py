"""Reader of Ultralytics YOLO detection folders: a `data.yaml` (or `images/<split>` and `labels/<split>`) with
one `class cx cy w h` text file per image.

An image without a label file is a background image (no boxes), as in Ultralytics; a label file without an
image, a box outside its image or an unknown class index is an error. The `classes.txt` labelImg writes beside
its label files is not a label file (the class names come from the data.yaml).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from keras_medimg.datasets.records import Sample
from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.io.annotations import read_yolo, read_yolo_data_yaml, yolo_label_path

# The image types Ultralytics trains on that the readers here can size.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
SPLITS = ("train", "val", "test")
# labelImg saves the class names as `classes.txt` in the folder of its label files: not a label file.
LABELIMG_CLASSES = "classes.txt"


def read_yolo_folder(source: str | Path, split: str = "train") -> list[Sample]:
    """List the images of one split with their boxes.

    Args:
        source: a `data.yaml`, a folder holding one, or a folder with `images/<split>/` and `labels/<split>/`
            (labels then stay class indices).
        split: `"train"`, `"val"` or `"test"`.

    Returns:
        One `Sample` per image, sorted by path: id = file stem, boxes in pixels with class names as labels,
        `labels` = the distinct box labels, `meta` = `{"split", "label_path", "size": (width, height)}`.

    Raises:
        InvalidInputError: a missing folder or data.yaml split, an unreadable image, a label file without an
            image, or a bad label line (every problem is listed; the first names its file and line).
    """
    if split not in SPLITS:
        raise ConfigError(f"The YOLO split must be one of {', '.join(SPLITS)}, not '{split}'.")
    source = Path(source)
    yaml_path = source / "data.yaml" if source.is_dir() else source
    if yaml_path.is_file():
        data = read_yolo_data_yaml(yaml_path)
        entries, class_names = getattr(data, split), data.class_names
        if not entries:
            raise InvalidInputError(yaml_path, f"The data.yaml has no '{split}' entry. Add it or choose another split.")
    elif source.is_dir():
        entries, class_names = [source / "images" / split], None
    else:
        raise InvalidInputError(source, "Neither a data.yaml nor a folder. Pass a YOLO data.yaml or the dataset folder.")

    problems: list[InvalidInputError] = []
    samples = []
    for entry in entries:
        images = entry_images(entry)
        samples += [s for s in (_sample(image, class_names, split, problems) for image in images) if s is not None]
        if entry.is_dir():
            problems += _orphan_labels(entry, images)
    raise_problems(problems)
    if not samples:
        raise InvalidInputError(entries[0], f"The {split} split holds no images. Check the data.yaml or the folder layout.")
    return samples


def raise_problems(problems: Sequence[InvalidInputError]) -> None:
    """Raise the first problem, its message listing how many more there are and the next few of them."""
    if not problems:
        return
    first = problems[0]
    if len(problems) == 1:
        raise first
    more = "; ".join(str(p) for p in problems[1:6])
    raise InvalidInputError(first.path, f"{first.reason} ({len(problems) - 1} more problem(s): {more})", line=first.line)


def entry_images(entry: Path) -> list[Path]:
    """The image files one data.yaml split entry names, as Ultralytics reads it.

    Args:
        entry: a folder (searched recursively, sorted) or a `.txt` list of images, one per line, relative
            to the list's folder.

    Returns:
        The image paths.

    Raises:
        InvalidInputError: the entry is neither an existing folder nor a `.txt` list file.
    """
    if entry.is_dir():
        return sorted(p for p in entry.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if entry.is_file() and entry.suffix == ".txt":
        # A list file names one image per line, relative to the list's folder (Ultralytics' convention).
        lines = [line.strip() for line in entry.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [Path(line) if Path(line).is_absolute() else entry.parent / line for line in lines]
    raise InvalidInputError(entry, "The image folder or list file named by the data.yaml does not exist. Fix the path.")


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:  # reads the header only
            return image.size
    except FileNotFoundError:
        raise InvalidInputError(path, "The image does not exist. Fix the list file or add the image.") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInputError(path, f"The file is not a readable image ({exc}). Replace or remove it.") from None


def _sample(image: Path, class_names: list[str] | None, split: str, problems: list[InvalidInputError]) -> Sample | None:
    labels = yolo_label_path(image)
    try:
        size = _image_size(image)
        boxes = read_yolo(labels, size, class_names) if labels.is_file() else []
    except InvalidInputError as exc:
        problems.append(exc)
        return None
    names = sorted({str(box.label) for box in boxes})
    meta = {"split": split, "label_path": labels if labels.is_file() else None, "size": size}
    return Sample(id=image.stem, path=image, boxes=boxes, labels=names, meta=meta)


def _orphan_labels(image_dir: Path, images: list[Path]) -> list[InvalidInputError]:
    label_dir = yolo_label_path(image_dir / "x.png").parent
    if label_dir == image_dir or not label_dir.is_dir():
        return []
    expected = {yolo_label_path(image) for image in images}
    return [
        InvalidInputError(path, "This label file has no image of the same name. Add the image or remove the label file.")
        for path in sorted(label_dir.rglob("*.txt"))
        if path not in expected and path.name != LABELIMG_CLASSES
    ]


def check_yolo_dataset(data_yaml: str | Path, splits: Sequence[str] = ("train", "val", "test")) -> dict[str, list[Sample]]:
    """Read every split a YOLO data.yaml names with our reader, before a detector trains on it.

    A box outside its image, a malformed label line or a label file without an image is an error here
    (naming the file and line), where Ultralytics would drop it with a warning.

    Args:
        data_yaml: the box set's data.yaml.
        splits: the splits to check (those the file does not name are passed over).

    Returns:
        The samples of each checked split.

    Raises:
        InvalidInputError: the first problem found (all of a split's problems are listed in it).
    """
    data = read_yolo_data_yaml(data_yaml)
    return {split: read_yolo_folder(data_yaml, split) for split in splits if getattr(data, split, None)}
