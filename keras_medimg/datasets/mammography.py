"""What every mammography reader shares, and the plain CSV manifest for any other mammography dataset.

A mammogram `Sample` carries `label` ("benign" | "malignant"), `view` ("CC" | "MLO"), `laterality` ("L" | "R"),
`group` (the patient), `boxes` (ROI boxes in original pixels, when known) and in `meta`: `roi` (bool: the image has
a region-of-interest annotation), `split` ("train" | "test" | None), `line` (the row it came from) and what else the
reader knows (`birads`, `pathology`, `image_type`, `roi_shapes`).

The manifest (`read_manifest`) is a CSV with the columns

    path, label, view, laterality, roi, patient     (+ optional: id, split)

`path` relative to the CSV (or absolute; '\\' separators read as '/'); `label` benign | malignant | 0 | 1, or BI-RADS
('BI-RADS 4', or bare numbers when the column holds any of 2-6: then 2-3 benign, 4-5 malignant, 0/1/6 excluded);
`view` CC | MLO (ML and XCCL count as MLO and CC; "RCC", "LMLO" ... are accepted when `laterality` is empty);
`laterality` L | R; `roi` 1/0, true/false, yes/no (an empty cell is an error: the ROI group must be known);
`patient` any id (splits keep a patient on one side); `split` train | test; `id` (default: the path without its
suffix, root and '..' parts).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from keras_medimg.datasets import mammo_labels
from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.datasets.sources import image_id_of
from keras_medimg.errors import InvalidInputError, problems_error

CLASSES = ("benign", "malignant")  # index 1 = positive
VIEWS = ("CC", "MLO")
LATERALITIES = ("L", "R")
STANDARD_VIEWS = ("RCC", "LCC", "RMLO", "LMLO")  # the study's four views
MANIFEST_COLUMNS = ("path", "label", "view", "laterality", "roi", "patient")
_VIEW_ALIASES = {"CC": "CC", "XCCL": "CC", "XCCM": "CC", "FB": "CC", "MLO": "MLO", "ML": "MLO", "LM": "MLO", "LMO": "MLO"}
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


def birads_label(birads: int) -> str | None:
    """The study's label of a BI-RADS category: 2-3 benign, 4-5 malignant, 1 (and 0, 6) None (excluded)."""
    return {2: "benign", 3: "benign", 4: "malignant", 5: "malignant"}.get(birads)


def parse_birads(text: str) -> int | None:
    """`mammo_labels.parse_birads` as a number: 'BI-RADS 4', 'BIRADS 4a', '4', 4.0 -> 4; empty -> None;
    anything else raises ValueError."""
    category = mammo_labels.parse_birads(text)
    return None if category is None else int(category)


def normalise_view(text: str) -> str:
    """'CC', 'cc', 'XCCL' -> 'CC'; 'MLO', 'ML' -> 'MLO'; anything else raises ValueError."""
    view = _VIEW_ALIASES.get(str(text).strip().upper())
    if view is None:
        raise ValueError(f"'{text}' is not a mammography view (CC or MLO)")
    return view


def normalise_laterality(text: str) -> str:
    side = str(text).strip().upper()[:1]
    if side not in LATERALITIES:
        raise ValueError(f"'{text}' is not a laterality (L or R)")
    return side


def parse_flag(text: Any) -> bool:
    """1/0, true/false, yes/no (1.0/0.0 as pandas writes them) -> bool; an empty cell is unknown: ValueError."""
    value = str(text).strip().lower()
    value = value[:-2] if value in ("1.0", "0.0") else value
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    if value in ("", "nan", "none"):
        raise ValueError("the value is empty; give 1 or 0 (an unknown ROI cannot be put in a ROI group)")
    raise ValueError(f"'{text}' is not a yes/no value (1/0, true/false, yes/no)")


def standard_view(sample: Sample) -> str:
    """The study's view group of a sample: laterality + view, e.g. 'RCC' (None parts give '?')."""
    return f"{sample.laterality or '?'}{sample.view or '?'}"


def has_roi(sample: Sample) -> bool:
    return bool(sample.meta.get("roi"))


def label_of(sample: Sample) -> int:
    """1 for malignant, 0 for benign."""
    return CLASSES.index(sample.label)


