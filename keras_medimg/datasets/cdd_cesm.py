"""CDD-CESM (Categorized Digital Database for Contrast-Enhanced Spectral Mammography, TCIA release).

Layout (found anywhere under the root folder; columns by name, any order and case):

    Radiology-manual-annotations.xlsx (or "Radiology manual annotations.xlsx")
        Patient_ID, Image_name (e.g. "P1_L_DM_MLO", no suffix), Side, Type (DM | CESM), View (CC | MLO),
        "Pathology Classification/ Follow up" (Normal | Benign | Malignant), ...
    Low energy images of CDD-CESM/<Image_name>.jpg       the DM (low-energy) images
    Subtracted images of CDD-CESM/<Image_name>.jpg       the CESM (subtracted) images
    Radiology_hand_drawn_segmentations_v2.csv           VGG Image Annotator export: filename, file_size,
        file_attributes, region_count, region_id, region_shape_attributes (JSON: polygon all_points_x/y,
        ellipse cx cy rx ry theta, circle cx cy r, point cx cy), region_attributes

Labels follow the ROI-aware study: Benign / Malignant from the pathology column, Normal excluded. An image has an
ROI when the segmentation file outlines at least one region on it; each region becomes a box (a point, which has no
extent, a square of side 2 * `point_radius`). File names in the segmentation file carry stray spaces in the real
release ("P2_L_DM_MLO .jpg"); they are matched with every space removed. The study's train/test split is a
patient-grouped, seeded 10:1 split (`grouped_split`).
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keras_medimg.datasets.mammography import (check_columns, finish, normalise_laterality, normalise_view,
                                                samples_from_rows)
from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.errors import ConfigError, InvalidInputError
from keras_medimg.io.annotations import Box

ANNOTATION_NAMES = ("Radiology-manual-annotations.xlsx", "Radiology manual annotations.xlsx")
SEGMENTATION_NAME = "Radiology_hand_drawn_segmentations_v2.csv"
IMAGE_FOLDERS = {"DM": "Low energy images of CDD-CESM", "CESM": "Subtracted images of CDD-CESM"}
IMAGE_TYPES = ("DM", "CESM", "both")
COLUMNS = ("Patient_ID", "Image_name", "Side", "Type", "View", "Pathology Classification/ Follow up")
SHAPES = ("polygon", "ellipse", "circle", "point")
_PATHOLOGY = {"benign": "benign", "malignant": "malignant", "normal": None}


def _squash(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


def find_file(root: Path, names: Sequence[str], *, what: str) -> Path:
    """The first file under `root` whose name matches one of `names` ignoring case, spaces, '-' and '_'."""
    wanted = {_squash(n) for n in names}
    for path in sorted(root.rglob("*")):
        if path.is_file() and _squash(path.name) in wanted:
            return path
    raise InvalidInputError(root, f"no {what} ({' or '.join(names)}) was found in this folder. Give the CDD-CESM "
                            "folder that holds it.")


def find_folder(root: Path, name: str) -> Path | None:
    wanted = _squash(name)
    for path in sorted(root.rglob("*")):
        if path.is_dir() and _squash(path.name) == wanted:
            return path
    return None


def read_cdd_cesm(root: str | Path, *, image_type: str = "DM", skipped: Skipped | None = None, strict: bool = False,
                  point_radius: float = 16.0) -> list[Sample]:
    """Read CDD-CESM into samples (label, view, laterality, patient, ROI boxes; `meta["split"]` is None: use
    `grouped_split`).

    Args:
        root: the CDD-CESM folder (the files and folders may sit in sub-folders).
        image_type: "DM" (low-energy, the default), "CESM" (subtracted) or "both".
        skipped: receives every bad row (file and line) and every missing image; without it they are raised.
        strict: raise on the first bad row instead.
        point_radius: half the side of the box made from a "point" region, in pixels.
    """
    if image_type not in IMAGE_TYPES:
        raise ConfigError(f"CDD-CESM image type '{image_type}' is not one of {', '.join(IMAGE_TYPES)}.")
    root = Path(root)
    if not root.is_dir():
        raise InvalidInputError(root, "the CDD-CESM folder does not exist.")
    workbook = find_file(root, ANNOTATION_NAMES, what="annotation workbook")
    segmentation = find_file(root, (SEGMENTATION_NAME,), what="hand-drawn segmentation file")
    wanted = ("DM", "CESM") if image_type == "both" else (image_type,)
    folders = {kind: find_folder(root, IMAGE_FOLDERS[kind]) for kind in wanted}
    for kind, folder in folders.items():
        if folder is None:
            raise InvalidInputError(root, f"the folder '{IMAGE_FOLDERS[kind]}' ({kind} images) was not found here.")
    problems: list[InvalidInputError] = []
    regions = read_segmentations(segmentation, problems, point_radius=point_radius)
    samples = samples_from_rows(workbook, _workbook_rows(workbook), problems=problems,
                                make=lambda line, row: _sample(row, line, workbook, folders, regions, segmentation))
    return finish(workbook, samples, problems, skipped, strict, what="CDD-CESM")


def _workbook_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(row number as Excel shows it, {column: value}) of the annotation sheet ('all' when present, else the first)."""
    try:
        import openpyxl
    except ImportError:  # pragma: no cover - a declared dependency
        raise ConfigError("Reading CDD-CESM's .xlsx annotations needs openpyxl: pip install openpyxl") from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises zipfile, KeyError and its own errors on broken files
        raise InvalidInputError(path, f"the workbook cannot be opened ({type(exc).__name__}: {exc}). Is it an .xlsx file?") from None
    try:
        sheet = book["all"] if "all" in book.sheetnames else book.worksheets[0]
        if hasattr(sheet, "reset_dimensions"):  # read-only mode trusts the stored size, which some writers get wrong
            sheet.reset_dimensions()
        rows = sheet.iter_rows(values_only=True)
        header = [str(v).strip() if v is not None else "" for v in next(rows, ())]
        col = check_columns(path, header, COLUMNS, what="CDD-CESM's annotation workbook")
        index = {name: header.index(col[name]) for name in COLUMNS}
        out = []
        for number, values in enumerate(rows, start=2):
            if values is None or all(v is None or str(v).strip() == "" for v in values):
                continue
            out.append((number, {name: values[i] if i < len(values) else None for name, i in index.items()}))
        return out
    finally:
        book.close()


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _sample(row: dict[str, Any], line: int, workbook: Path, folders: dict[str, Path | None],
            regions: dict[str, list[tuple[Box, dict[str, Any]]]], segmentation: Path) -> Sample | None:
    kind = _text(row["Type"]).upper()
    if kind not in IMAGE_FOLDERS:
        raise ValueError(f"Type '{row['Type']}' is not DM or CESM")
    if kind not in folders:
        return None
    pathology = _text(row["Pathology Classification/ Follow up"]).lower()
    if pathology not in _PATHOLOGY:
        raise ValueError(f"pathology '{row['Pathology Classification/ Follow up']}' is not Normal, Benign or Malignant")
    label = _PATHOLOGY[pathology]
    if label is None:
        return None  # Normal: excluded by the study
    name = re.sub(r"\s+", "", _text(row["Image_name"]))
    patient = _text(row["Patient_ID"])
    if not name or not patient:
        raise ValueError("Image_name or Patient_ID is empty")
    if name.lower().endswith((".jpg", ".jpeg")):
        name = name.rsplit(".", 1)[0]
    path = folders[kind] / f"{name}.jpg"
    if not path.is_file():
        raise InvalidInputError(path, f"the image of {workbook.name} row {line} does not exist.")
    found = regions.get(name.lower(), [])
    return Sample(
        id=name, path=path, label=label, boxes=[box for box, _ in found], group=patient,
        view=normalise_view(_text(row["View"])), laterality=normalise_laterality(_text(row["Side"])),
        meta={"roi": bool(found), "split": None, "pathology": label, "image_type": kind, "line": line,
              "roi_shapes": [shape for _, shape in found]},
    )


