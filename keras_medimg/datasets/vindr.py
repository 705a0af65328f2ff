"""VinDr-Mammo (PhysioNet release 1.0): breast-level BI-RADS labels, finding boxes and the official split.

Layout (columns are found by name, in any order and case):

    <root>/breast-level_annotations.csv   study_id, series_id, image_id, laterality, view_position, height, width,
                                          breast_birads ("BI-RADS 4"), breast_density, split ("training"/"test")
    <root>/finding_annotations.csv        the same keys + finding_categories (a Python-list string such as
                                          "['Mass', 'Suspicious Calcification']"), finding_birads, xmin, ymin,
                                          xmax, ymax (original pixels; empty for No Finding)
    <root>/images/<study_id>/<image_id>.dicom

Labels follow the ROI-aware study: breast BI-RADS 2-3 benign, 4-5 malignant, BI-RADS 1 excluded. An image has an
ROI when `finding_annotations.csv` gives it at least one box. VinDr has one study per patient, so `study_id` is the
patient group. A row whose image file is missing, or whose values cannot be parsed, is reported with its file and
line (skipped, or raised with `strict`).
"""

from __future__ import annotations

import ast
import csv
import math
from collections import defaultdict
from pathlib import Path

from keras_medimg.datasets.mammography import (
    birads_label,
    check_columns,
    check_optional,
    finish,
    normalise_laterality,
    normalise_view,
    parse_birads,
    samples_from_rows,
)
from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.errors import InvalidInputError
from keras_medimg.io.annotations import Box

BREAST_FILE = "breast-level_annotations.csv"
FINDING_FILE = "finding_annotations.csv"
IMAGE_SUFFIX = ".dicom"
BREAST_COLUMNS = ("study_id", "image_id", "laterality", "view_position", "breast_birads", "split")
FINDING_COLUMNS = ("study_id", "image_id", "finding_categories", "xmin", "ymin", "xmax", "ymax")
_SPLITS = {"training": "train", "train": "train", "test": "test", "testing": "test"}


