"""Image-level mammography labels for classification: BI-RADS and density, whatever the dataset writes, and the
task mappings (5-class / 3-class BI-RADS, 4-class density) of the MAM-CLIP study.

Readers turn a dataset's own values into canonical ones ("0".."6" for BI-RADS, "A".."D" for ACR density) and keep
them in `Sample.meta["birads"]` / `meta["density"]`; `apply_task` then labels each sample for one task through a
mapping from the config (`configs/mamclip.yaml`, section `tasks`), leaving out the values the task excludes
(BI-RADS 3 in the study) and failing, with file and row, on values it does not know.

Also here: the plain CSV reader (`read_label_csv`: image, patient, birads and/or density columns) and VinDr-Mammo
breast-level labels through `datasets.vindr.read_vindr`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from keras_medimg.datasets.records import Sample, Skipped
from keras_medimg.errors import ConfigError, InvalidInputError, problems_error

BIRADS_VALUES = ("0", "1", "2", "3", "4", "5", "6")
DENSITY_VALUES = ("A", "B", "C", "D")
#: EMBED's `asses` letters (ACR BI-RADS assessment codes) -> BI-RADS category.
EMBED_ASSESSMENT = {"A": "0", "N": "1", "B": "2", "P": "3", "S": "4", "M": "5", "K": "6"}

MISSING = ("", "nan", "none", "null", "n/a", "na", "-", "unknown")  # cells that say "no value", any case


def parse_birads(value: Any) -> str | None:
    """'BI-RADS 4', 'BI RADS 4', 'BIRADS-4a', 'birads_4', '4', 4, 4.0 -> '4'; empty or `MISSING` -> None;
    anything else raises ValueError."""
    text = str(value).strip()
    if text.lower() in MISSING:
        return None
    match = re.fullmatch(r"(?:bi[\s_\-]?rads)?[\s_\-:]*([0-6])(?:\.0)?\s*[abc]?", text, flags=re.IGNORECASE)
    if match is None:
        raise ValueError(f"'{text}' is not a BI-RADS category (0-6, e.g. 'BI-RADS 4')")
    return match.group(1)


def parse_density(value: Any) -> str | None:
    """'A'..'D', 'DENSITY C', 'c', 1..4 (ACR a..d) -> 'A'..'D'; empty or `MISSING` -> None;
    anything else raises ValueError."""
    text = str(value).strip()
    if text.lower() in MISSING:
        return None
    match = re.fullmatch(r"(?:density|acr|composition)?[\s_\-:]*([a-d1-4])(?:\.0)?", text, flags=re.IGNORECASE)
    if match is None:
        raise ValueError(f"'{text}' is not an ACR breast density (A-D or 1-4)")
    letter = match.group(1).upper()
    return DENSITY_VALUES[int(letter) - 1] if letter.isdigit() else letter


@dataclass
class TaskConfig:
    """One classification task: which field it reads, how values map to classes, which values it leaves out."""

    field: str = "birads"  # birads | density
    classes: dict[str, str] = dataclasses.field(default_factory=dict)  # canonical value -> class name
    exclude: list[str] = dataclasses.field(default_factory=list)  # canonical values left out of the task

    def class_names(self) -> list[str]:
        """The classes in first-seen order of the mapping (the output index order)."""
        return list(dict.fromkeys(self.classes.values()))


def apply_task(samples: Sequence[Sample], task: TaskConfig, *, name: str = "task") -> tuple[list[Sample], dict[str, int]]:
    """Label samples for `task`; samples without the field's value or with an excluded value are left out.

    Returns:
        The labelled samples (copies) and counts of what was left out: {"missing": n, "excluded": n}.

    Raises:
        InvalidInputError: a value the task neither maps nor excludes (names the file and row of the first ones).
    """
    if task.field not in ("birads", "density"):
        raise ConfigError(f"tasks.{name}.field must be birads or density, not '{task.field}'.")
    if not task.classes:
        raise ConfigError(f"tasks.{name}.classes is empty; map the {task.field} values to class names.")
    kept, left_out, problems = [], {"missing": 0, "excluded": 0}, []
    source = None
    for sample in samples:
        value = sample.meta.get(task.field)
        if value is None:
            left_out["missing"] += 1
        elif value in task.exclude:
            left_out["excluded"] += 1
        elif value in task.classes:
            kept.append(replace(sample, label=task.classes[value]))
        else:
            where = Path(sample.meta.get("file", sample.path))
            source = source or where
            problems.append(InvalidInputError(where, f"{task.field} '{value}' (image {sample.id}) is not mapped by "
                                                     f"tasks.{name}", line=sample.meta.get("line")))
    if problems:
        raise problems_error(source, problems, f"Add the value to tasks.{name}.classes or tasks.{name}.exclude in "
                                               "the config (--set), or fix the label.")
    if samples and left_out["missing"] == len(samples):
        where = Path(samples[0].meta.get("file", samples[0].path))
        raise InvalidInputError(where, f"none of its {len(samples)} images has a {task.field} value, so task '{name}' "
                                       f"has nothing to learn. Give the labels a {task.field} column (for a CSV: "
                                       f"{', '.join(CSV_LABELS[task.field])}) or choose a task on the labels it has.")
    return kept, left_out


def canonical_labels(birads: Any, density: Any) -> dict[str, str | None]:
    """Both labels parsed (raises ValueError with what is wrong)."""
    return {"birads": parse_birads(birads), "density": parse_density(density)}


# === Plain CSV ===

CSV_IMAGE = ("image", "path", "file", "filename")
CSV_PATIENT = ("patient", "patient_id", "group", "study_id")
CSV_LABELS = {"birads": ("birads", "bi-rads", "bi_rads", "breast_birads"),
              "density": ("density", "breast_density", "breast_composition", "composition")}


def _column(fieldnames: Sequence[str], names: Sequence[str]) -> str | None:
    lowered = {n.strip().lower(): n for n in fieldnames if n}
    return next((lowered[n] for n in names if n in lowered), None)


def read_label_csv(path: str | Path, *, image_root: str | Path | None = None, skipped: Skipped | None = None,
                   strict: bool = False) -> list[Sample]:
    """A CSV with one row per image: `image` (path, relative to the CSV's folder or `image_root`), `patient`
    (optional, for patient-grouped folds), `birads` and/or `density`, `view`, `laterality` (optional).

    Rows with a missing image or a value that cannot be parsed are skipped into `skipped` (file and line), or
    raised together when `strict` or without `skipped`.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(path, "the label CSV does not exist. Pass a CSV with image and birads/density columns.")
    root = Path(image_root) if image_root is not None else path.parent
    samples, problems = [], []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        names = reader.fieldnames or []
        image_col, patient_col = _column(names, CSV_IMAGE), _column(names, CSV_PATIENT)
        birads_col, density_col = _column(names, CSV_LABELS["birads"]), _column(names, CSV_LABELS["density"])
        view_col, side_col = _column(names, ("view", "view_position")), _column(names, ("laterality", "side"))
        if image_col is None or (birads_col is None and density_col is None):
            raise InvalidInputError(path, f"needs an image column and a birads or density column; its columns are "
                                          f"{', '.join(names) or 'none'}.")
        for row in reader:
            line = reader.line_num
            try:
                labels = canonical_labels(row.get(birads_col, "") if birads_col else "",
                                          row.get(density_col, "") if density_col else "")
                image = root / (row.get(image_col) or "").strip()
                if not (row.get(image_col) or "").strip() or not image.is_file():
                    raise ValueError(f"the image '{image}' does not exist")
            except ValueError as exc:
                problems.append(InvalidInputError(path, str(exc), line=line))
                continue
            patient = (row.get(patient_col) or "").strip() if patient_col else ""
            samples.append(Sample(
                id=image.relative_to(root).with_suffix("").as_posix() if image.is_relative_to(root) else image.stem,
                path=image, group=patient or None,
                view=(row.get(view_col) or "").strip().upper() or None if view_col else None,
                laterality=(row.get(side_col) or "").strip().upper()[:1] or None if side_col else None,
                meta={**labels, "file": str(path), "line": line}))
    return _finish(path, samples, problems, skipped, strict, "label CSV")


def _finish(path: Path, samples: list[Sample], problems: list[InvalidInputError], skipped: Skipped | None,
            strict: bool, what: str) -> list[Sample]:
    if problems and (strict or skipped is None):
        raise problems_error(path, problems, f"Fix or remove these {what} rows, or leave --strict off to skip them "
                                             "(they are listed in skipped.csv).")
    for problem in problems:
        skipped.add_error(problem)
    if not samples:
        raise InvalidInputError(path, f"no usable {what} rows were found ({len(problems)} bad).")
    return samples


# === VinDr-Mammo ===


def read_vindr_labels(root: str | Path, *, skipped: Skipped | None = None, strict: bool = False) -> list[Sample]:
    """VinDr-Mammo breast-level BI-RADS and density per image, through `datasets.vindr.read_vindr` (every
    BI-RADS kept; its benign/malignant label is replaced by the canonical values in `meta`)."""
    from keras_medimg.datasets.vindr import BREAST_FILE, read_vindr

    samples, problems = [], []
    for sample in read_vindr(root, skipped=skipped, strict=strict, keep_excluded=True):
        try:
            labels = canonical_labels(sample.meta.get("birads"), sample.meta.get("density", ""))
        except ValueError as exc:
            problems.append(InvalidInputError(Path(root) / BREAST_FILE, str(exc), line=sample.meta.get("line")))
            continue
        samples.append(replace(sample, label=None, meta={**sample.meta, **labels,
                                                        "file": str(Path(root) / BREAST_FILE)}))
    return _finish(Path(root) / BREAST_FILE, samples, problems, skipped, strict, "VinDr breast-level")


def read_classification(dataset: str, root: str | Path, *, skipped: Skipped | None = None,
                        strict: bool = False) -> list[Sample]:
    """Read a classification dataset by name: teknofest | vindr | embed | csv (a folder holding labels.csv, or
    the CSV file itself)."""
    root = Path(root)
    if dataset == "teknofest":
        from keras_medimg.datasets.teknofest import read_teknofest

        return read_teknofest(root, skipped=skipped, strict=strict)
    if dataset == "embed":
        from keras_medimg.datasets.embed import read_embed

        return read_embed(root, skipped=skipped, strict=strict)
    if dataset == "vindr":
        return read_vindr_labels(root, skipped=skipped, strict=strict)
    if dataset == "csv":
        return read_label_csv(root if root.is_file() else root / "labels.csv", skipped=skipped, strict=strict)
    raise ConfigError(f"Unknown dataset '{dataset}'. Choose teknofest, vindr, embed or csv.")


def label_counts(samples: Sequence[Sample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in samples:
        counts[str(s.label)] = counts.get(str(s.label), 0) + 1
    return dict(sorted(counts.items()))


def task_from_mapping(data: Mapping[str, Any]) -> TaskConfig:
    return TaskConfig(**data)
