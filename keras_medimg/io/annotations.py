"""Bounding boxes and the annotation formats that carry them (PASCAL VOC XML, YOLO txt, COCO JSON)."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from xml.parsers import expat

import yaml

from keras_medimg.errors import InvalidInputError
from keras_medimg.runs import atomic_write_text, write_json


class Box(NamedTuple):
    """One axis-aligned box in pixels of the original image.

    `x1, y1` is the top-left corner and `x2, y2` the bottom-right one (exclusive, like array slicing), so the
    width is `x2 - x1`. `label` is the class name (or an index where no names exist); `score` is a detector's
    confidence and 1.0 for ground truth.
    """

    x1: float
    y1: float
    x2: float
    y2: float
    label: str | int = 0
    score: float = 1.0

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)


# === Validation shared by every format ===

# Pixel coordinates (VOC, COCO, our writers) are forgiven float rounding error only; anything more is a wrong
# annotation.
_TOLERANCE = 1e-3

# Normalised YOLO numbers are written rounded (labelImg and CVAT write 6 decimals, some scripts 3 or 4), and the
# edge `cx + w/2` adds the rounding of two numbers: at most 0.75 units of the last decimal written. So a box that
# ends on the border can overshoot it by up to 0.75e-3 of the side with 3 decimals (2048.001 px on a 2048 px wide
# image with 6). 1e-3 of the side covers every file written with 3 or more decimals; one pixel more is never
# counted as outside, since clipping less than a pixel changes no pixel the box covers. Such boxes are clipped to
# the image, as Ultralytics clips (it accepts up to 1.01); boxes further out are still errors.
_YOLO_TOLERANCE = 1e-3


def _yolo_slack(image_size: tuple[float, float]) -> tuple[float, float]:
    """How far, in pixels, a box from normalised YOLO numbers may overshoot the image on each axis (see above)."""
    return tuple(max(1.0, _YOLO_TOLERANCE * side) for side in image_size)  # type: ignore[return-value]


def _checked(
    box: Box,
    size: tuple[float, float],
    path: Path,
    line: int | None,
    where: str = "",
    slack: tuple[float, float] = (_TOLERANCE, _TOLERANCE),
) -> Box:
    """Return `box` clipped to the image, or raise if it is empty or lies more than `slack` pixels outside it."""
    width, height = size
    x1, y1, x2, y2 = box.x1, box.y1, box.x2, box.y2
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise InvalidInputError(path, f"The box {where}has a coordinate that is not a number. Fix the annotation.", line=line)
    if x2 <= x1 or y2 <= y1:
        raise InvalidInputError(
            path,
            f"The box {where}({x1:g}, {y1:g}, {x2:g}, {y2:g}) is empty: x2 must be greater than x1 and y2 greater than y1. "
            "Fix or remove the annotation.",
            line=line,
        )
    slack_x, slack_y = slack
    if x1 < -slack_x or y1 < -slack_y or x2 > width + slack_x or y2 > height + slack_y:
        raise InvalidInputError(
            path,
            f"The box {where}({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside the {width:g}x{height:g} image. "
            "Fix the annotation or the image size it was made for.",
            line=line,
        )
    x1, y1 = min(max(0.0, x1), float(width)), min(max(0.0, y1), float(height))
    x2, y2 = max(min(float(width), x2), 0.0), max(min(float(height), y2), 0.0)
    if x2 <= x1 or y2 <= y1:
        raise InvalidInputError(
            path,
            f"The box {where}({box.x1:g}, {box.y1:g}, {box.x2:g}, {box.y2:g}) lies on the border of the "
            f"{width:g}x{height:g} image and covers none of it. Fix or remove the annotation.",
            line=line,
        )
    return box._replace(x1=x1, y1=y1, x2=x2, y2=y2)


def _class_index(label: str | int, class_names: Sequence[str], path: Path) -> int:
    if isinstance(label, str):
        if label not in class_names:
            raise InvalidInputError(
                path, f"The box label '{label}' is not one of the class names {list(class_names)}. Add it to the class names."
            )
        return class_names.index(label)
    if not 0 <= int(label) < len(class_names):
        raise InvalidInputError(path, f"The class index {label} is outside 0..{len(class_names) - 1}. Fix the label or the class names.")
    return int(label)


def _number(value: float) -> str:
    """Pixel coordinates as integers where they are whole, else with enough digits to read back the same box."""
    return str(int(value)) if float(value).is_integer() else f"{value:.6f}".rstrip("0")


# === PASCAL VOC XML ===


def _object_lines(data: bytes) -> list[int]:
    """Line number of each <object> element, in document order (ElementTree does not keep line numbers)."""
    lines: list[int] = []
    parser = expat.ParserCreate()

    def start(name: str, attrs: dict) -> None:
        if name == "object":
            lines.append(parser.CurrentLineNumber)

    parser.StartElementHandler = start
    parser.Parse(data, True)
    return lines


def _voc_text(element: ET.Element, tag: str, path: Path, line: int | None) -> str:
    found = element.find(tag)
    if found is None or found.text is None or not found.text.strip():
        raise InvalidInputError(path, f"The VOC file has no <{tag}>. Add it or regenerate the annotation.", line=line)
    return found.text.strip()


def _voc_float(element: ET.Element, tag: str, path: Path, line: int | None) -> float:
    text = _voc_text(element, tag, path, line)
    try:
        return float(text)
    except ValueError:
        raise InvalidInputError(path, f"<{tag}> holds '{text}', which is not a number. Fix the annotation.", line=line) from None


def _voc_difficult(obj: ET.Element, path: Path, line: int | None) -> bool:
    """Whether an <object> is marked difficult; a missing or empty <difficult> means it is not."""
    found = obj.find("difficult")
    text = (found.text or "").strip().lower() if found is not None else ""
    if text in ("", "false", "true"):
        return text == "true"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value in (0.0, 1.0):
        return value == 1.0
    raise InvalidInputError(path, f"<difficult> holds '{text}'; write 0 or 1. Fix the annotation.", line=line)


def read_voc(path: str | Path) -> tuple[list[Box], tuple[int, int]]:
    """Read a PASCAL VOC XML annotation.

    Corners are read as written (no +-1 shift), the convention of LabelImg and CVAT exports, so `write_voc`
    gives back the same numbers.

    Objects marked `<difficult>1</difficult>` are left out (and not checked), as Ultralytics' VOC conversion
    leaves them out of its labels: they are neither trained on nor counted as missed. An image whose objects
    are all difficult has no boxes.

    Args:
        path: the `.xml` file.

    Returns:
        The boxes of the objects that are not difficult (label = `<name>`, score 1.0) and the image size
        `(width, height)` from `<size>`.

    Raises:
        InvalidInputError: unreadable XML, a missing `<size>` or coordinate, a `<difficult>` other than 0 or 1,
            or a box that is empty or outside the image (the message names the line of its `<object>`).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        root = ET.fromstring(data)
        object_lines = _object_lines(data)
    except FileNotFoundError:
        raise InvalidInputError(path, "The VOC annotation file does not exist. Check the path.") from None
    except (ET.ParseError, expat.ExpatError) as exc:
        raise InvalidInputError(path, f"The file is not valid XML ({exc}). Fix or regenerate it.") from None
    size_element = root.find("size")
    if size_element is None:
        raise InvalidInputError(path, "The VOC file has no <size>; the image width and height are needed to check the boxes.")
    size = (int(_voc_float(size_element, "width", path, None)), int(_voc_float(size_element, "height", path, None)))
    if size[0] <= 0 or size[1] <= 0:
        raise InvalidInputError(path, f"<size> says {size[0]}x{size[1]}; write the real image width and height.")
    boxes = []
    for obj, line in zip(root.findall("object"), object_lines):
        if _voc_difficult(obj, path, line):
            continue
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise InvalidInputError(path, "An <object> has no <bndbox>. Add the box or remove the object.", line=line)
        corners = [_voc_float(bndbox, tag, path, line) for tag in ("xmin", "ymin", "xmax", "ymax")]
        box = Box(*corners, label=_voc_text(obj, "name", path, line))
        boxes.append(_checked(box, size, path, line))
    return boxes, size


