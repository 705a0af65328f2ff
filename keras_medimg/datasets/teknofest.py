"""TEKNOFEST 2023 mammography (as released by the MAM-CLIP authors): BI-RADS and density per image.

Layout:

    <root>/all_pngs/<patient_id>/{LCC,LMLO,RCC,RMLO}.png
    <root>/metadata_image_level.json    a list of records, one per image, as the authors' data card gives them:
        {"patient_id": "...", "image_filename": "LCC.png", "relative_path": "all_pngs/<id>/LCC.png",
         "view": "CC", "laterality": "left", "birads": 4, "birads_label": "BI-RADS 4", "breast_composition": "C",
         "findings_locations": [...], "patient_birads": 4}
      Also read: "image" / "file" / "filename" for the file name, or only "view" + "laterality" ("L"/"R" too);
      "BI-RADS 4" for birads; 1..4 for the density; a mapping {patient_id: [records]} instead of a list.

Some patients have three views (one missing in the source): only the images the metadata lists are read.

The patient id is the group of patient-grouped folds. A record whose image is missing or whose label cannot be
read is reported with the file and its record number (skipped, or raised with `strict`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from keras_medimg.datasets.mammo_labels import _finish, canonical_labels
from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.errors import InvalidInputError

METADATA = "metadata_image_level.json"
IMAGES = "all_pngs"
VIEW_NAMES = ("LCC", "LMLO", "RCC", "RMLO")


def _records(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # a BOM is not part of the JSON
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(path, f"is not valid JSON ({exc}). Pass the TEKNOFEST release's {METADATA}.") from None
    if isinstance(data, dict):
        return [{"patient_id": pid, **r} for pid, rows in data.items() for r in (rows if isinstance(rows, list) else [rows])]
    if not isinstance(data, list):
        raise InvalidInputError(path, "must hold a list of image records (or a mapping patient id -> records).")
    return data


def _image_name(record: dict[str, Any]) -> str:
    image = str(record.get("image_filename") or record.get("image") or record.get("file") or record.get("filename")
                or record.get("relative_path") or "").strip()
    if image:
        return Path(image).name
    side = str(record.get("laterality", "")).strip().upper()[:1]
    view = str(record.get("view", "")).strip().upper()
    name = f"{side}{view}"
    if name not in VIEW_NAMES:
        raise ValueError(f"no image name and no usable view/laterality ({view!r}, {side!r})")
    return f"{name}.png"


def read_teknofest(root: str | Path, *, skipped: Skipped | None = None, strict: bool = False) -> list[Sample]:
    """Read the TEKNOFEST release: one sample per image, `meta` holding canonical `birads` and `density`.

    Raises:
        InvalidInputError: no metadata file, or (with `strict` / without `skipped`) bad records, named by number.
    """
    root = Path(root)
    path = root / METADATA
    if not path.is_file():
        raise InvalidInputError(path, f"the TEKNOFEST metadata is missing. Give the folder that holds {METADATA} and "
                                      f"{IMAGES}/<patient_id>/{{LCC,LMLO,RCC,RMLO}}.png.")
    samples, problems = [], []
    for number, record in enumerate(_records(path), start=1):
        try:
            if not isinstance(record, dict):
                raise ValueError("the record is not a JSON object")
            patient = str(record.get("patient_id") or record.get("patient") or "").strip()
            if not patient:
                raise ValueError("patient_id is empty")
            name = _image_name(record)
            birads = record.get("birads")
            labels = canonical_labels(birads if birads not in (None, "") else record.get("birads_label", ""),
                                      record.get("breast_composition", record.get("density", "")))
            image = root / IMAGES / patient / name
            if not image.is_file():
                raise ValueError(f"the image {IMAGES}/{patient}/{name} does not exist")
        except ValueError as exc:
            problems.append(InvalidInputError(path, f"record {number}: {exc}", line=number))
            continue
        stem = Path(name).stem.upper()
        samples.append(Sample(id=f"{patient}/{stem}", path=image, group=patient, view=stem[1:], laterality=stem[0],
                              meta={**labels, "file": str(path), "line": number}))
    return _finish(path, samples, problems, skipped, strict, "TEKNOFEST metadata")
