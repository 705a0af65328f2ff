"""Reader for the ImageCLEFmedical caption / ROCOv2 concept-detection layout.

    <root>/
        cui_mapping.csv                  CUI,Canonical name
        train_concepts.csv               ID,CUIs      (CUIs joined by ';')
        train_concepts_manual.csv        ID,CUIs      (manually validated modality / body-region concepts; optional)
        train/<ID>.jpg
        valid_concepts.csv, valid_concepts_manual.csv, valid/<ID>.jpg
        test/<ID>.jpg                    (the challenge gives no test concepts)

ImageCLEFmedical 2022 and 2023 wrote the same files tab-separated, with the header `ID<tab>cuis`; the readers
take the delimiter (comma, tab or the `|` the 2023 evaluator also accepts) from each file's header line and
match column names whatever their case.

Each image becomes a `Sample` whose `labels` are its CUIs (`meta["manual"]` holds the manual ones). Readers
check everything that can be checked without decoding pixels (columns, duplicate IDs, image presence, CUIs
missing from the mapping, an empty split) and report every problem with its file and line in one error.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.datasets.sources import find_images, list_images  # noqa: F401  (list_images: predict sources)
from keras_medimg.errors import InvalidInputError, problems_error

CONCEPT_COLUMNS = ("ID", "CUIs")
MAPPING_COLUMNS = ("CUI", "Canonical name")
#: The delimiters a concepts or mapping file may use, named as messages name them; the header line tells which.
DELIMITERS = {",": "','", "\t": "a tab", "|": "'|'"}
SPLITS = ("train", "valid", "test")

Problem = tuple[int | None, str]


class ConceptRow(NamedTuple):
    """One row of a concepts CSV: its 1-based line, the image ID and its CUIs (stripped, upper-cased)."""

    line: int
    id: str
    cuis: tuple[str, ...]


def parse_cuis(text: str) -> tuple[str, ...]:
    """Split a `;`-separated CUI field into stripped, upper-cased CUIs, dropping empty entries.

    Args:
        text: the CUI field of one row, e.g. `"C0040405; c0817096"`.

    Returns:
        The CUIs in their order in the field, duplicates kept (callers decide about them).
    """
    return tuple(cui for cui in (part.strip().upper() for part in text.split(";")) if cui)


def header_delimiter(header: str) -> str:
    """The delimiter of a concepts or mapping file from its header line: a tab (ImageCLEFmedical 2022/2023,
    `ID<tab>cuis`), else `|` (accepted by the 2023 evaluator), else a comma (ROCOv2 and 2024, `ID,CUIs`)."""
    return "\t" if "\t" in header else "|" if "|" in header and "," not in header else ","


def csv_rows(path: str | Path, *, delimiter: str = ",") -> list[tuple[int, list[str]]]:
    """The rows of a CSV file with their 1-based line numbers.

    Args:
        path: the CSV file (UTF-8, an optional byte-order mark is ignored).
        delimiter: the field delimiter (see `header_delimiter` for files that may use another).

    Raises:
        InvalidInputError: the file is missing or is not readable UTF-8 CSV.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(path, "The file does not exist. Check the path and the dataset layout.")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            return [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInputError(path, f"The file is not a readable UTF-8 CSV file ({exc}).") from None


def delimiter_of(path: Path) -> str:
    """The delimiter of a file by its header line (see `header_delimiter`)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return header_delimiter(fh.readline())
    except (OSError, UnicodeDecodeError):
        return ","  # csv_rows names the problem


def _check_header(path: Path, rows: list[tuple[int, list[str]]], columns: Sequence[str], delimiter: str = ",") -> None:
    if not rows:
        raise InvalidInputError(path, f"The file is empty; it needs the header {','.join(columns)} and one row per entry.")
    header = [name.strip() for name in rows[0][1]]
    lowered = [name.lower() for name in header]  # 2022/2023 write `cuis`, ROCOv2 `CUIs`
    missing = [name for name in columns if name.lower() not in lowered]
    if missing or lowered[: len(columns)] != [name.lower() for name in columns]:
        read_as = "" if delimiter == "," else f" (read as separated by {DELIMITERS[delimiter]}, as its first line is)"
        raise InvalidInputError(
            path,
            f"The header must start with the columns {','.join(columns)}, but it reads {','.join(header) or '(nothing)'}"
            f"{read_as}; missing: {', '.join(missing) or 'none (wrong order)'}. Fix the first line of the file.",
            line=rows[0][0],
        )


def read_cui_mapping(path: str | Path) -> dict[str, str]:
    """Read `cui_mapping.csv` (`CUI,Canonical name`, or tab-separated) into CUI -> canonical name.

    Args:
        path: the mapping file; its delimiter is taken from its header line, its column names in any case.

    Raises:
        InvalidInputError: a missing column, a row without a CUI or name, or a CUI given twice.
    """
    path = Path(path)
    delimiter = delimiter_of(path)
    rows = csv_rows(path, delimiter=delimiter)
    _check_header(path, rows, MAPPING_COLUMNS, delimiter)
    mapping: dict[str, str] = {}
    problems: list[Problem] = []
    for line, row in rows[1:]:
        cui = row[0].strip().upper() if row else ""
        name = row[1].strip() if len(row) > 1 else ""
        if not cui or not name:
            problems.append((line, "each row needs a CUI and its canonical name"))
        elif cui in mapping:
            problems.append((line, f"CUI {cui} is given twice"))
        else:
            mapping[cui] = name
    if problems:
        raise problems_error(path, problems, f"Fix the mapping file; each row must read CUI{_shown(delimiter)}Canonical name.")
    return mapping


def read_concepts_csv(path: str | Path, *, mapping: dict[str, str] | None = None) -> list[ConceptRow]:
    """Read and check one concepts CSV (`ID,CUIs`; or `ID<tab>cuis`, the 2022/2023 format).

    Args:
        path: `{split}_concepts.csv` or `{split}_concepts_manual.csv`; its delimiter is taken from its header
            line, its column names in any case.
        mapping: CUI -> canonical name; when given, every CUI must be in it.

    Raises:
        InvalidInputError: a missing column, a row without an ID, an ID given twice, a CUI repeated in a row, a
            CUI missing from the mapping, or no rows at all; all of them listed in one error.
    """
    path = Path(path)
    delimiter = delimiter_of(path)
    rows = csv_rows(path, delimiter=delimiter)
    _check_header(path, rows, CONCEPT_COLUMNS, delimiter)
    records: list[ConceptRow] = []
    seen: set[str] = set()
    problems: list[Problem] = []
    for line, row in rows[1:]:
        image_id = row[0].strip() if row else ""
        cuis = parse_cuis(row[1]) if len(row) > 1 else ()
        if not image_id:
            problems.append((line, "the row has no image ID"))
            continue
        if len(row) > 2:
            problems.append((line, f"the row has {len(row)} fields; join the CUIs with ';', not {DELIMITERS[delimiter]}"))
            continue
        if image_id in seen:
            problems.append((line, f"image ID '{image_id}' is given twice"))
            continue
        seen.add(image_id)
        repeated = sorted({cui for cui in cuis if cuis.count(cui) > 1})
        if repeated:
            problems.append((line, f"image '{image_id}' repeats {', '.join(repeated)}"))
        unknown = [cui for cui in cuis if mapping is not None and cui not in mapping]
        if unknown:
            problems.append((line, f"{', '.join(unknown)} of image '{image_id}' is not in cui_mapping.csv"))
        records.append(ConceptRow(line, image_id, cuis))
    if problems:
        raise problems_error(path, problems, f"Fix these rows; each must read ID{_shown(delimiter)}CUI;CUI;... with CUIs listed in cui_mapping.csv.")
    if not records:
        raise InvalidInputError(path, "The file lists no images. Give a split that holds at least one image.")
    return records


def _shown(delimiter: str) -> str:
    return "<tab>" if delimiter == "\t" else delimiter


def concepts_path(root: str | Path, split: str, *, manual: bool = False) -> Path:
    """The concepts CSV of a split: `<root>/{split}_concepts.csv` or `{split}_concepts_manual.csv`."""
    return Path(root) / f"{split}_concepts{'_manual' if manual else ''}.csv"


def read_imageclef(root: str | Path, split: str = "train", *, check_images: bool = True) -> list[Sample]:
    """Read one split of an ImageCLEFmedical / ROCOv2 concept-detection folder.

    Args:
        root: the dataset folder (holding `cui_mapping.csv`, `{split}_concepts.csv` and `{split}/`).
        split: `train`, `valid`, `test` or any other prefix of a `{split}_concepts.csv` file.
        check_images: check that every listed image exists in `<root>/<split>/`.

    Returns:
        One `Sample` per row of `{split}_concepts.csv`, in file order: `labels` are its CUIs,
        `meta["manual"]` its manually validated CUIs (empty when there is no manual file), `meta["line"]` the row.

    Raises:
        InvalidInputError: with the file and line of every problem (see `read_concepts_csv`), or for images that
            are listed but absent.
    """
    root = Path(root)
    if not root.is_dir():
        raise InvalidInputError(root, "The dataset folder does not exist. Pass the folder holding cui_mapping.csv to --data.")
    concepts_file = concepts_path(root, split)
    if not concepts_file.is_file():
        available = sorted(p.name[: -len("_concepts.csv")] for p in root.glob("*_concepts.csv"))
        raise InvalidInputError(
            concepts_file,
            f"The split '{split}' has no concepts file. Splits found in {root}: {', '.join(available) or 'none'}; "
            "an ImageCLEF folder holds {split}_concepts.csv, cui_mapping.csv and a {split}/ image folder.",
        )
    mapping = read_cui_mapping(root / "cui_mapping.csv")
    rows = read_concepts_csv(concepts_file, mapping=mapping)
    manual = _read_manual(root, split, mapping, {row.id for row in rows})
    images, missing = find_images(root / split, [(row.line, row.id) for row in rows])
    if check_images and missing:
        raise problems_error(concepts_file, missing, f"Add the images to {root / split}, give ambiguous IDs with their suffix, or remove their rows.")
    return [
        Sample(
            id=row.id,
            path=images.get(row.id, root / split / f"{row.id}.jpg"),
            labels=list(row.cuis),
            meta={"manual": list(manual.get(row.id, ())), "line": row.line, "split": split},
        )
        for row in rows
    ]


def _read_manual(root: Path, split: str, mapping: dict[str, str], ids: set[str]) -> dict[str, tuple[str, ...]]:
    path = concepts_path(root, split, manual=True)
    if not path.is_file():
        return {}
    rows = read_concepts_csv(path, mapping=mapping)
    strangers = [(row.line, f"image ID '{row.id}' is not in {split}_concepts.csv") for row in rows if row.id not in ids]
    if strangers:
        raise problems_error(path, strangers, "The manual concepts must describe images of the same split.")
    return {row.id: row.cuis for row in rows}


def concepts_csv_text(rows: Iterable[tuple[str, Sequence[str]]]) -> str:
    """The `ID,CUIs` CSV of the ImageCLEF layout (and of a submission): one row per image, CUIs joined by `;`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["ID", "CUIs"])
    writer.writerows((image_id, ";".join(cuis)) for image_id, cuis in rows)
    return buffer.getvalue()