def composition(samples: Iterable[Sample]) -> dict[str, dict[str, int]]:
    """Table 2 of the study: images per label with and without an ROI."""
    table = {label: {"with_roi": 0, "without_roi": 0} for label in CLASSES}
    for sample in samples:
        table[sample.label]["with_roi" if has_roi(sample) else "without_roi"] += 1
    return table


def column_key(name: str | None) -> str:
    """A column name as matched: without case, spaces, '_', '-', '/' or '#' (VGG Image Annotator writes '#filename')."""
    return re.sub(r"[\s_\-/#]+", "", name or "").lower()


def check_columns(path: Path, fieldnames: Sequence[str] | None, required: Sequence[str], *, what: str) -> dict[str, str]:
    """Map each required column to its name in the file, matched by `column_key`.

    Raises InvalidInputError naming the file, the missing columns and the columns it has.
    """
    key = column_key
    present = {key(name): name for name in fieldnames or [] if name}
    missing = [name for name in required if key(name) not in present]
    if missing:
        raise InvalidInputError(path, f"{what} needs the column(s) {', '.join(missing)}; its columns are "
                                f"{', '.join(n for n in fieldnames or [] if n) or 'none'}. Is this the right file?")
    return {name: present[key(name)] for name in required}


def finish(path: Path, samples: list[Sample], problems: list[InvalidInputError], skipped: Skipped | None,
           strict: bool, *, what: str) -> list[Sample]:
    """Report a reader's bad rows: into `skipped` (each with file and line), or all at once as an error with
    `strict` or without a `skipped` to put them in; no usable row at all is an error too."""
    if problems and (strict or skipped is None):
        raise problems_error(path, problems, what=f"Fix or remove these {what} rows, or leave strict mode off to skip "
                             "them (they are then listed in skipped.csv).")
    for problem in problems:
        if skipped is not None:
            skipped.add_error(problem)
    if not samples:
        raise InvalidInputError(path, f"no usable {what} rows were found ({len(problems)} bad). Check the file and the "
                                "image folders beside it.")
    return samples


def read_manifest(csv_path: str | Path, *, skipped: Skipped | None = None, strict: bool = False) -> list[Sample]:
    """Read a mammography manifest CSV (see the module docstring) into samples.

    Bad rows (unknown label/view/laterality/roi, missing image) are listed in `skipped` with their line, or raised
    together with `strict` (or when no `skipped` is given).
    """
    path = Path(csv_path)
    if not path.is_file():
        raise InvalidInputError(path, "the manifest CSV does not exist. Give a CSV with the columns "
                                + ", ".join(MANIFEST_COLUMNS) + ".")
    samples, problems, seen = [], [], set()
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = check_columns(path, reader.fieldnames, MANIFEST_COLUMNS, what="a mammography manifest")
        optional = check_optional(reader.fieldnames, ("id", "split"))
        rows = [(reader.line_num, row) for row in reader]
    # A label column of bare numbers is BI-RADS when any of them is 2-6, else 0/1 benign/malignant.
    numbers_are_birads = any(_number(row.get(columns["label"])) in (2, 3, 4, 5, 6) for _, row in rows)
    for line, row in rows:
        try:
            sample = _manifest_sample(path, row, columns, optional, line, numbers_are_birads)
        except (ValueError, InvalidInputError) as exc:
            problems.append(exc if isinstance(exc, InvalidInputError) else InvalidInputError(path, f"{exc}.", line=line))
            continue
        if sample.id in seen:
            problems.append(InvalidInputError(path, f"the id '{sample.id}' is used by an earlier row too; give every "
                                              "image its own id (column 'id').", line=line))
            continue
        seen.add(sample.id)
        samples.append(sample)
    return finish(path, samples, problems, skipped, strict, what="manifest")


def check_optional(fieldnames: Sequence[str] | None, names: Sequence[str]) -> dict[str, str]:
    """The optional columns present, matched like `check_columns`."""
    key = column_key
    present = {key(n): n for n in fieldnames or [] if n}
    return {name: present[key(name)] for name in names if key(name) in present}


def _number(text: str | None) -> int | None:
    """A bare whole number ('4', '4.0'), else None."""
    match = re.fullmatch(r"\s*(\d+)(?:\.0*)?\s*", text or "")
    return int(match.group(1)) if match else None