def write_voc(
    path: str | Path, boxes: Sequence[Box], image_size: tuple[int, int], image_name: str, *, depth: int = 1
) -> Path:
    """Write boxes as a PASCAL VOC XML annotation, atomically.

    Args:
        path: the `.xml` file to write.
        boxes: boxes in pixels; `label` becomes `<name>`.
        image_size: `(width, height)` of the image.
        image_name: the image file name for `<filename>`.
        depth: channels of the image (1 for grey radiographs, 3 for colour).

    Returns:
        `path`.
    """
    path = Path(path)
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = image_name
    size_element = ET.SubElement(root, "size")
    for tag, value in zip(("width", "height", "depth"), (*image_size, depth)):
        ET.SubElement(size_element, tag).text = str(int(value))
    ET.SubElement(root, "segmented").text = "0"
    for index, box in enumerate(boxes):
        box = _checked(box, image_size, path, None, where=f"#{index} ")
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = str(box.label)
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box[:4]):
            ET.SubElement(bndbox, tag).text = _number(value)
    ET.indent(root)
    return atomic_write_text(path, ET.tostring(root, encoding="unicode") + "\n")


# === YOLO txt and data.yaml ===


def read_yolo(path: str | Path, image_size: tuple[int, int], class_names: Sequence[str] | None = None) -> list[Box]:
    """Read a YOLO label file: one `class cx cy w h [score]` line per box, normalised to [0, 1].

    A segmentation line, `class x1 y1 x2 y2 x3 y3 ...` (3 or more normalised points), gives the box that
    encloses its polygon, as Ultralytics reads it for detection. The class may be written as a float that is
    a whole number (`1.0`, numpy's `0.000000e+00`), since Ultralytics reads labels as floats. A box that
    overshoots the image by the rounding of its normalised numbers (see `_YOLO_TOLERANCE`) is clipped to it.

    Args:
        path: the `.txt` file.
        image_size: `(width, height)` of the image, to turn normalised numbers into pixels.
        class_names: names by class index; without them the label stays the integer index.

    Returns:
        The boxes in pixels.

    Raises:
        InvalidInputError: the file is missing, or a line has the wrong number of fields, a bad number, a class
            that is not a whole number or not a known index, or a box that is empty or outside the image (the
            message names the line).
    """
    path = Path(path)
    width, height = image_size
    slack = _yolo_slack(image_size)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not part of the first line
    except FileNotFoundError:
        raise InvalidInputError(path, "The YOLO label file does not exist. Check the path.") from None
    except UnicodeDecodeError:
        raise InvalidInputError(path, "The file is not a UTF-8 text file. A YOLO label file holds lines of numbers.") from None
    boxes = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        polygon = len(fields) > 6
        if len(fields) < 5 or (polygon and len(fields) % 2 == 0):
            raise InvalidInputError(
                path,
                f"Expected 5 fields 'class cx cy w h' (or 6 with a score, or a class and 3 or more x y points of a "
                f"polygon), found {len(fields)}.",
                line=line_number,
            )
        try:
            index = _yolo_class(fields[0], path, line_number)
            values = [float(v) for v in fields[1:]]
        except ValueError:
            raise InvalidInputError(path, f"'{line.strip()}' is not 'class cx cy w h' with an integer class.", line=line_number) from None
        if class_names is not None and not 0 <= index < len(class_names):
            raise InvalidInputError(
                path, f"The class index {index} is outside 0..{len(class_names) - 1} of the data.yaml names.", line=line_number
            )
        label = class_names[index] if class_names is not None else index
        if polygon:
            if not all(math.isfinite(v) for v in values):
                raise InvalidInputError(
                    path, "The polygon has a coordinate that is not a number. Fix the annotation.", line=line_number
                )
            xs, ys = values[0::2], values[1::2]
            box = Box(min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height, label=label)
        else:
            cx, cy, w, h, *score = values
            box = Box(
                (cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height,
                label=label, score=score[0] if score else 1.0,
            )
        boxes.append(_checked(box, image_size, path, line_number, slack=slack))
    return boxes


def _yolo_class(text: str, path: Path, line: int) -> int:
    """A YOLO class index: an integer, or a float that is a whole number (`1.0`, `0.000000e+00`)."""
    try:
        return int(text)
    except ValueError:
        value = float(text)  # a ValueError here is reported by the caller as a malformed line
    if not value.is_integer():
        raise InvalidInputError(path, f"The class index '{text}' is not a whole number. Fix the label.", line=line)
    return int(value)


def yolo_label_path(image: str | Path) -> Path:
    """Where Ultralytics looks for an image's label file: the last `images` folder of the path becomes `labels`.

    Args:
        image: the image file (`.../images/train/x.jpg`).

    Returns:
        The label file (`.../labels/train/x.txt`); an image outside any `images` folder has its label beside it.
    """
    parts = list(Path(image).parts)
    for i in range(len(parts) - 2, -1, -1):  # the file name itself is never the folder
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def write_yolo(path: str | Path, boxes: Sequence[Box], image_size: tuple[int, int], class_names: Sequence[str]) -> Path:
    """Write boxes as a YOLO label file (`class cx cy w h`, normalised), atomically.

    Args:
        path: the `.txt` file to write (an empty file when there are no boxes, as YOLO expects).
        boxes: boxes in pixels; `label` is a class name or an index into `class_names`.
        image_size: `(width, height)` of the image.
        class_names: the class names in index order (the same list as the data.yaml).

    Returns:
        `path`.
    """
    path = Path(path)
    width, height = image_size
    lines = []
    for index, box in enumerate(boxes):
        box = _checked(box, image_size, path, None, where=f"#{index} ")
        cx, cy = (box.x1 + box.x2) / 2 / width, (box.y1 + box.y2) / 2 / height
        lines.append(
            f"{_class_index(box.label, class_names, path)} {cx:.8f} {cy:.8f} {box.width / width:.8f} {box.height / height:.8f}\n"
        )
    return atomic_write_text(path, "".join(lines))


@dataclass(frozen=True)
class YoloData:
    """What an Ultralytics `data.yaml` says: the dataset root, image folders or lists per split, class names."""

    root: Path
    train: list[Path]
    val: list[Path]
    test: list[Path]
    class_names: list[str]


def write_yolo_data_yaml(
    path: str | Path,
    root: str | Path | None,
    train: str | Sequence[str],
    val: str | Sequence[str],
    class_names: Sequence[str],
    *,
    test: str | Sequence[str] | None = None,
) -> Path:
    """Write an Ultralytics `data.yaml`, atomically.

    Args:
        path: the YAML file to write.
        root: the dataset folder (`path:`); split entries are relative to it. None leaves `path:` out, so the
            YAML's own folder is the root and the dataset still works after it is moved or renamed.
        train: image folder(s) or list file(s) of the training split, relative to `root`.
        val: the same for the validation split.
        class_names: class names in index order (`names:` is written as an index -> name mapping).
        test: the same for an optional test split.

    Returns:
        `path`.
    """
    content: dict[str, Any] = {} if root is None else {"path": str(root)}
    content.update(train=_yaml_split(train), val=_yaml_split(val))
    if test is not None:
        content["test"] = _yaml_split(test)
    content["nc"] = len(class_names)
    content["names"] = {index: str(name) for index, name in enumerate(class_names)}
    return atomic_write_text(path, yaml.safe_dump(content, sort_keys=False))


def _yaml_split(value: str | Sequence[str]) -> str | list[str]:
    return str(value) if isinstance(value, (str, Path)) else [str(v) for v in value]


def _read_text(path: Path, what: str) -> str:
    """A UTF-8 text file, or InvalidInputError saying it is missing or not text (a binary file, another encoding)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InvalidInputError(path, f"The {what} does not exist. Check the path.") from None
    except UnicodeDecodeError:
        raise InvalidInputError(path, f"The file is not UTF-8 text, so not a {what}. Check that it is the right file.") from None


def read_yolo_data_yaml(path: str | Path) -> YoloData:
    """Read an Ultralytics `data.yaml`.

    A relative `path:` is taken from the YAML file's folder (where there is no `path:`, that folder is the
    root); split entries are resolved against the root. An entry starting with `../` that does not exist is
    tried again without the `../`, as Ultralytics does (Roboflow exports write `train: ../train/images` in the
    dataset folder itself).

    Args:
        path: the YAML file.

    Returns:
        The resolved `YoloData`.

    Raises:
        InvalidInputError: unreadable YAML, a missing `train`/`val`/`names`, or names that are not a list or a
            mapping from 0..n-1.
    """
    path = Path(path)
    text = _read_text(path, "data.yaml file")
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = exc.problem_mark.line + 1 if getattr(exc, "problem_mark", None) else None
        raise InvalidInputError(path, f"The file is not valid YAML ({getattr(exc, 'problem', exc)}).", line=line) from None
    if not isinstance(content, dict):
        raise InvalidInputError(path, "A data.yaml must be a mapping with train, val and names keys.")
    missing = [key for key in ("train", "val", "names") if key not in content]
    if missing:
        raise InvalidInputError(path, f"The data.yaml has no {', '.join(missing)} key. Add it (see Ultralytics' dataset format).")
    root = Path(content.get("path") or ".")
    if not root.is_absolute():
        root = path.parent / root
    names = content["names"]
    if isinstance(names, dict):
        # YAML keys written quoted ('0': tumour) are strings; they name the same indices
        names = {int(k) if isinstance(k, str) and k.strip().isdigit() else k: v for k, v in names.items()}
        if set(names) != set(range(len(names))):
            raise InvalidInputError(path, f"The names mapping must have the keys 0..{len(names) - 1}, found "
                                          f"{sorted(names, key=str)}.")
        class_names = [str(names[i]) for i in range(len(names))]
    elif isinstance(names, list):
        class_names = [str(name) for name in names]
    else:
        raise InvalidInputError(path, "names must be a list of class names or a mapping from class index to name.")

    def entry(key: str, value: Any) -> Path:
        value = str(value)
        if Path(value).is_absolute():
            return Path(value)
        first = root / value
        # Roboflow exports write `train: ../train/images` beside train/ with no `path:`; Ultralytics then tries
        # the entry again without its leading '../' when the first path does not exist.
        if first.exists() or not value.startswith("../"):
            return first
        second = root / value[3:]
        # neither there: the entry as written, for the caller that lists the split to report (reading only the
        # class names, e.g. for prediction, needs no split)
        return second if second.exists() else first

    def split(key: str) -> list[Path]:
        value = content.get(key)
        if value is None:
            return []
        values = value if isinstance(value, list) else [value]
        return [entry(key, v) for v in values]

    return YoloData(root=root, train=split("train"), val=split("val"), test=split("test"), class_names=class_names)


# === COCO JSON ===


def read_coco_images(path: str | Path) -> dict[str, tuple[tuple[int, int], list[Box]]]:
    """Read a COCO detection JSON into image size and boxes per image file name.

    Args:
        path: the `.json` file (keys `images`, `annotations`, `categories`).

    Returns:
        `{file_name: ((width, height), boxes)}` with label = category name and score = `score` when present
        (detector results) else 1.0. Images without annotations map to an empty list.

    Raises:
        InvalidInputError: invalid JSON (with its line), missing keys, an annotation of an unknown image or
            category, or a box that is empty or outside its image (named by annotation id).
    """
    path = Path(path)
    text = _read_text(path, "COCO annotation file")
    try:
        content = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(path, f"The file is not valid JSON ({exc.msg}).", line=exc.lineno) from None
    try:
        categories = {c["id"]: str(c["name"]) for c in content["categories"]}
        images = {i["id"]: (i["file_name"], (int(i["width"]), int(i["height"]))) for i in content["images"]}
        annotations = content.get("annotations", [])
    except (KeyError, TypeError) as exc:
        raise InvalidInputError(
            path, f"The COCO file lacks {exc} in its images or categories; each image needs id, file_name, width, height."
        ) from None
    result: dict[str, tuple[tuple[int, int], list[Box]]] = {name: (size, []) for name, size in images.values()}
    for annotation in annotations:
        ann_id = annotation.get("id", "?")
        try:
            file_name, size = images[annotation["image_id"]]
            label = categories[annotation["category_id"]]
            x, y, w, h = (float(v) for v in annotation["bbox"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(
                path, f"Annotation id {ann_id} has a missing or unknown image_id, category_id or bbox ({exc}). Fix it."
            ) from None
        box = Box(x, y, x + w, y + h, label=label, score=float(annotation.get("score", 1.0)))
        result[file_name][1].append(_checked(box, size, path, None, where=f"of annotation id {ann_id} "))
    return result


def read_coco(path: str | Path) -> dict[str, list[Box]]:
    """Read a COCO detection JSON into boxes per image file name (see `read_coco_images` for the sizes too).

    Args:
        path: the `.json` file.

    Returns:
        `{file_name: boxes}`.
    """
    return {name: boxes for name, (_, boxes) in read_coco_images(path).items()}


def write_coco(
    path: str | Path, images: Mapping[str, tuple[tuple[int, int], Sequence[Box]]], class_names: Sequence[str]
) -> Path:
    """Write boxes as a COCO detection JSON, atomically.

    Args:
        path: the `.json` file to write.
        images: `{file_name: ((width, height), boxes)}`, the shape `read_coco_images` returns.
        class_names: class names in index order; category ids are 1-based as in COCO.

    Returns:
        `path`.
    """
    path = Path(path)
    content: dict[str, list] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": str(name)} for i, name in enumerate(class_names)],
    }
    for image_id, (file_name, (size, boxes)) in enumerate(images.items(), start=1):
        content["images"].append({"id": image_id, "file_name": file_name, "width": int(size[0]), "height": int(size[1])})
        for box in boxes:
            ann_id = len(content["annotations"]) + 1
            box = _checked(box, size, path, None, where=f"of annotation id {ann_id} ")
            annotation = {
                "id": ann_id,
                "image_id": image_id,
                "category_id": _class_index(box.label, class_names, path) + 1,
                "bbox": [box.x1, box.y1, box.width, box.height],
                "area": box.area,
                "iscrowd": 0,
            }
            if box.score != 1.0:
                annotation["score"] = box.score
            content["annotations"].append(annotation)
    return write_json(path, content)