def read_vindr(root: str | Path, *, skipped: Skipped | None = None, strict: bool = False,
               keep_excluded: bool = False) -> list[Sample]:
    """Read VinDr-Mammo into samples (label, view, laterality, patient, ROI boxes, official split).

    Args:
        root: the folder holding the two CSV files and `images/`.
        skipped: receives every bad row (file and line) and every missing image; without it they are raised.
        strict: raise on the first bad row instead.
        keep_excluded: also return BI-RADS 1 images (label None), e.g. for a detector's negatives.

    Returns:
        One sample per image, in the order of `breast-level_annotations.csv`; `meta` holds `roi`, `split`,
        `birads`, `density`, `categories` and `line`.
    """
    root = Path(root)
    breast_csv, finding_csv = root / BREAST_FILE, root / FINDING_FILE
    for path in (breast_csv, finding_csv):
        if not path.is_file():
            raise InvalidInputError(path, "this VinDr-Mammo file is missing. Give the folder that holds "
                                    f"{BREAST_FILE}, {FINDING_FILE} and images/<study_id>/<image_id>.dicom.")
    problems: list[InvalidInputError] = []
    findings = _read_findings(finding_csv, problems)
    with open(breast_csv, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        col = check_columns(breast_csv, reader.fieldnames, BREAST_COLUMNS, what="VinDr's breast-level annotations")
        optional = check_optional(reader.fieldnames, ("breast_density",))
        samples = samples_from_rows(breast_csv, ((reader.line_num, row) for row in reader), problems=problems,
                                    make=lambda line, row: _breast_sample(root, row, col, optional, line, findings,
                                                                         keep_excluded),
                                    keep=lambda sample: sample.label is not None or keep_excluded)
    return finish(breast_csv, samples, problems, skipped, strict, what="VinDr-Mammo")


def parse_categories(text: str) -> list[str]:
    """"['Mass', 'Suspicious Calcification']" -> ['Mass', 'Suspicious Calcification'] (literal_eval, never eval)."""
    value = (text or "").strip()
    if not value:
        return []
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise ValueError(f"finding_categories '{value}' is not a Python list string such as \"['Mass']\"") from None
    if isinstance(parsed, str):
        parsed = [parsed]
    if not isinstance(parsed, (list, tuple)) or not all(isinstance(v, str) for v in parsed):
        raise ValueError(f"finding_categories '{value}' is not a list of category names")
    return [v.strip() for v in parsed]


def _number(text: str | None) -> float | None:
    value = (text or "").strip()
    if value == "" or value.lower() == "nan":
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _read_findings(path: Path, problems: list[InvalidInputError]) -> dict[str, list[Box]]:
    """image_id -> its finding boxes (images listed with No Finding get an empty list)."""
    boxes: dict[str, list[Box]] = defaultdict(list)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        col = check_columns(path, reader.fieldnames, FINDING_COLUMNS, what="VinDr's finding annotations")
        for row in reader:
            line = reader.line_num
            image_id = (row.get(col["image_id"]) or "").strip()
            try:
                categories = parse_categories(row.get(col["finding_categories"], ""))
                coords = [_number(row.get(col[k])) for k in ("xmin", "ymin", "xmax", "ymax")]
            except ValueError as exc:
                problems.append(InvalidInputError(path, f"{exc}.", line=line))
                continue
            boxes[image_id]  # an image mentioned without a box still has no ROI
            if all(c is None for c in coords):
                if categories and categories != ["No Finding"]:
                    problems.append(InvalidInputError(path, f"the finding {categories} of image {image_id} has no box "
                                                      "(xmin..ymax are empty); add the box or remove the row.", line=line))
                continue
            if any(c is None for c in coords) or not (coords[0] < coords[2] and coords[1] < coords[3]):
                problems.append(InvalidInputError(path, f"the box {coords} of image {image_id} is not a valid "
                                                  "xmin < xmax, ymin < ymax box.", line=line))
                continue
            label = ", ".join(c for c in categories if c != "No Finding") or "finding"
            boxes[image_id].append(Box(*coords, label=label))
    return boxes


def _breast_sample(root: Path, row: dict[str, str], col: dict[str, str], optional: dict[str, str], line: int,
                   findings: dict[str, list[Box]], keep_excluded: bool = False) -> Sample:
    study, image_id = (row.get(col["study_id"]) or "").strip(), (row.get(col["image_id"]) or "").strip()
    if not study or not image_id:
        raise ValueError("study_id or image_id is empty")
    birads = parse_birads(row.get(col["breast_birads"], ""))
    if birads is None:
        raise ValueError("breast_birads is empty")
    split_text = (row.get(col["split"]) or "").strip().lower()
    if split_text not in _SPLITS:
        raise ValueError(f"split '{split_text}' is not 'training' or 'test'")
    path = root / "images" / study / f"{image_id}{IMAGE_SUFFIX}"
    # an image the study leaves out (BI-RADS 1) need not be there: many download only the images they use
    if (keep_excluded or birads_label(birads) is not None) and not path.is_file():
        raise InvalidInputError(path, f"the image of {BREAST_FILE} line {line} does not exist "
                                f"(expected images/<study_id>/<image_id>{IMAGE_SUFFIX}).", line=None)
    boxes = findings.get(image_id, [])
    return Sample(
        id=image_id, path=path, label=birads_label(birads), boxes=list(boxes), group=study,
        view=normalise_view(row.get(col["view_position"], "")),
        laterality=normalise_laterality(row.get(col["laterality"], "")),
        meta={"roi": bool(boxes), "split": _SPLITS[split_text], "birads": birads, "line": line,
              "density": (row.get(optional["breast_density"]) or "").strip() if "breast_density" in optional else "",
              "categories": sorted({b.label for b in boxes})},
    )
