"""EMBED (Emory Breast Imaging Dataset): BI-RADS and density per image from the clinical and metadata tables.

Layout (columns found by name, in any order and case):

    <root>/EMBED_OpenData_clinical.csv   empi_anon, acc_anon, side (L, R, B = both, or blank = both: an
                                         assessment without a finding side), asses (A N B P S M K),
                                         tissueden (1-4 = ACR A-D; 5 = male, no density)
    <root>/EMBED_OpenData_metadata.csv   empi_anon, acc_anon, ImageLateralityFinal (L/R), ViewPosition (CC/MLO),
                                         anon_dicom_path (or png_path), FinalImageType (2D/cview, optional)

The tables are looked for in `<root>` and then in `<root>/tables` (the AWS Open Data release keeps them there), and
ids written as floats by pandas ('1234.0') match their integer spelling.

Images and findings are joined on patient (empi_anon), exam (acc_anon) and side; a finding on side B applies to both
breasts, and so does a blank side (EMBED leaves it empty, NaN in pandas, for assessments without a finding, as
most negative screening exams are). When an exam side has several findings the most severe assessment is kept
(6 > 5 > 4 > 0 > 3 > 2 > 1).
Only 2D CC and MLO images are used, as in the study, and not spot-compression or magnification views (`spot_mag` 1,
when that column is there). `asses` letters map to BI-RADS: A 0, N 1, B 2, P 3, S 4, M 5, K 6.

An image path (`png_path` when that cell names a file that exists, else `anon_dicom_path`) is used as given when it
exists, else relative to the release folder (leading '/' dropped); a path under the release's internal prefix
(`/mnt/NAS2/mammo/anon_dicom/cohort_1/...`) is found from its `cohort_<n>` part on, under `images/` (the AWS
layout) or the release folder; else `images/<file name>`. The release folder is `<root>`, or its parent when
`<root>` is the `tables` folder.
"""

from __future__ import annotations

import csv
from pathlib import Path

from keras_medimg.datasets.mammo_labels import EMBED_ASSESSMENT, _finish, parse_density
from keras_medimg.datasets.mammography import check_columns, check_optional
from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.errors import InvalidInputError

CLINICAL = "EMBED_OpenData_clinical.csv"
METADATA = "EMBED_OpenData_metadata.csv"
SEVERITY = ("1", "2", "3", "0", "4", "5", "6")  # least to most severe


def _clinical(path: Path, problems: list[InvalidInputError]) -> dict[tuple[str, str, str], dict[str, str | None]]:
    findings: dict[tuple[str, str, str], dict[str, str | None]] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        col = check_columns(path, reader.fieldnames, ("empi_anon", "acc_anon", "side", "asses"),
                            what="EMBED's clinical table")
        optional = check_optional(reader.fieldnames, ("tissueden",))
        for row in reader:
            line = reader.line_num
            letter = (row.get(col["asses"]) or "").strip().upper()
            side = (row.get(col["side"]) or "").strip().upper()
            side = "B" if side in ("", "NAN") else side  # no finding side: the exam's assessment, both breasts
            if letter not in EMBED_ASSESSMENT:
                problems.append(InvalidInputError(path, f"asses '{letter}' is not an EMBED assessment letter "
                                                        f"({' '.join(EMBED_ASSESSMENT)})", line=line))
                continue
            if side not in ("L", "R", "B"):
                problems.append(InvalidInputError(path, f"side '{side}' is not L, R or B", line=line))
                continue
            raw_density = (row.get(optional["tissueden"]) or "").strip() if "tissueden" in optional else ""
            try:
                density = None if raw_density.split(".")[0] == "5" else parse_density(raw_density)
            except ValueError as exc:
                problems.append(InvalidInputError(path, str(exc), line=line))
                continue
            patient, exam = _id(row.get(col["empi_anon"])), _id(row.get(col["acc_anon"]))
            birads = EMBED_ASSESSMENT[letter]
            for breast in ("L", "R") if side == "B" else (side,):
                key = (patient, exam, breast)
                known = findings.get(key)
                if known is None or SEVERITY.index(birads) > SEVERITY.index(known["birads"]):
                    findings[key] = {"birads": birads, "density": density or (known or {}).get("density"),
                                     "line": str(line)}
    return findings