def read_segmentations(path: Path, problems: list[InvalidInputError], *, point_radius: float = 16.0
                       ) -> dict[str, list[tuple[Box, dict[str, Any]]]]:
    """The VIA segmentation file -> {image name without suffix, lower case: [(box, shape attributes), ...]}."""
    regions: dict[str, list[tuple[Box, dict[str, Any]]]] = defaultdict(list)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        col = check_columns(path, reader.fieldnames, ("filename", "region_shape_attributes"),
                            what="a VGG Image Annotator CSV")
        for row in reader:
            line = reader.line_num
            name = re.sub(r"\s+", "", row.get(col["filename"]) or "")
            if not name:
                problems.append(InvalidInputError(path, "the filename is empty.", line=line))
                continue
            stem = name.rsplit(".", 1)[0].lower() if "." in name else name.lower()
            try:
                shape = json.loads(row.get(col["region_shape_attributes"]) or "{}")
                if not shape:
                    continue  # an image listed without a region
                box = shape_box(shape, point_radius=point_radius)
            except (ValueError, TypeError, KeyError) as exc:
                problems.append(InvalidInputError(path, f"the region of {name} is not usable: {exc}.", line=line))
                continue
            regions[stem].append((box, shape))
    return regions


def shape_box(shape: dict[str, Any], *, point_radius: float = 16.0) -> Box:
    """The bounding box of one VIA region (polygon, polyline, rect, ellipse, circle or point)."""
    kind = shape.get("name")
    if kind in ("polygon", "polyline"):
        xs, ys = [float(v) for v in shape["all_points_x"]], [float(v) for v in shape["all_points_y"]]
        if not xs or len(xs) != len(ys):
            raise ValueError("its all_points_x and all_points_y are empty or of different lengths")
        x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
    elif kind == "rect":
        x1, y1 = float(shape["x"]), float(shape["y"])
        x2, y2 = x1 + float(shape["width"]), y1 + float(shape["height"])
    elif kind == "ellipse":
        cx, cy, rx, ry = (float(shape[k]) for k in ("cx", "cy", "rx", "ry"))
        theta = float(shape.get("theta", 0.0) or 0.0)
        half_w = math.hypot(rx * math.cos(theta), ry * math.sin(theta))
        half_h = math.hypot(rx * math.sin(theta), ry * math.cos(theta))
        x1, y1, x2, y2 = cx - half_w, cy - half_h, cx + half_w, cy + half_h
    elif kind == "circle":
        cx, cy, r = (float(shape[k]) for k in ("cx", "cy", "r"))
        x1, y1, x2, y2 = cx - r, cy - r, cx + r, cy + r
    elif kind == "point":
        cx, cy = float(shape["cx"]), float(shape["cy"])
        x1, y1, x2, y2 = cx - point_radius, cy - point_radius, cx + point_radius, cy + point_radius
    else:
        raise ValueError(f"the shape '{kind}' is not one of {', '.join(SHAPES)}")
    if not (x2 > x1 and y2 > y1):
        raise ValueError("it has no extent")
    return Box(max(0.0, x1), max(0.0, y1), x2, y2, label=kind)


def grouped_split(samples: Sequence[Sample], *, test_ratio: float = 1 / 11, seed: int = 0) -> list[Sample]:
    """Set `meta["split"]` to "train"/"test" by patient (10:1 by default), seeded; a sample that already has a
    split keeps it. Returns the samples."""
    if not 0 < test_ratio < 1:
        raise ConfigError(f"test_ratio {test_ratio} must be between 0 and 1.")
    open_patients = sorted({s.group for s in samples if s.meta.get("split") is None}, key=str)
    random.Random(seed).shuffle(open_patients)
    n_test = max(1, round(len(open_patients) * test_ratio)) if len(open_patients) > 1 else 0
    test = set(open_patients[:n_test])
    for sample in samples:
        if sample.meta.get("split") is None:
            sample.meta["split"] = "test" if sample.group in test else "train"
    return list(samples)