def _default_id(given: str) -> str:
    """The id of a manifest row without one: its path without the image suffix (`sources.image_id_of`), the root
    and '..' parts, so that `/data/img/b0.png` and `../img/b0.png` give ids that stay inside an output folder."""
    path = Path(given)
    return image_id_of("/".join(p for p in path.parts if p not in ("..", ".", path.anchor)))


def _manifest_sample(path: Path, row: Mapping[str, str], columns: Mapping[str, str], optional: Mapping[str, str],
                     line: int, numbers_are_birads: bool = False) -> Sample:
    given = (row.get(columns["path"]) or "").strip().replace("\\", "/")  # a manifest written on Windows
    if not given:
        raise ValueError("the path is empty")
    image = Path(given) if Path(given).is_absolute() else path.parent / given
    if not image.is_file():
        raise InvalidInputError(path, f"the image {given} does not exist (paths are relative to the CSV).", line=line)
    label = parse_label(row.get(columns["label"], ""), numbers_are_birads=numbers_are_birads)
    if label is None:
        raise ValueError(f"label '{row.get(columns['label'])}' is excluded by the study (BI-RADS 1 or normal); "
                         "remove the row or give benign/malignant")
    view_text, side_text = (row.get(columns["view"]) or "").strip(), (row.get(columns["laterality"]) or "").strip()
    if not side_text and view_text[:1].upper() in LATERALITIES and len(view_text) > 2:
        side_text, view_text = view_text[0], view_text[1:]
    patient = (row.get(columns["patient"]) or "").strip()
    if not patient:
        raise ValueError("the patient is empty; give every image its patient id so splits keep patients together")
    split = (row.get(optional["split"]) or "").strip().lower() if "split" in optional else ""
    if split not in ("", "train", "training", "test", "testing"):
        raise ValueError(f"split '{split}' is not train or test")
    image_id = (row.get(optional["id"]) or "").strip() if "id" in optional else ""
    return Sample(
        id=image_id or _default_id(given),
        path=image,
        label=label,
        group=patient,
        view=normalise_view(view_text),
        laterality=normalise_laterality(side_text),
        meta={"roi": parse_flag(row.get(columns["roi"], "")), "split": {"training": "train", "testing": "test"}.get(split, split) or None,
              "line": line, "source": str(path)},
    )


def parse_label(text: str, *, numbers_are_birads: bool = False) -> str | None:
    """benign/malignant, 0/1, or a BI-RADS category (2-3 benign, 4-5 malignant); None = excluded (BI-RADS 0, 1, 6,
    normal). A bare number (also '1.0') is 0 benign / 1 malignant, or with `numbers_are_birads` a BI-RADS category
    (a column that holds 2-6 too); 'BI-RADS 1' is always BI-RADS."""
    value = str(text).strip().lower()
    number = _number(value)
    if number is not None and not numbers_are_birads and number in (0, 1):
        return ("benign", "malignant")[number]
    if value in ("benign", "malignant"):
        return value
    if value in ("normal",):
        return None
    try:
        birads = parse_birads(value)
    except ValueError:
        raise ValueError(f"label '{text}' is not benign, malignant, 0, 1 or a BI-RADS category") from None
    return None if birads is None else birads_label(birads)


def read_view_csv(path: str | Path) -> dict[str, dict[str, Any]]:
    """A prediction-time CSV: `path` or `id` naming each image, plus any of view, laterality, roi -> {key: values}.

    Keys are the path as written, the path resolved against the CSV's folder, and the id, so an image is found by
    any of them; bad values are reported together, by line."""
    path = Path(path)
    out: dict[str, dict[str, Any]] = {}
    problems = []
    parsers = {"view": normalise_view, "laterality": normalise_laterality, "roi": parse_flag}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = check_optional(reader.fieldnames, ("path", "id", *parsers))
        if "path" not in cols and "id" not in cols:
            raise InvalidInputError(path, "the CSV needs a 'path' or 'id' column naming each image, plus any of "
                                    "view, laterality, roi.")
        for row in reader:
            values: dict[str, Any] = {}
            try:
                for key, parse in parsers.items():
                    if (text := (row.get(cols.get(key, "")) or "").strip()):
                        values[key] = parse(text)
            except ValueError as exc:
                problems.append((reader.line_num, f"{exc}"))
                continue
            for key in ("path", "id"):
                if (text := (row.get(cols.get(key, "")) or "").strip()):
                    out[text] = values
                    if key == "path":
                        out[str((path.parent / text).resolve())] = values
    if problems:
        raise problems_error(path, problems, what="Fix these rows of the CSV.")
    return out