def _id(text: str | None) -> str:
    """An id as both tables spell it: pandas writes an integer column with a blank cell as floats ('1234.0')."""
    text = (text or "").strip()
    return text[:-2] if text.endswith(".0") and text[:-2].isdigit() else text


def _candidates(base: Path, text: str) -> list[Path]:
    given = Path(text)
    found = [given, base / text.lstrip("/")]
    parts = given.parts
    cohort = next((i for i, part in enumerate(parts) if part.lower().startswith("cohort")), None)
    if cohort is not None:
        tail = Path(*parts[cohort:])
        found += [base / "images" / tail, base / tail]
    return found + [base / "images" / given.name]


def _image_path(base: Path, texts: list[str]) -> Path:
    """The first of the row's image paths (png_path, anon_dicom_path) that names a file, looked for as documented."""
    for text in texts:
        for candidate in _candidates(base, text):
            if candidate.is_file():
                return candidate
    shown = " or ".join(f"'{t}'" for t in texts) or "(no path)"
    raise ValueError(f"the image {shown} does not exist (looked as given, under {base}, from its cohort folder on "
                     f"under {base / 'images'}, and in {base / 'images'})")


def read_embed(root: str | Path, *, skipped: Skipped | None = None, strict: bool = False) -> list[Sample]:
    """Read EMBED: one sample per 2D CC/MLO image with a finding on its side; `meta` holds `birads`, `density`."""
    root = Path(root)
    tables = root if (root / CLINICAL).is_file() or not (root / "tables" / CLINICAL).is_file() else root / "tables"
    base = root.parent if root.name == "tables" else root  # image paths are relative to the release folder
    clinical, metadata = tables / CLINICAL, tables / METADATA
    for path in (clinical, metadata):
        if not path.is_file():
            raise InvalidInputError(path, f"this EMBED table is missing. Give the folder that holds {CLINICAL} and "
                                          f"{METADATA} (or their release folder, with them in tables/).")
    problems: list[InvalidInputError] = []
    findings = _clinical(clinical, problems)
    samples = []
    with open(metadata, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        col = check_columns(metadata, reader.fieldnames, ("empi_anon", "acc_anon", "ImageLateralityFinal",
                                                          "ViewPosition"), what="EMBED's metadata table")
        optional = check_optional(reader.fieldnames, ("anon_dicom_path", "png_path", "FinalImageType", "spot_mag"))
        path_cols = [optional[name] for name in ("png_path", "anon_dicom_path") if name in optional]
        if not path_cols:
            raise InvalidInputError(metadata, "needs an anon_dicom_path or png_path column with the image files.")
        for row in reader:
            line = reader.line_num
            kind = (row.get(optional.get("FinalImageType", ""), "") or "2D").strip().upper()
            view = (row.get(col["ViewPosition"]) or "").strip().upper()
            if kind != "2D" or view not in ("CC", "MLO"):
                continue  # the study uses 2D CC and MLO images only
            spot_mag = (row.get(optional["spot_mag"]) or "").strip() if "spot_mag" in optional else ""
            if spot_mag not in ("", "0", "0.0", "nan", "NaN"):
                continue  # a spot-compression or magnification view, not a whole-breast CC/MLO image
            patient, exam = _id(row.get(col["empi_anon"])), _id(row.get(col["acc_anon"]))
            side = (row.get(col["ImageLateralityFinal"]) or "").strip().upper()[:1]
            finding = findings.get((patient, exam, side))
            if finding is None:
                continue  # no assessment for this breast in this exam
            try:
                image = _image_path(base, [t for t in ((row.get(c) or "").strip() for c in path_cols) if t])
            except ValueError as exc:
                problems.append(InvalidInputError(metadata, str(exc), line=line))
                continue
            samples.append(Sample(id=f"{exam}/{image.stem}", path=image, group=patient, view=view, laterality=side,
                                  meta={"birads": finding["birads"], "density": finding["density"],
                                        "file": str(metadata), "line": line, "exam": exam}))
    return _finish(metadata, samples, problems, skipped, strict, "EMBED")