def find_concepts_file(path: str | Path) -> Path:
    """A concepts CSV, or the one in a split folder: `concepts.csv` inside it, `<split>_concepts.csv` beside it."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path / "concepts.csv", path.parent / f"{path.name}_concepts.csv"):
            if candidate.is_file():
                return candidate
        found = sorted(path.glob("*_concepts.csv"))
        if len(found) == 1:
            return found[0]
    raise InvalidInputError(
        path, "No ground-truth concepts file found here. Pass a concepts CSV (ID,CUIs), or a split folder holding "
        "concepts.csv, with --truth."
    )


def find_truth_files(truth: str | Path, *, manual: str | Path | None = None,
                     mapping: str | Path | None = None) -> tuple[Path, Path | None, Path | None]:
    """The files a submission is scored against: concepts, manual concepts and CUI mapping.

    Args:
        truth: a concepts CSV or a split folder (see `find_concepts_file`).
        manual: the manually validated concepts; None looks for `<truth stem>_manual.csv` beside the truth.
        mapping: the CUI -> name mapping; None looks for cui_mapping.csv beside the truth or one folder up.

    Returns:
        (truth file, manual file or None, mapping file or None).
    """
    truth_file = find_concepts_file(truth)
    manual_file: Path | None = Path(manual) if manual else truth_file.with_name(truth_file.stem + "_manual.csv")
    if manual is None and not manual_file.is_file():
        manual_file = None
    if mapping:
        return truth_file, manual_file, Path(mapping)
    beside = (truth_file.with_name("cui_mapping.csv"), truth_file.parent.parent / "cui_mapping.csv")
    return truth_file, manual_file, next((p for p in beside if p.is_file()), None)


def unique_ids(samples: Sequence[Sample], skipped: Skipped) -> list[Sample]:
    """The samples with each ID once (the first kept): the official evaluator rejects a run file that repeats an
    ID, so a repeat is left out and listed in `skipped` (with its CSV line, when it came from one)."""
    seen: dict[str, Sample] = {}
    for sample in samples:
        if sample.id in seen:
            skipped.add(sample.path, f"The ID {sample.id} is listed again; it is predicted once, as the official "
                        "evaluator accepts each ID only once.", line=sample.meta.get("line"))
        else:
            seen[sample.id] = sample
    return list(seen.values())


def truth_by_id(samples: Sequence[Sample], *, manual: bool = False) -> dict[str, list[str]] | None:
    """Ground truth as ID -> CUIs from samples read by `read_imageclef`; `manual` gives the manually validated
    concepts instead (None when no sample has any)."""
    if not manual:
        return {s.id: list(s.labels) for s in samples}
    found = {s.id: list(s.meta.get("manual", [])) for s in samples}
    return found if any(found.values()) else None