def describe_views(samples: Iterable[Sample], given: Mapping[str, Mapping[str, Any]], skipped: Skipped) -> None:
    """Set each sample's view and laterality from `given` (as `read_view_csv` returns, looked up by resolved path,
    id or file name), else from its DICOM header (ViewPosition, ImageLaterality; no patient data is read out), and
    `meta["roi"]` where `given` has it. A header view of another kind (e.g. "LM") leaves the view unknown; an
    unreadable header is named in `skipped`."""
    from keras_medimg.io.dicom import is_dicom, read_dicom_meta

    for sample in samples:
        path = Path(sample.path)
        row = given.get(str(path.resolve())) or given.get(sample.id) or given.get(path.name) or {}
        sample.view, sample.laterality = row.get("view"), row.get("laterality")
        if (sample.view is None or sample.laterality is None) and is_dicom(sample.path):
            try:
                meta = read_dicom_meta(sample.path)
            except InvalidInputError as exc:
                skipped.add_error(exc)
                continue
            try:
                sample.view = sample.view or (normalise_view(meta.view_position) if meta.view_position else None)
                sample.laterality = sample.laterality or (normalise_laterality(meta.image_laterality)
                                                          if meta.image_laterality else None)
            except ValueError:
                pass  # a view of another kind: left unknown, so the caller routes the image without it
        if "roi" in row:
            sample.meta["roi"] = row["roi"]


READERS = ("vindr", "cddcesm", "csv")


def read_dataset(fmt: str, root: str | Path, *, skipped: Skipped | None = None, strict: bool = False,
                 image_type: str = "DM", point_radius: float = 16.0) -> list[Sample]:
    """Every labelled image of a mammography dataset by format: "vindr" (`vindr.read_vindr`), "cddcesm"
    (`cdd_cesm.read_cdd_cesm`, with `image_type` and `point_radius`) or "csv" (`read_manifest`)."""
    if fmt == "vindr":
        from keras_medimg.datasets.vindr import read_vindr

        return read_vindr(root, skipped=skipped, strict=strict)
    if fmt == "cddcesm":
        from keras_medimg.datasets.cdd_cesm import read_cdd_cesm

        return read_cdd_cesm(root, image_type=image_type, skipped=skipped, strict=strict, point_radius=point_radius)
    if fmt == "csv":
        return read_manifest(root, skipped=skipped, strict=strict)
    from keras_medimg.errors import ConfigError

    raise ConfigError(f"data.format '{fmt}' is not one of {', '.join(READERS)}.")


def samples_from_rows(path: Path, rows: Iterable[tuple[int, Mapping[str, Any]]],
                      make: Callable[[int, Mapping[str, Any]], Sample | None], problems: list[InvalidInputError],
                      keep: Callable[[Sample], bool] = lambda sample: True) -> list[Sample]:
    """`make(line, row)` for every (line, row) of a reader's table; a `ValueError` becomes a problem naming `path`
    and the line, an `InvalidInputError` (e.g. a missing image) is collected as it is; samples that are None or
    fail `keep` are left out. Report the problems with `finish`."""
    samples = []
    for line, row in rows:
        try:
            sample = make(line, row)
        except ValueError as exc:
            problems.append(InvalidInputError(path, f"{exc}.", line=line))
            continue
        except InvalidInputError as exc:
            problems.append(exc)
            continue
        if sample is not None and keep(sample):
            samples.append(sample)
    return samples


def split_of(samples: Iterable[Sample], split: str) -> list[Sample]:
    """The samples whose `meta["split"]` is `split` ("train" | "test")."""
    return [s for s in samples if s.meta.get("split") == split]


def sample_row(sample: Sample) -> dict[str, Any]:
    """A sample's identity columns for an output CSV: id, view, laterality, roi (0/1), label (no patient data)."""
    return {"id": sample.id, "view": sample.view, "laterality": sample.laterality, "roi": int(has_roi(sample)),
            "label": sample.label}
